"""Config validation (field-naming errors), overrides, advantages, data loading and batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teachloop.core import InvalidInput
from teachloop.train import (
    assign,
    batch_for_step,
    group_advantages,
    load_config,
    load_sft,
    parse_overrides,
    split_holdout,
    validate_config,
)


def test_toml_and_flag_overrides(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text('algorithm = "grpo"\nsteps = 5\n[rl]\nenv = "arithmetic"\nenv_args = { level = 2 }\n')
    over = parse_overrides(["--rl.group_size", "4", "--optim.lr=3e-4", "--steps", "7", "--rl.env_args", "{ level = 1 }"])
    cfg = load_config(f, over)
    assert (cfg.steps, cfg.rl.group_size, cfg.optim.lr, cfg.rl.env_args) == (7, 4, 3e-4, {"level": 1})


@pytest.mark.parametrize(
    ("raw", "field", "says"),
    [
        ({"algorithm": "ppo"}, "algorithm", "'grpo', 'sft' or 'dpo'"),
        ({"algorithm": "grpo"}, "config", "needs an [rl] section"),
        ({"algorithm": "sft"}, "config", "needs a [data] section"),
        ({"algorithm": "grpo", "rl": {"env": "x", "loss": "sgd"}}, "rl.loss", "'ppo', 'importance_sampling' or 'cispo'"),
        ({"algorithm": "grpo", "rl": {"env": "x", "group_size": 1}}, "rl.group_size", "greater than or equal to 2"),
        ({"algorithm": "grpo", "rl": {"env": "x", "groupsize": 8}}, "rl.groupsize", "allowed here:"),
        ({"algorithm": "grpo", "rl": {"env": "x"}, "optim": {"lr": -1}}, "optim.lr", "greater than 0"),
    ],
)
def test_invalid_config_names_the_field_and_the_allowed_values(raw: dict, field: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_config(raw)
    assert err.value.param == field and says in str(err.value), str(err.value)


def test_bad_overrides_and_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="needs a value"):
        parse_overrides(["--steps"])
    with pytest.raises(InvalidInput, match="unexpected argument"):
        parse_overrides(["steps=3"])
    with pytest.raises(InvalidInput, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("steps = [")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_group_advantages_and_zero_variance_groups() -> None:
    adv = group_advantages([1.0, 0.0, 0.0, 1.0])
    assert adv == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-4)
    assert group_advantages([1.0, 0.0], "no_std") == [0.5, -0.5]
    out, dropped = assign([[1, 1, 1], [0, 1, 0]], "grpo", drop_zero_variance=True)
    assert out[0] is None and dropped == 1 and sum(out[1]) == pytest.approx(0.0)
    out, dropped = assign([[1, 1, 1]], "grpo", drop_zero_variance=False)
    assert out == [[0.0, 0.0, 0.0]] and dropped == 0


def test_batches_are_a_pure_function_of_the_step() -> None:
    items = list(range(10))
    b = [batch_for_step(items, 4, s, seed=3) for s in range(5)]
    assert b == [batch_for_step(items, 4, s, seed=3) for s in range(5)]
    assert sorted(b[0] + b[1] + b[2][:2]) == items  # epoch 0 covers every row once
    train, hold = split_holdout(items, 0.2, seed=1)
    assert len(hold) == 2 and sorted(train + hold) == items


def test_sft_rows_that_do_not_fit_are_skipped_and_counted(tmp_path: Path, renderer) -> None:  # type: ignore[no-untyped-def]
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [json.dumps(ok)] * 18 + ["{not json", json.dumps({"messages": [{"role": "user", "content": "q"}]})]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(rows) + "\n")
    data = load_sft(f, renderer, max_seq_len=512, max_skipped_frac=0.2)
    assert (data.total, len(data.items), dict(data.skipped)) == (20, 18, {"invalid_json": 1, "template": 1})
    with pytest.raises(InvalidInput, match="2 of 20 rows"):
        load_sft(f, renderer, max_seq_len=512, max_skipped_frac=0.05)


@pytest.mark.parametrize("name", ["grpo-arithmetic.toml", "sft-chat.toml", "dpo-prefs.toml"])
def test_example_configs_validate(name: str) -> None:
    root = Path(__file__).resolve().parents[3]
    cfg = load_config(root / "examples" / "train" / name)
    if cfg.data is not None:
        assert (root / cfg.data.train).is_file()

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


def test_options_go_before_or_after_the_config() -> None:
    from teachloop.train.config import parse_command_line

    pos, over = parse_command_line(["--steps", "3", "cfg.toml", "--optim.lr=1e-4", "--rl.env_args.level", "2"])
    assert pos == ["cfg.toml"] and over == {"steps": 3, "optim": {"lr": 1e-4}, "rl": {"env_args": {"level": 2}}}
    assert parse_command_line(["cfg.toml", "--steps", "3"]) == (["cfg.toml"], {"steps": 3})
    assert parse_command_line(["--optim.lr", "-1", "a.toml"]) == (["a.toml"], {"optim": {"lr": -1}})
    with pytest.raises(InvalidInput, match=r"--rl\.overlap needs a value"):  # never swallows the next option
        parse_command_line(["--rl.overlap", "--steps", "3"])
    with pytest.raises(InvalidInput, match="bad option"):
        parse_command_line(["--rl..loss", "ppo"])


#: One non-default, valid value for every config field, as a command-line flag would carry it.
_EVERY_FIELD = {
    "name": "n2", "algorithm": "grpo", "model": "some-model", "seed": "7", "steps": "3", "checkpoint_every": "2",
    "low_memory": "true",
    "lora.rank": "4", "lora.alpha": "8.0", "lora.dropout": "0.1", "lora.attn": "false", "lora.mlp": "false",
    "lora.unembed": "true",
    "optim.lr": "0.002", "optim.beta1": "0.8", "optim.beta2": "0.9", "optim.eps": "1e-06",
    "optim.weight_decay": "0.01", "optim.grad_clip": "0.5", "optim.schedule": "cosine", "optim.warmup_steps": "2",
    "rl.env": "digits", "rl.env_args": "{ level = 3 }", "rl.task_seed": "5", "rl.prompts_per_step": "2",
    "rl.group_size": "3", "rl.max_tokens": "9", "rl.temperature": "0.7", "rl.top_p": "0.9",
    "rl.loss": "cispo", "rl.clip_low": "0.5", "rl.clip_high": "4.0", "rl.kl_coef": "0.05", "rl.advantage": "no_std",
    "rl.drop_zero_variance": "false", "rl.extra_draws": "2", "rl.loss_agg": "seq_mean", "rl.overlap": "true", "rl.episode_timeout_s": "9.5", "rl.merge_turns": "false",
    "rl.prefix_cache": "false",
    "data.train": "t.jsonl", "data.eval": "e.jsonl", "data.holdout_frac": "0.1", "data.batch_size": "2",
    "data.max_seq_len": "99", "data.max_skipped_frac": "0.5", "data.train_on": "last_assistant",
    "data.dpo_beta": "0.3",
    "eval.env": "arithmetic", "eval.env_args": "{ level = 1 }", "eval.tasks": "5", "eval.seed": "11",
    "eval.max_tokens": "7", "eval.every": "2",
    "eval.metric": "reward_ci_low", "eval.keep_best": "false", "eval.patience": "3", "eval.min_delta": "0.01",
    "alarm.enabled": "false", "alarm.window": "4", "alarm.alpha": "0.01", "alarm.min_drop": "0.05",
    "alarm.on_alarm": "continue",
    "report.to": '["tensorboard"]', "report.dir": "reports", "report.project": "p2",
}


def test_every_config_field_is_settable_by_flag_and_listed_in_help() -> None:
    from teachloop.train.config import _parse_value, field_reference, parse_command_line

    flags = {flag.removeprefix("--") for flag, _, _ in field_reference()}
    assert flags == set(_EVERY_FIELD), "a config field was added or removed: list it in _EVERY_FIELD"
    assert all(desc for _, _, desc in field_reference()), "every field needs a description (shown by --help)"
    argv = [a for k, v in _EVERY_FIELD.items() for a in (f"--{k}", v)]
    pos, over = parse_command_line(argv)
    cfg = validate_config(over).to_dict()
    assert pos == []
    for key, raw in _EVERY_FIELD.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == _parse_value(raw) and node != _default(key), key


def _default(key: str) -> object:
    from teachloop.train.config import TrainConfig

    section, _, name = key.rpartition(".")
    model = TrainConfig.model_fields[section].annotation if section else TrainConfig
    model = next((a for a in getattr(model, "__args__", (model,)) if a is not type(None)), model)
    info = model.model_fields[name]  # type: ignore[union-attr]
    return None if info.is_required() else info.get_default(call_default_factory=True)


def test_dpo_rows_with_empty_replies_are_skipped_and_counted(tmp_path: Path, renderer) -> None:  # type: ignore[no-untyped-def]
    from teachloop.train import load_dpo

    ok = {"prompt": "Pick one", "chosen": "blue", "rejected": "red"}
    bad = [{"prompt": "p", "chosen": [], "rejected": "r"}, {"prompt": "p", "chosen": "c", "rejected": ""},
           {"prompt": [], "chosen": "c", "rejected": "r"},
           {"prompt": "p", "chosen": [{"role": "assistant", "content": ""}], "rejected": "r"}]
    f = tmp_path / "prefs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [ok] * 16 + bad))
    data = load_dpo(f, renderer, max_seq_len=512, max_skipped_frac=0.25)
    assert (data.total, len(data.items)) == (20, 16)
    assert dict(data.skipped) == {"empty_chosen": 2, "empty_rejected": 1, "empty_prompt": 1}
    with pytest.raises(InvalidInput, match=r"4 of 20 rows .*empty_chosen: 2") as err:
        load_dpo(f, renderer, max_seq_len=512, max_skipped_frac=0.1)
    assert err.value.param == "data.max_skipped_frac"
    with pytest.raises(InvalidInput, match=r"data\.eval: dataset .* does not exist"):
        load_dpo(tmp_path / "nope.jsonl", renderer, max_seq_len=512, max_skipped_frac=0.1, field="data.eval")


def test_sft_rows_with_malformed_tools_are_skipped(tmp_path: Path, renderer) -> None:  # type: ignore[no-untyped-def]
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [ok] * 3 + [{**ok, "tools": 5}, {"messages": []}]))
    data = load_sft(f, renderer, max_seq_len=512, max_skipped_frac=0.5)
    assert (len(data.items), dict(data.skipped)) == (3, {"template": 2})


def test_policy_metrics_report_the_two_kls_apart() -> None:
    from teachloop.core.training import ForwardBackwardResult, OptimStepResult
    from teachloop.train.metrics import POLICY_METRICS, policy_metrics

    fb = ForwardBackwardResult(loss=0.5, logprobs=[], metrics={"kl_sampler:mean": 0.01, "kl:mean": 0.2,
                                                                "entropy:mean": 1.5, "clip_frac:mean": 0.1,
                                                                "ratio:mean": 1.02})
    opt = OptimStepResult(step=1, grad_norm=0.3, metrics={"lr": 1e-3})
    with_kl = policy_metrics(fb, opt, kl_coef=0.1)
    assert (with_kl["kl_sampler"], with_kl["kl_ref"]) == (0.01, 0.2)
    assert "kl" not in with_kl and set(with_kl) == set(POLICY_METRICS)
    assert "kl_ref" not in policy_metrics(fb, opt, kl_coef=0.0)


def documented_metrics() -> set[str]:
    """The backticked names of the Metrics section of docs/training.md."""
    import re

    text = (Path(__file__).resolve().parents[3] / "docs" / "training.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", section))


def test_the_policy_metrics_are_documented() -> None:
    from teachloop.train.metrics import POLICY_METRICS

    assert set(POLICY_METRICS) <= documented_metrics()

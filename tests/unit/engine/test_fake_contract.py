"""FakeEngine: stop strings, the cap on ``n``, and all-or-nothing adapter / checkpoint loads.

Also the ``SamplingParams`` validation every engine relies on (empty stop strings,
mixed or negative stop ids).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from teachloop.core import AdamParams, Datum, InvalidInput, LoraSpec, SamplingParams
from teachloop.core.errors import ModelError, NotFound
from teachloop.core.sampling import MAX_SAMPLES_PER_PROMPT, check_n
from teachloop.engine.fake import LETTERS, FakeEngine, letters

BATCH = [Datum.from_sequence([1, 2, 3, 4], [0, 1, 1, 1])]


def _trained(name: str = "a", steps: int = 2) -> FakeEngine:
    eng = FakeEngine(vocab_size=16, seed=0)
    eng.create_adapter(name, LoraSpec(rank=2, seed=1))
    for _ in range(steps):
        eng.forward_backward(BATCH, "cross_entropy", adapter=name)
        eng.optim_step(name, AdamParams(learning_rate=0.05))
    return eng


# ------------------------------------------------------------------------------------------ stop strings


def test_stop_strings_end_the_sample_at_the_token_that_completes_them() -> None:
    eng = FakeEngine(vocab_size=16, seed=0)
    free = eng.sample([[1]], 6, SamplingParams(max_tokens=40, temperature=1.0, seed=7, stop=[]))[0]
    text = letters(free[0].tokens)
    # a two-character string that really occurs in the free-running sample, not at its start
    needle = text[5:7]
    first = text.index(needle)
    out = eng.sample([[1]], 6, SamplingParams(max_tokens=40, temperature=1.0, seed=7, stop=needle))[0]
    assert out[0].stop_reason == "stop"
    assert out[0].tokens == free[0].tokens[: first + 2]  # the same draws, cut at the completing token
    for seq in out:
        assert seq.stop_reason == "stop" or needle not in letters(seq.tokens)
        if seq.stop_reason == "stop":
            assert letters(seq.tokens).endswith(needle) and needle not in letters(seq.tokens[:-1])


def test_stop_strings_replace_eos_and_use_the_given_decoder() -> None:
    eos = 3
    seen: list[list[int]] = []

    def decode(tokens: list[int]) -> str:
        seen.append(list(tokens))
        return " ".join(f"w{t}" for t in tokens)

    eng = FakeEngine(vocab_size=8, seed=1, eos_token_id=eos, decode=decode)
    out = eng.sample([[1]], 8, SamplingParams(max_tokens=30, seed=3, stop=["w5"]))[0]
    assert seen, "the decoder was not used"
    for seq in out:
        if seq.stop_reason == "stop":
            assert seq.tokens[-1] == 5 and 5 not in seq.tokens[:-1]
        else:
            assert len(seq.tokens) == 30 and 5 not in seq.tokens
    assert any(eos in s.tokens[:-1] for s in out)  # EOS no longer stops once stop strings are given


def test_the_default_text_is_one_letter_per_token() -> None:
    assert letters([0, 25, 26, 61, 62]) == "azA9a"
    assert len(LETTERS) == 62


# ------------------------------------------------------------------------------------- SamplingParams / n


@pytest.mark.parametrize("stop", ["", ("",), ["ok", ""], (1, "a"), (True,), (-1,)])
def test_sampling_params_refuse_bad_stops(stop: object) -> None:
    with pytest.raises(ValidationError, match="stop"):
        SamplingParams(stop=stop)


def test_sampling_params_keep_good_stops() -> None:
    assert SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(stop=(4, 5)).stop == (4, 5)
    assert SamplingParams(stop=()).stop == ()
    assert SamplingParams().stop is None


@pytest.mark.parametrize("n", [0, -1, MAX_SAMPLES_PER_PROMPT + 1, True, 2.0])
def test_n_is_capped(n: object) -> None:
    with pytest.raises(InvalidInput) as err:
        check_n(n)  # type: ignore[arg-type]
    assert err.value.param == "n"
    with pytest.raises(InvalidInput, match="n must"):
        FakeEngine(vocab_size=8).sample([[1]], n, SamplingParams(max_tokens=1))  # type: ignore[arg-type]


def test_n_up_to_the_cap_is_accepted() -> None:
    assert check_n(1) == 1 and check_n(MAX_SAMPLES_PER_PROMPT) == MAX_SAMPLES_PER_PROMPT
    out = FakeEngine(vocab_size=8).sample([[1]], MAX_SAMPLES_PER_PROMPT, SamplingParams(max_tokens=1, seed=0))
    assert len(out[0]) == MAX_SAMPLES_PER_PROMPT


# --------------------------------------------------------------------------------- all-or-nothing loads


def _snapshot(eng: FakeEngine, name: str) -> tuple[list[list[float]], int]:
    [info] = [a for a in eng.list_adapters() if a.name == name]
    return eng.logprobs([[1, 2, 3, 4, 5]], name), info.step


def _break_missing_weights(folder: Path) -> None:
    (folder / "fake_adapter.pt").unlink()


def _break_json(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{not json")


def _break_rank(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config["spec"]["rank"] = 3  # the tensors are rank 2
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _break_shape(folder: Path) -> None:
    tensors = torch.load(folder / "fake_adapter.pt", weights_only=True)
    tensors["B"] = torch.zeros(2, 5)
    torch.save(tensors, folder / "fake_adapter.pt")


def _break_pickle(folder: Path) -> None:
    (folder / "fake_adapter.pt").write_bytes(b"not a torch file")


@pytest.mark.parametrize(
    "breaker", [_break_missing_weights, _break_json, _break_rank, _break_shape, _break_pickle]
)
def test_a_bad_adapter_folder_leaves_the_adapter_unchanged(tmp_path: Path, breaker: object) -> None:
    eng = _trained()
    eng.save_adapter("a", tmp_path / "ad")
    before = _snapshot(eng, "a")
    other = _trained("b", steps=5)
    other.save_adapter("b", tmp_path / "bad")
    breaker(tmp_path / "bad")  # type: ignore[operator]
    with pytest.raises((ModelError, NotFound)) as err:
        eng.load_adapter("a", tmp_path / "bad")
    assert "\n" not in str(err.value) and str(tmp_path / "bad") in str(err.value)
    assert _snapshot(eng, "a") == before
    with pytest.raises((ModelError, NotFound)):
        eng.load_adapter("new", tmp_path / "bad")
    assert not eng.has_adapter("new")


@pytest.mark.parametrize("damage", ["missing", "corrupt", "no-step"])
def test_a_bad_checkpoint_leaves_the_adapter_unchanged(tmp_path: Path, damage: str) -> None:
    eng = _trained()
    before = _snapshot(eng, "a")
    _trained("a", steps=4).save_checkpoint("a", tmp_path / "ck")
    if damage == "missing":
        (tmp_path / "ck" / "optimizer.pt").unlink()
    elif damage == "corrupt":
        (tmp_path / "ck" / "optimizer.pt").write_bytes(b"\x00garbage")
    else:
        (tmp_path / "ck" / "checkpoint.json").write_text("{}")
    with pytest.raises((ModelError, NotFound)) as err:
        eng.load_checkpoint("a", tmp_path / "ck")
    assert "\n" not in str(err.value)
    assert _snapshot(eng, "a") == before
    eng.forward_backward(BATCH, "cross_entropy", adapter="a")  # still trains from where it was
    assert eng.optim_step("a", AdamParams(learning_rate=0.05)).step == before[1] + 1

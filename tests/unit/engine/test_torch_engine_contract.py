"""TorchEngine contract tests beyond test_torch_engine.py, on the tiny models of tests/_tiny.py.

- gradients accumulate: two ``forward_backward`` calls equal one call on the combined batch;
- grad clipping: ``grad_norm`` is the pre-clip norm and the update is the clipped one;
- the ``n`` samples of a prompt share one prefill (a spy on ``LlamaForward.forward_packed``);
- a checkpoint resumed in a *fresh* engine gives the same next steps as an uninterrupted run;
- a bad adapter folder or checkpoint raises one line and leaves the adapter of that name as it was;
- Qwen2 (and Mistral) logprobs match transformers' own forward.

Tests taking ``device`` run on ``cpu`` and, where a CUDA GPU is present, on ``cuda``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from teachloop.core import AdamParams, Datum, LoraSpec, LossConfig, SamplingParams
from teachloop.core.errors import InvalidInput, ModelError, NotFound
from teachloop.engine import LOGPROB_TOLERANCE
from teachloop.engine.torch_engine import TorchEngine
from tests._tiny import tiny_llama, tiny_mistral, tiny_qwen2

DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")),
]

#: engine logprobs vs transformers' forward, as in test_torch_engine.py's padded-batch comparison
HF_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), num_layers=2, hidden_size=64)


@pytest.fixture(scope="module")
def cpu_engine(model_dir: Path) -> TorchEngine:
    """One engine for the tests that only need cpu and clean up their adapters."""
    return TorchEngine(model_dir, device="cpu")


@pytest.fixture
def engine(cpu_engine: TorchEngine) -> Any:
    yield cpu_engine
    for info in cpu_engine.list_adapters():
        cpu_engine.delete_adapter(info.name)


def _prompt(engine: TorchEngine, text: str = "What is 12 + 35?") -> list[int]:
    return list(engine.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"))


def _perturb(engine: TorchEngine, name: str, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in engine._adapters[name].params:
            p.add_((torch.randn(p.shape, generator=gen) * 0.05).to(p.device))


def _grads(engine: TorchEngine, name: str) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().cpu() for p in engine._adapters[name].params]
    )


def _weights(engine: TorchEngine, name: str) -> list[torch.Tensor]:
    return [p.detach().cpu().clone() for p in engine._adapters[name].params]


def _rl_batch(engine: TorchEngine, seed: int = 3) -> list[Datum]:
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for text in ("What is 12 + 35?", "Hello there"):
        p = _prompt(engine, text)
        for k in range(2):
            comp = torch.randint(3, engine.vocab_size, (5 + k,), generator=gen).tolist()
            old = [0.0] * len(p) + (torch.randn(len(comp), generator=gen) * 0.3 - 2.0).tolist()
            adv = [0.0] * len(p) + [1.0 if k else -0.5] * len(comp)
            batch.append(Datum.from_sequence(p + comp, [0] * len(p) + [1] * len(comp), advantages=adv, sampler_logprobs=old))
    return batch


# ------------------------------------------------------------------------------ gradient accumulation


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("loss", "cfg"), [("cross_entropy", LossConfig()), ("ppo", LossConfig(kl_coef=0.1))])
def test_gradients_accumulate_like_one_call_on_the_combined_batch(
    model_dir: Path, device: str, loss: str, cfg: LossConfig
) -> None:
    engine = TorchEngine(model_dir, device=device)
    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    _perturb(engine, "a")
    engine.copy_adapter("a", "b")  # same weights, fresh optimizer
    batch = _rl_batch(engine)
    first = engine.forward_backward(batch[:2], loss, cfg, adapter="a")  # type: ignore[arg-type]
    second = engine.forward_backward(batch[2:], loss, cfg, adapter="a")  # type: ignore[arg-type]
    whole = engine.forward_backward(batch, loss, cfg, adapter="b")  # type: ignore[arg-type]
    assert first.loss + second.loss == pytest.approx(whole.loss, rel=1e-5, abs=1e-5)
    acc, one = _grads(engine, "a"), _grads(engine, "b")
    assert float(one.norm()) > 0
    assert float((acc - one).norm() / one.norm()) < 1e-5
    step_a = engine.optim_step("a", AdamParams(learning_rate=1e-2))
    step_b = engine.optim_step("b", AdamParams(learning_rate=1e-2))
    assert step_a.metrics["accumulated_calls"] == 2 and step_b.metrics["accumulated_calls"] == 1
    assert step_a.grad_norm == pytest.approx(step_b.grad_norm, rel=1e-5)
    seq = [*_prompt(engine), 40, 41, 42]
    assert engine.logprobs([seq], "a")[0] == pytest.approx(engine.logprobs([seq], "b")[0], abs=1e-5)
    assert all(p.grad is None for p in engine._adapters["a"].params)  # the step consumed the gradient


# ------------------------------------------------------------------------------------- grad clipping


def _adamw_reference(before: list[torch.Tensor], grads: list[torch.Tensor], params: AdamParams, coef: float) -> list[torch.Tensor]:
    """One torch AdamW step from ``before`` with gradients ``grads * coef``."""
    ref = [torch.nn.Parameter(w.clone()) for w in before]
    for p, g in zip(ref, grads, strict=True):
        p.grad = g.clone() * coef
    opt = torch.optim.AdamW(
        ref, lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps,
        weight_decay=params.weight_decay, foreach=False,
    )
    opt.step()
    return [p.detach() for p in ref]


def test_grad_clipping_reports_the_pre_clip_norm_and_bounds_the_update(engine: TorchEngine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    _perturb(engine, "a")
    engine.forward_backward(_rl_batch(engine), "cross_entropy", adapter="a")
    grads = [p.grad.detach().clone() for p in engine._adapters["a"].params]  # type: ignore[union-attr]
    pre = float(torch.cat([g.flatten() for g in grads]).norm())
    before = _weights(engine, "a")
    max_norm = pre / 100
    # eps far above |g| makes AdamW's first step ~ lr * g / eps: its size follows the gradient's
    params = AdamParams(learning_rate=0.1, eps=1.0, weight_decay=0.0, grad_clip_norm=max_norm)
    result = engine.optim_step("a", params)
    assert result.grad_norm == pytest.approx(pre, rel=1e-5)  # reported before clipping
    assert result.metrics["grad_norm"] == pytest.approx(pre, rel=1e-5)
    after = _weights(engine, "a")
    clipped = _adamw_reference(before, grads, params, min(1.0, max_norm / (pre + 1e-6)))
    unclipped = _adamw_reference(before, grads, params, 1.0)
    for got, want in zip(after, clipped, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    step = torch.cat([(a - b).flatten() for a, b in zip(after, before, strict=True)]).norm()
    bound = params.learning_rate * max_norm / params.eps
    assert float(step) <= bound * (1 + 1e-4)
    free = torch.cat([(a - b).flatten() for a, b in zip(unclipped, before, strict=True)]).norm()
    assert float(free) > 10 * bound  # without clipping the step would have been far larger


def test_no_clipping_when_grad_clip_norm_is_zero(engine: TorchEngine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    _perturb(engine, "a")
    engine.forward_backward(_rl_batch(engine), "cross_entropy", adapter="a")
    grads = [p.grad.detach().clone() for p in engine._adapters["a"].params]  # type: ignore[union-attr]
    before = _weights(engine, "a")
    params = AdamParams(learning_rate=0.1, eps=1.0, weight_decay=0.01, grad_clip_norm=0.0)
    engine.optim_step("a", params)
    for got, want in zip(_weights(engine, "a"), _adamw_reference(before, grads, params, 1.0), strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------- shared prefill


def test_the_n_samples_of_a_prompt_share_one_prefill(engine: TorchEngine) -> None:
    fw = engine.fw
    prefilled: list[int] = []
    real = fw.forward_packed

    def spy(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        prefilled.append(int(tokens.numel()))
        return real(tokens, *args, **kwargs)

    prompts = [_prompt(engine), _prompt(engine, "Hello there, how are you today?")]
    fw.forward_packed = spy  # type: ignore[method-assign]
    try:
        out = engine.sample(prompts, 6, SamplingParams(max_tokens=4, temperature=1.0, seed=3, stop=[]))
    finally:
        del fw.forward_packed  # back to the class's method
    assert prefilled == [len(prompts[0]) + len(prompts[1])]  # one packed pass over each prompt once, not 6 times
    assert [len(g) for g in out] == [6, 6]
    assert all(len(s.tokens) == 4 for g in out for s in g)
    assert len({tuple(s.tokens) for s in out[0]}) > 1  # six real samples, not one copied


# ------------------------------------------------------------------------------ checkpoint resume


def _train(engine: TorchEngine, name: str, batch: list[Datum], steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        losses.append(engine.forward_backward(batch, "cross_entropy", adapter=name).loss)
        engine.optim_step(name, AdamParams(learning_rate=1e-2, grad_clip_norm=1.0, weight_decay=0.01))
    return losses


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_resumed_in_a_fresh_engine_equals_the_uninterrupted_run(
    model_dir: Path, tmp_path: Path, device: str
) -> None:
    first = TorchEngine(model_dir, device=device)
    prompt = _prompt(first)
    batch = [Datum.from_sequence(prompt + [10, 11, 12, 13], [0] * len(prompt) + [1] * 4)]
    probe = [[*prompt, 10, 11, 12, 13]]
    first.create_adapter("run", LoraSpec(rank=4, seed=5))
    _train(first, "run", batch, 2)
    first.save_checkpoint("run", tmp_path / "ck")
    uninterrupted = _train(first, "run", batch, 3)
    final = first.logprobs(probe, "run")[0]
    del first

    fresh = TorchEngine(model_dir, device=device)
    info = fresh.load_checkpoint("run", tmp_path / "ck")
    assert info.step == 2
    resumed = _train(fresh, "run", batch, 3)
    assert resumed == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7)
    assert fresh.logprobs(probe, "run")[0] == pytest.approx(final, abs=1e-6)
    assert fresh.list_adapters()[0].step == 5


# ----------------------------------------------------------------------- all-or-nothing loading


def _trained(engine: TorchEngine, name: str, *, rank: int = 4, seed: int = 0) -> None:
    engine.create_adapter(name, LoraSpec(rank=rank, seed=seed))
    _perturb(engine, name, seed=seed + 1)
    _train(engine, name, _rl_batch(engine)[:2], 1)


def _state(engine: TorchEngine, name: str) -> dict[str, Any]:
    """Everything that must not change: logprobs, step, weights, optimizer moments."""
    st = engine._adapters[name]
    opt = st.optimizer.state_dict()
    return {
        "logprobs": engine.logprobs([[*_prompt(engine), 40, 41, 42]], name)[0],
        "step": next(a.step for a in engine.list_adapters() if a.name == name),
        "weights": _weights(engine, name),
        "moments": [
            (k, s["exp_avg"].detach().cpu().clone(), s["exp_avg_sq"].detach().cpu().clone())
            for k, s in sorted(opt["state"].items())
        ],
        "names": [a.name for a in engine.list_adapters()],
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-7)
    assert (a["step"], a["names"]) == (b["step"], b["names"])
    assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"], strict=True))
    assert len(a["moments"]) == len(b["moments"]) > 0
    for (k1, m1, v1), (k2, m2, v2) in zip(a["moments"], b["moments"], strict=True):
        assert k1 == k2 and torch.equal(m1, m2) and torch.equal(v1, v2)


def _no_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()


def _garbage_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"\x00\x01 not safetensors")


def _corrupt_json(folder: Path) -> None:
    (folder / "adapter_config.json").write_text('{"r": 8, ')


def _no_json(folder: Path) -> None:
    (folder / "adapter_config.json").unlink()


def _wrong_rank(folder: Path) -> None:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["r"] = 4  # the weights are rank 8
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


def _shape_mismatch(folder: Path) -> None:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = next(k for k in sorted(tensors) if ".lora_B." in k)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 3, tensors[key].shape[1])
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def _foreign_layer(folder: Path) -> None:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = next(k for k in sorted(tensors) if ".lora_A." in k)
    tensors[key.replace("layers.0.", "layers.7.")] = tensors.pop(key)  # this base has 2 layers
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def _not_a_dict(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("[1, 2]")


BAD_ADAPTERS = [_no_weights, _garbage_weights, _corrupt_json, _no_json, _wrong_rank, _shape_mismatch,
                _foreign_layer, _not_a_dict]


def _one_line(err: BaseException, folder: Path) -> None:
    text = str(err)
    assert text and "\n" not in text, text
    assert str(folder) in text or folder.name in text, text


@pytest.mark.parametrize("breaker", BAD_ADAPTERS, ids=lambda f: f.__name__.strip("_"))
def test_a_bad_adapter_folder_raises_one_line_and_changes_nothing(
    engine: TorchEngine, tmp_path: Path, breaker: Callable[[Path], None]
) -> None:
    _trained(engine, "a")
    _trained(engine, "donor", rank=8, seed=4)
    engine.save_adapter("donor", tmp_path / "bad")
    engine.delete_adapter("donor")
    breaker(tmp_path / "bad")
    before = _state(engine, "a")
    with pytest.raises((ModelError, NotFound)) as err:
        engine.load_adapter("a", tmp_path / "bad")
    _one_line(err.value, tmp_path / "bad")
    _assert_same(_state(engine, "a"), before)
    with pytest.raises((ModelError, NotFound)):
        engine.load_adapter("fresh", tmp_path / "bad")
    assert not engine.has_adapter("fresh") and "fresh" not in getattr(engine._peft, "peft_config", {})
    _assert_same(_state(engine, "a"), before)
    # the survivor still trains from where it was (optimizer state and step intact)
    _train(engine, "a", _rl_batch(engine)[:2], 1)
    assert next(a.step for a in engine.list_adapters() if a.name == "a") == before["step"] + 1


def _ck_no_optimizer(ck: Path, other: Path) -> None:
    (ck / "optimizer.pt").unlink()


def _ck_corrupt_optimizer(ck: Path, other: Path) -> None:
    (ck / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated zip")


def _ck_foreign_optimizer(ck: Path, other: Path) -> None:
    """A readable optimizer.pt of a rank-8 adapter in a rank-4 checkpoint (same number of parameters)."""
    (ck / "optimizer.pt").write_bytes((other / "optimizer.pt").read_bytes())


def _ck_no_record(ck: Path, other: Path) -> None:
    (ck / "checkpoint.json").unlink()


def _ck_corrupt_record(ck: Path, other: Path) -> None:
    (ck / "checkpoint.json").write_text('{"format": 1, "step": ')


def _ck_bad_adapter(ck: Path, other: Path) -> None:
    (ck / "adapter" / "adapter_model.safetensors").unlink()


BAD_CHECKPOINTS = [_ck_no_optimizer, _ck_corrupt_optimizer, _ck_foreign_optimizer, _ck_no_record, _ck_corrupt_record,
                   _ck_bad_adapter]


def _ck_id(f: object) -> str:
    return getattr(f, "__name__", str(f)).removeprefix("_ck_")


@pytest.mark.parametrize("breaker", BAD_CHECKPOINTS, ids=_ck_id)
def test_a_bad_checkpoint_raises_one_line_and_changes_nothing(
    engine: TorchEngine, tmp_path: Path, breaker: Callable[[Path, Path], None]
) -> None:
    _trained(engine, "a")
    _trained(engine, "donor", seed=4)  # same rank as "a": a checkpoint that would load
    engine.save_checkpoint("donor", tmp_path / "ck")
    _trained(engine, "wide", rank=8, seed=6)
    engine.save_checkpoint("wide", tmp_path / "wide")
    for name in ("donor", "wide"):
        engine.delete_adapter(name)
    breaker(tmp_path / "ck", tmp_path / "wide")
    before = _state(engine, "a")
    with pytest.raises((ModelError, NotFound)) as err:
        engine.load_checkpoint("a", tmp_path / "ck")
    _one_line(err.value, tmp_path / "ck")
    if breaker is _ck_foreign_optimizer:  # names the parameter that differs and both shapes (engine.optim_state)
        assert re.search(r"exp_avg of \S+\.lora_[AB]\.weight \(parameter \d+\) has shape \(\d+, \d+\), expected",
                         str(err.value)), str(err.value)
    _assert_same(_state(engine, "a"), before)
    with pytest.raises((ModelError, NotFound)):
        engine.load_checkpoint("fresh", tmp_path / "ck")
    assert not engine.has_adapter("fresh")
    _train(engine, "a", _rl_batch(engine)[:2], 1)
    assert next(a.step for a in engine.list_adapters() if a.name == "a") == before["step"] + 1


def test_a_good_checkpoint_still_replaces_the_adapter(engine: TorchEngine, tmp_path: Path) -> None:
    """The counterpart of the tests above: an intact checkpoint does replace weights, moments and step."""
    _trained(engine, "a")
    _trained(engine, "donor", seed=4)
    _train(engine, "donor", _rl_batch(engine)[:2], 2)
    engine.save_checkpoint("donor", tmp_path / "ck")
    expected = _state(engine, "donor")
    engine.load_checkpoint("a", tmp_path / "ck")
    got = _state(engine, "a")
    assert got["step"] == expected["step"] == 3
    assert got["logprobs"] == pytest.approx(expected["logprobs"], abs=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(got["weights"], expected["weights"], strict=True))


# ---------------------------------------------------------------------------------- architectures


def _hf_logprobs(hf: Any, seq: list[int]) -> list[float]:
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([seq[:-1]], device=hf.device)).logits[0].float()
    lsm = torch.log_softmax(logits, -1)
    return lsm[torch.arange(len(seq) - 1), torch.tensor(seq[1:], device=lsm.device)].tolist()


def _max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _architecture_agrees(path: Path, device: str) -> None:
    from transformers import AutoModelForCausalLM

    engine = TorchEngine(path, device=device)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
    seqs = [_prompt(engine) + [30, 31, 32, 33], _prompt(engine, "Hello there! " * 6)]
    ours = engine.logprobs(seqs)
    for seq, got in zip(seqs, ours, strict=True):
        assert _max_diff(got, _hf_logprobs(hf, seq)) < HF_TOLERANCE
    # an adapter: the engine's forward equals PEFT's own on the same weights
    engine.create_adapter("a", LoraSpec(rank=4, seed=0, train_unembed=True))
    _perturb(engine, "a")
    engine._peft.set_adapter("a")
    for seq, got in zip(seqs, engine.logprobs(seqs, "a"), strict=True):
        assert _max_diff(got, _hf_logprobs(engine._peft, seq)) < HF_TOLERANCE
    # sampling: logprobs agree with recomputation, greedy equals generate
    p = seqs[0][:-4]
    out = engine.sample([p], 3, SamplingParams(max_tokens=8, seed=2, stop=[]), adapter="a")[0]
    rescored = engine.logprobs([p + s.tokens for s in out], "a")
    for s, r in zip(out, rescored, strict=True):
        assert _max_diff(s.logprobs, r[len(p) - 1 :]) < LOGPROB_TOLERANCE
    greedy = engine.sample([p], 1, SamplingParams(max_tokens=8, temperature=0, stop=[]))[0][0]
    ref = hf.generate(torch.tensor([p], device=device), max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert greedy.tokens == ref[0, len(p) :].tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_qwen2_logprobs_match_transformers(tmp_path: Path, device: str) -> None:
    _architecture_agrees(tiny_qwen2(tmp_path), device)


def test_mistral_without_a_window_matches_transformers(tmp_path: Path) -> None:
    _architecture_agrees(tiny_mistral(tmp_path), "cpu")


def test_mistral_with_a_sliding_window_is_exact_within_it_and_refuses_longer(tmp_path: Path) -> None:
    """The engine's attention is full causal attention: exact for sequences within the window, so the
    context is capped at the window and a longer sequence is refused (one line) instead of scored wrongly."""
    from transformers import AutoModelForCausalLM

    path = tiny_mistral(tmp_path, sliding_window=8)
    engine = TorchEngine(path, device="cpu")
    assert engine.context_length == 8
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    seq = _prompt(engine, "Hello there! How are you today? I am fine, thank you.")
    assert _max_diff(engine.logprobs([seq[:8]])[0], _hf_logprobs(hf, seq[:8])) < HF_TOLERANCE
    with pytest.raises(InvalidInput, match="context") as err:
        engine.logprobs([seq])
    assert "\n" not in str(err.value)


def test_sampling_n_is_bounded(engine: TorchEngine) -> None:
    from teachloop.core.sampling import MAX_SAMPLES_PER_PROMPT

    with pytest.raises(InvalidInput, match=f"between 1 and {MAX_SAMPLES_PER_PROMPT}") as err:
        engine.sample([_prompt(engine)], MAX_SAMPLES_PER_PROMPT + 1, SamplingParams(max_tokens=1))
    assert err.value.param == "n"
    with pytest.raises(InvalidInput, match="between 1 and"):
        engine.sample([_prompt(engine)], 0, SamplingParams(max_tokens=1))

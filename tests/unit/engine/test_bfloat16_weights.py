"""bfloat16 frozen weights (``TorchEngine(dtype="bfloat16")``, ``engine/precision.py``, ``ops.CastLinear``).

- ``CastLinear`` is exactly autograd through "cast the input to the weight's dtype, multiply, cast back"
  (the forward and the input gradient, for any shape: hypothesis), and ``cast_linear`` without a
  gradient is its forward;
- a bfloat16 engine on a tiny random Llama holds one bfloat16 copy of each projection (the tied
  embedding shares the unembedding's), float32 norms, float32 LoRA factors; its logprobs and LoRA
  gradients agree with the float32 engine's within bfloat16 rounding (differential), its sampled
  logprobs with its own recomputation, seeded sampling repeats, SFT lowers the loss, and an adapter
  trained on it loads into a float32 engine;
- bad input is refused: an unknown dtype (engine and ``TEACHLOOP_DTYPE``), bfloat16 weights off the
  fast path (GPT-2), a prepacking mode over bfloat16 weights; ``auto`` resolves by the hardware.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.core import AdamParams, Datum, LoraSpec, SamplingParams
from teachloop.core.errors import ConfigurationError, InvalidInput, ModelError
from teachloop.core.settings import Settings
from teachloop.engine import LOGPROB_TOLERANCE
from teachloop.engine.llama import LlamaForward, model_problem
from teachloop.engine.ops import CastLinear, cast_linear
from teachloop.engine.precision import WEIGHT_DTYPES, lower_weights, native_bfloat16
from teachloop.engine.torch_engine import TorchEngine, resolve_dtype
from tests._tiny import tiny_llama
from tests.unit.engine.test_generic_path import write_family

#: float32 vs bfloat16 weights on the tiny model: logprobs differ by bfloat16's rounding of the weights
#: and of each GEMM's input (relative 2^-8), not by more
BF16_LOGPROB_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("bf16"), num_layers=2, hidden_size=64)


@pytest.fixture(scope="module")
def pair(model_dir: Path) -> tuple[TorchEngine, TorchEngine]:
    """The same model in float32 and in bfloat16, each with adapter ``a`` made from the same seed."""
    engines = (TorchEngine(model_dir, device="cpu"), TorchEngine(model_dir, device="cpu", dtype="bfloat16"))
    for engine in engines:
        engine.create_adapter("a", LoraSpec(rank=4, seed=0, train_unembed=True))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in engine._adapters["a"].params:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return engines


def _prompt(engine: TorchEngine, text: str = "What is 12 + 35?") -> list[int]:
    return list(engine.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"))


# ------------------------------------------------------------------------------------------- CastLinear


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), fan_in=st.integers(1, 48), fan_out=st.integers(1, 48), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_cast_linear_is_autograd_through_the_casts(rows: int, fan_in: int, fan_out: int, bias: bool,
                                                   seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(fan_out, fan_in, generator=gen).bfloat16()
    b = torch.randn(fan_out, generator=gen).bfloat16() if bias else None
    x = torch.randn(rows, fan_in, generator=gen, requires_grad=True)
    g = torch.randn(rows, fan_out, generator=gen)
    y = CastLinear.apply(x, w, b)
    assert y.dtype == torch.float32
    (dx,) = torch.autograd.grad(y, x, g)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = F.linear(ref_x.to(torch.bfloat16), w, b).float()
    (ref_dx,) = torch.autograd.grad(ref, ref_x, g)
    assert torch.equal(y, ref)
    assert torch.equal(dx, ref_dx)
    with torch.no_grad():
        assert torch.equal(cast_linear(x, w, b), ref)


# ------------------------------------------------------------------------------------------- the engine


def test_weights_are_one_bfloat16_copy_and_what_trains_is_float32(pair: tuple[TorchEngine, TorchEngine]) -> None:
    f32, bf16 = pair
    assert (f32.weights_dtype, bf16.weights_dtype) == ("float32", "bfloat16")
    fw = bf16.fw
    assert isinstance(fw, LlamaForward)
    assert fw.dtype == torch.float32 and fw.pack is False
    for proj in fw._projections():
        assert proj.weight.dtype == torch.bfloat16 and proj.packed is None
    assert fw.embed.data_ptr() == fw.lm_head.weight.data_ptr()  # tied: one copy, in bfloat16
    assert fw.norm.dtype == torch.float32 and all(b.ln_in.dtype == torch.float32 for b in fw.blocks)
    assert all(p.dtype == torch.float32 for p in bf16._adapters["a"].params)
    params = lambda e: sum(p.numel() * p.element_size() for p in e.hf.parameters())  # noqa: E731
    assert params(bf16) < 0.55 * params(f32)
    # no tensor is a view of the mapped checkpoint file, which would keep its float32 pages resident
    maps = Path("/proc/self/maps")
    if maps.exists():
        mapped = [tuple(int(a, 16) for a in line.split()[0].split("-")) for line in maps.read_text().splitlines()
                  if line.endswith(".safetensors")]
        for t in [*bf16.hf.parameters(), *bf16.hf.buffers()]:
            assert not any(lo <= t.data_ptr() < hi for lo, hi in mapped)


def test_logprobs_and_gradients_agree_with_float32(pair: tuple[TorchEngine, TorchEngine]) -> None:
    f32, bf16 = pair
    seqs = [_prompt(f32) + [40, 41, 42], _prompt(f32, "Hello there, how are you")]
    for adapter in (None, "a"):
        a, b = f32.logprobs(seqs, adapter=adapter), bf16.logprobs(seqs, adapter=adapter)
        diffs = [abs(x - y) for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=True)]
        assert max(diffs) < BF16_LOGPROB_TOLERANCE
        assert max(diffs) > 0  # the weights really are rounded
    batch = [Datum.from_sequence(s, [0] * (len(s) - 4) + [1] * 4) for s in seqs]
    grads = []
    for engine in pair:
        out = engine.forward_backward(batch, "cross_entropy", adapter="a")
        grads.append(torch.cat([p.grad.flatten() for p in engine._adapters["a"].params if p.grad is not None]))
        for p in engine._adapters["a"].params:  # leave the module's shared adapter as it was
            p.grad = None
        assert out.loss > 0
    cos = F.cosine_similarity(grads[0], grads[1], dim=0).item()
    assert cos > 0.99
    assert (grads[1].norm() / grads[0].norm()).item() == pytest.approx(1.0, abs=0.05)


def test_sampling_matches_recomputation_and_repeats(pair: tuple[TorchEngine, TorchEngine]) -> None:
    _, engine = pair
    prompts = [_prompt(engine), _prompt(engine, "Hello there")]
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=3)
    out = engine.sample(prompts, 3, params, adapter="a")
    again = engine.sample(prompts, 3, params, adapter="a")
    assert [[s.tokens for s in g] for g in out] == [[s.tokens for s in g] for g in again]
    seqs = [p + s.tokens for p, g in zip(prompts, out, strict=True) for s in g]
    recomputed = engine.logprobs(seqs, adapter="a")
    k = 0
    for p, g in zip(prompts, out, strict=True):
        for s in g:
            tail = recomputed[k][len(p) - 1 :]
            k += 1
            # the same bfloat16 GEMMs at other batch shapes: the float32 engine's tolerance holds
            assert max(abs(a - b) for a, b in zip(s.logprobs, tail, strict=True)) < LOGPROB_TOLERANCE


def test_sft_on_bfloat16_weights_learns_and_the_adapter_loads_in_float32(model_dir: Path, tmp_path: Path) -> None:
    engine = TorchEngine(model_dir, device="cpu", dtype="bfloat16")
    batch = [Datum.from_sequence(_prompt(engine) + [20, 21, 22, 23, 24], [0] * 20 + [1] * 5)]
    base_before = engine.logprobs([batch[0].input_tokens], adapter=None)
    engine.create_adapter("sft", LoraSpec(rank=8, seed=1, train_unembed=True))
    losses = []
    for _ in range(20):
        losses.append(engine.forward_backward(batch, "cross_entropy", adapter="sft").loss)
        engine.optim_step("sft", AdamParams(learning_rate=3e-3, grad_clip_norm=1.0, weight_decay=0.01))
    assert losses[-1] < 0.25 * losses[0]
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 17
    assert engine.logprobs([batch[0].input_tokens], adapter=None)[0] == pytest.approx(base_before[0], abs=1e-6)
    engine.save_adapter("sft", tmp_path / "sft")
    f32 = TorchEngine(model_dir, device="cpu")
    f32.load_adapter("sft", tmp_path / "sft")
    seq = [batch[0].input_tokens + [24]]
    a, b = engine.logprobs(seq, adapter="sft")[0], f32.logprobs(seq, adapter="sft")[0]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < BF16_LOGPROB_TOLERANCE


# ------------------------------------------------------------------------------------------- bad input


def test_unknown_dtypes_are_refused(model_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown dtype 'float16'"):
        TorchEngine(model_dir, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="weights dtype must be one of float32, bfloat16"):
        lower_weights(None, "int8")
    with pytest.raises(ConfigurationError, match="TEACHLOOP_DTYPE must be float32, bfloat16 or auto"):
        Settings.from_env({"TEACHLOOP_HOME": str(model_dir), "TEACHLOOP_DTYPE": "half"})
    assert Settings.from_env({"TEACHLOOP_HOME": str(model_dir), "TEACHLOOP_DTYPE": "BFloat16"}).dtype == "bfloat16"
    assert Settings.from_env({"TEACHLOOP_HOME": str(model_dir)}).dtype == "float32"
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == ("bfloat16" if native_bfloat16(cpu) else "float32")
    assert set(WEIGHT_DTYPES) == {resolve_dtype(d, cpu) for d in WEIGHT_DTYPES}


def test_bfloat16_weights_off_the_fast_path_are_refused(tmp_path: Path) -> None:
    gpt2 = write_family(tmp_path, "gpt2")
    with pytest.raises(ModelError, match="bfloat16 weights need the engine's fast path: the fast path supports"):
        TorchEngine(gpt2, device="cpu", dtype="bfloat16")


def test_prepacking_over_bfloat16_weights_is_refused(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    assert model_problem(hf) is None  # what lower_weights checks first: the fast path takes it
    lower_weights(hf, "bfloat16")
    with pytest.raises(ValueError, match="pack needs float32 weights"):
        LlamaForward(hf, pack="dense")
    assert LlamaForward(hf).pack is False

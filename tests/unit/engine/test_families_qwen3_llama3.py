"""The fast path's newer families against transformers' own forward, on tiny random-weight configs.

- Qwen3: per-head RMSNorms on queries and keys (random norm weights, ``head_dim`` != hidden / heads,
  untied embeddings);
- Llama 3.x: ``rope_parameters`` of type ``llama3`` with a short ``original_max_position_embeddings``,
  scored on sequences longer than it, so the low-frequency rescaling is exercised.

For each: the engine takes the fast path (``LlamaForward``); base logprobs and an adapter's logprobs equal
transformers' / PEFT's forward within ``HF_TOLERANCE``; the LoRA gradient of a ``forward_backward`` over a
prefix-sharing batch equals autograd through PEFT's forward; sampled logprobs agree with recomputation
within ``LOGPROB_TOLERANCE`` and greedy sampling equals ``generate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from teachloop.core import Datum, LoraSpec, SamplingParams
from teachloop.engine import LOGPROB_TOLERANCE
from teachloop.engine.llama import LlamaForward, fast_path_problem
from teachloop.engine.torch_engine import TorchEngine
from tests._tiny import tiny_tokenizer

#: engine logprobs vs transformers' forward (float32; as test_torch_engine_contract.py)
HF_TOLERANCE = 1e-3

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def write_tiny(root: Path, family: str, *, seed: int = 0) -> Path:
    """A tiny random-weight ``family`` model (``qwen3`` or ``llama3``) plus the tiny tokenizer in ``root / family``."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"), eos_token_id=eos, pad_token_id=eos,
    )
    model: Any
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "qwen3":
            model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=24, tie_word_embeddings=False))
        else:
            model = LlamaForCausalLM(LlamaConfig(**common, rope_parameters=dict(LLAMA3_ROPE), tie_word_embeddings=True))
        with torch.no_grad():  # norm weights away from 1, so a norm applied wrongly (or not at all) shows
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(1.0, 0.3)
    model.eval().generation_config = GenerationConfig(bos_token_id=common["bos_token_id"], eos_token_id=eos,
                                                      pad_token_id=eos)
    out = Path(root) / family
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def hf_logprobs(hf: Any, seq: list[int]) -> torch.Tensor:
    """Logprob of each next token of ``seq`` under ``hf``'s own forward (autograd on)."""
    logits = hf(input_ids=torch.tensor([seq[:-1]])).logits[0].float()
    return torch.log_softmax(logits, -1)[torch.arange(len(seq) - 1), torch.tensor(seq[1:])]


def perturb(engine: TorchEngine, name: str, seed: int = 1) -> None:
    """Give an adapter non-zero B so it differs from the base."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in engine._adapters[name].params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def adapter_grads(engine: TorchEngine, name: str) -> torch.Tensor:
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in engine._adapters[name].params
    ])


def check_against_transformers(path: Path, *, long: bool = False) -> TorchEngine:
    """The checks of the module docstring on the model at ``path``; returns the engine."""
    from transformers import AutoModelForCausalLM

    engine = TorchEngine(path, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    prompt = list(engine.tokenizer.encode("<|im_start|>user\nWhat is 12 + 35?<|im_end|>\n<|im_start|>assistant\n"))
    tail = list(range(3, 120, 3)) if long else [30, 31, 32, 33]
    seqs = [prompt + tail, prompt + [40, 41, 42, 43, 44], list(range(5, 60))]
    with torch.no_grad():
        for seq, got in zip(seqs, engine.logprobs(seqs), strict=True):
            assert float((torch.tensor(got) - hf_logprobs(hf, seq)).abs().max()) < HF_TOLERANCE
    engine.create_adapter("a", LoraSpec(rank=4, seed=0, train_unembed=True))
    perturb(engine, "a")
    engine._peft.set_adapter("a")
    with torch.no_grad():
        for seq, got in zip(seqs, engine.logprobs(seqs, "a"), strict=True):
            assert float((torch.tensor(got) - hf_logprobs(engine._peft, seq)).abs().max()) < HF_TOLERANCE
    # training: the first two datums share the prompt, so the packer runs one as the other's child
    batch = [Datum(s[:-1], s[1:]) for s in seqs]
    res = engine.forward_backward(batch, "cross_entropy", adapter="a")
    ours = adapter_grads(engine, "a").clone()
    engine._adapters["a"].optimizer.zero_grad(set_to_none=True)
    ref_loss = -sum(hf_logprobs(engine._peft, s).sum() for s in seqs)
    ref_loss.backward()  # type: ignore[union-attr]
    ref_loss = ref_loss.detach()  # type: ignore[union-attr]
    ref = adapter_grads(engine, "a")
    engine._adapters["a"].optimizer.zero_grad(set_to_none=True)
    assert res.loss == pytest.approx(float(ref_loss), rel=1e-4)
    assert float((ours - ref).norm() / ref.norm()) < 1e-3
    # sampling
    out = engine.sample([prompt], 3, SamplingParams(max_tokens=8, seed=2, stop=[]), adapter="a")[0]
    rescored = engine.logprobs([prompt + s.tokens for s in out], "a")
    for s, r in zip(out, rescored, strict=True):
        assert max(abs(x - y) for x, y in zip(s.logprobs, r[len(prompt) - 1 :], strict=True)) < LOGPROB_TOLERANCE
    greedy = engine.sample([prompt], 1, SamplingParams(max_tokens=8, temperature=0, stop=[]))[0][0]
    # an explicit mask: without one, generate masks every pad token (here <|im_end|>, which the prompt holds)
    ref_ids = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert greedy.tokens == ref_ids[0, len(prompt) :].tolist()
    return engine


def test_qwen3_runs_on_the_fast_path_and_matches_transformers(tmp_path: Path) -> None:
    engine = check_against_transformers(write_tiny(tmp_path, "qwen3"))
    assert isinstance(engine.fw, LlamaForward)
    assert engine.fw.blocks[0].q_norm is not None and engine.fw.blocks[0].k_norm is not None
    assert engine.fw.head_dim == 24  # the config's head_dim, not hidden / heads


def test_llama3_rope_scaling_runs_on_the_fast_path_and_matches_transformers(tmp_path: Path) -> None:
    engine = check_against_transformers(write_tiny(tmp_path, "llama3"), long=True)
    assert isinstance(engine.fw, LlamaForward)
    default = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    assert not torch.allclose(engine.fw.inv_freq, default)  # the llama3 rescaling is in effect


@pytest.mark.parametrize(
    ("config", "fast"),
    [
        ({"architectures": ["Qwen3ForCausalLM"], "hidden_act": "silu"}, True),
        ({"architectures": ["LlamaForCausalLM"], "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, True),
        ({"architectures": ["LlamaForCausalLM"], "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, True),
        ({"architectures": ["LlamaForCausalLM"], "rope_scaling": {"type": "dynamic", "factor": 2.0}}, False),
        ({"architectures": ["Phi3ForCausalLM"]}, False),
        ({"architectures": ["LlamaForCausalLM"], "hidden_act": "gelu"}, False),
        ({}, False),
    ],
)
def test_fast_path_problem_names_what_it_cannot_run(config: dict[str, Any], fast: bool) -> None:
    problem = fast_path_problem(config)
    assert (problem is None) == fast
    if problem is not None:
        assert "\n" not in problem and "fast path" in problem

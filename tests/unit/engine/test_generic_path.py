"""The generic path (``engine/hf_generic.py``): causal LMs the fast path does not take, through transformers.

On tiny random-weight models built from transformers' config classes (no downloads):

- GPT-2 (Conv1D projections, learned positions, LayerNorm, GELU), Gemma (scaled embeddings, GeGLU),
  Phi (partial rotary, parallel block) and a Llama with ``dynamic`` rope all load on ``GenericForward``,
  and their logprobs equal transformers' forward;
- on GPT-2: an adapter's logprobs equal PEFT's forward; the LoRA gradient of ``forward_backward`` (a
  prefix-sharing batch, so packed child segments) equals autograd through PEFT's forward; training
  lowers the loss (LoRA dropout active only while training); sampled logprobs agree with recomputation; greedy equals iterated argmax; seeded
  sampling repeats; the serving batch (continuous batching, prefix cache) gives the same tokens as
  one-shot sampling; a checkpoint round trip keeps weights, spec and step;
- Qwen3-MoE (fused expert tensors) runs generic; its LoRA covers the linear layers (attention);
- ``list_base_models`` reports family and forward path of what the cache holds.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from teachloop.core import AdamParams, Datum, LoraSpec, SamplingParams
from teachloop.core.settings import Settings
from teachloop.engine import LOGPROB_TOLERANCE
from teachloop.engine.hf_generic import GenericForward
from teachloop.engine.llama import LlamaForward
from teachloop.engine.models import add_model, list_base_models
from teachloop.engine.sampler import SampleRequest
from teachloop.engine.torch_engine import TorchEngine
from tests._tiny import tiny_tokenizer
from tests.unit.engine.test_families_qwen3_llama3 import adapter_grads, hf_logprobs, perturb, write_tiny

#: engine logprobs vs transformers' forward: the generic path *is* that forward (padding aside)
HF_TOLERANCE = 1e-4


def write_family(root: Path, family: str, seed: int = 0) -> Path:
    """A tiny random-weight model of ``family`` (gpt2, gemma, phi, llama-dynamic) with the tiny tokenizer."""
    import transformers as tf

    tokenizer = tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids: dict[str, Any] = dict(bos_token_id=1, eos_token_id=eos, pad_token_id=eos)
    n = len(tokenizer)
    if family == "gpt2":
        config: Any = tf.GPT2Config(vocab_size=n, n_embd=64, n_layer=2, n_head=4, n_positions=256, **ids)
        cls: Any = tf.GPT2LMHeadModel
    elif family == "gemma":
        config = tf.GemmaConfig(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                max_position_embeddings=256, **ids)
        cls = tf.GemmaForCausalLM
    elif family == "phi":
        config = tf.PhiConfig(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=256, **ids)
        cls = tf.PhiForCausalLM
    else:
        config = tf.LlamaConfig(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
                                **ids)
        cls = tf.LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).eval()
    model.generation_config = tf.GenerationConfig(**ids)
    out = Path(root) / family
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_family(tmp_path_factory.mktemp("generic"), "gpt2")


@pytest.fixture(scope="module")
def gpt2(gpt2_dir: Path) -> TorchEngine:
    return TorchEngine(gpt2_dir, device="cpu")


@pytest.fixture
def engine(gpt2: TorchEngine) -> Any:
    yield gpt2
    for info in gpt2.list_adapters():
        gpt2.delete_adapter(info.name)


def _prompt(engine: TorchEngine, text: str = "What is 12 + 35?") -> list[int]:
    return list(engine.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"))


def _seqs(engine: TorchEngine) -> list[list[int]]:
    p = _prompt(engine)
    return [p + [30, 31, 32, 33], p + [40, 41, 42], list(range(5, 45))]


@pytest.mark.parametrize("family", ["gpt2", "gemma", "phi", "llama-dynamic"])
def test_other_families_take_the_generic_path_and_match_transformers(tmp_path: Path, family: str) -> None:
    from transformers import AutoModelForCausalLM

    path = write_family(tmp_path, family)
    engine = TorchEngine(path, device="cpu")
    assert isinstance(engine.fw, GenericForward)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    seqs = _seqs(engine)
    with torch.no_grad():
        for seq, got in zip(seqs, engine.logprobs(seqs), strict=True):
            assert float((torch.tensor(got) - hf_logprobs(hf, seq)).abs().max()) < HF_TOLERANCE
    info = engine.create_adapter("a", LoraSpec(rank=2, seed=0, train_unembed=True))
    assert info.trainable_params > 0
    engine.close()


def test_fast_families_still_take_the_fast_path(tmp_path: Path) -> None:
    assert isinstance(TorchEngine(write_tiny(tmp_path, "qwen3"), device="cpu").fw, LlamaForward)


def test_adapter_logprobs_and_gradients_equal_peft(engine: TorchEngine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0, train_unembed=True))
    perturb(engine, "a")
    groups = engine.fw.lora_target_groups()  # type: ignore[attr-defined]
    assert "c_attn" in groups["attn"] and "c_fc" in groups["mlp"] and groups["unembed"] == ["lm_head"]
    assert "transformer.h.0.attn.c_proj" in groups["attn"]  # c_proj is in both blocks: full paths
    engine._peft.set_adapter("a")
    seqs = _seqs(engine)
    with torch.no_grad():
        for seq, got in zip(seqs, engine.logprobs(seqs, "a"), strict=True):
            assert float((torch.tensor(got) - hf_logprobs(engine._peft, seq)).abs().max()) < HF_TOLERANCE
        base = engine.logprobs(seqs[:1])[0]
        assert max(abs(x - y) for x, y in zip(base, engine.logprobs(seqs[:1], "a")[0], strict=True)) > 1e-3
    batch = [Datum(s[:-1], s[1:]) for s in seqs]  # the first two share the prompt: a parent and a child
    res = engine.forward_backward(batch, "cross_entropy", adapter="a")
    ours = adapter_grads(engine, "a").clone()
    engine._adapters["a"].optimizer.zero_grad(set_to_none=True)
    ref_loss = -sum(hf_logprobs(engine._peft, s).sum() for s in seqs)
    ref_loss.backward()  # type: ignore[union-attr]
    ref = adapter_grads(engine, "a")
    engine._adapters["a"].optimizer.zero_grad(set_to_none=True)
    assert res.loss == pytest.approx(float(ref_loss.detach()), rel=1e-5)  # type: ignore[union-attr]
    assert float((ours - ref).norm() / ref.norm()) < 1e-4


def test_training_lowers_the_loss_and_a_checkpoint_resumes_exactly(engine: TorchEngine, tmp_path: Path) -> None:
    engine.create_adapter("t", LoraSpec(rank=4, seed=0, dropout=0.1))
    batch = [Datum(s[:-1], s[1:]) for s in _seqs(engine)]
    adam = AdamParams(learning_rate=2e-3)
    losses = []
    for _ in range(4):
        losses.append(engine.forward_backward(batch, "cross_entropy", adapter="t").loss)
        engine.optim_step("t", adam)
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < losses[0] - 10.0
    engine.save_checkpoint("t", tmp_path / "ck")
    info = engine.load_checkpoint("r", tmp_path / "ck")
    assert info.step == 4 and info.spec.train_attn and info.spec.train_mlp and not info.spec.train_unembed
    assert info.spec.dropout == pytest.approx(0.1)
    assert engine.forward(batch, "cross_entropy", adapter="r").loss == engine.forward(batch, "cross_entropy",
                                                                                       adapter="t").loss
    # LoRA dropout acts in forward_backward only: two calls on the same weights differ, forward does not
    noisy = {engine.forward_backward(batch, "cross_entropy", adapter="r").loss for _ in range(2)}
    assert len(noisy) == 2


def test_sampling_is_consistent_seeded_and_greedy_is_argmax(engine: TorchEngine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    perturb(engine, "a")
    prompts = [_prompt(engine), _prompt(engine, "Hello there! How are you today?")]
    params = SamplingParams(max_tokens=6, temperature=0.9, top_p=0.95, seed=3, stop=[])
    out = engine.sample(prompts, 2, params, adapter="a", top_logprobs=3)
    assert out == engine.sample(prompts, 2, params, adapter="a", top_logprobs=3)
    seqs = [p + s.tokens for p, g in zip(prompts, out, strict=True) for s in g]
    rescored = engine.logprobs(seqs, "a")
    k = 0
    for p, g in zip(prompts, out, strict=True):
        for s in g:
            assert len(s.tokens) == 6 and len(s.extras["top_logprobs"]) == 6  # type: ignore[arg-type]
            diff = max(abs(x - y) for x, y in zip(s.logprobs, rescored[k][len(p) - 1 :], strict=True))
            assert diff < LOGPROB_TOLERANCE
            k += 1
    greedy = engine.sample(prompts[:1], 1, SamplingParams(max_tokens=6, temperature=0, stop=[]))[0][0].tokens
    hf = engine.hf  # PEFT's LoRA layers are in it: the reference runs with them disabled
    seq = list(prompts[0])
    with torch.no_grad(), engine._peft.disable_adapter():
        for _ in range(6):
            seq.append(int(hf(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert greedy == seq[len(prompts[0]) :]


def test_the_serving_batch_admits_requests_between_steps_and_reuses_prefixes(engine: TorchEngine) -> None:
    """Continuous batching with the prefix cache on: a request added mid-flight (n=2), with a prompt whose
    first block is cached, decodes the same greedy tokens as one-shot sampling of the same prompt."""
    long = _prompt(engine, "Please add these numbers: 1 2 3 4 5 6 7 8 9 0. Think step by step.")
    assert len(long) > 16  # at least one full prefix-cache block
    other = _prompt(engine, "Hello")
    greedy = SamplingParams(max_tokens=5, temperature=0, stop=[])
    expected = [engine.sample([p], 1, greedy)[0][0].tokens for p in (long, other, long + [40])]
    batch = engine.batch(rows=2, capacity=16, prefix_cache=True)
    first = engine.exclusive(lambda: batch.add([SampleRequest(long, 1, greedy), SampleRequest(other, 1, greedy)]))
    engine.exclusive(batch.step)
    assert all(x is not None for x in batch.cache.extra[:2])  # each row keeps the model's own cache
    # two samples of a prompt whose first block is cached: one extend, then a copy of its row (and model cache)
    later = engine.exclusive(lambda: batch.add([SampleRequest(long + [40], 2, greedy)]))
    engine.exclusive(batch.run)
    assert [s.tokens for s in first + later] == [*expected, expected[-1]]
    assert engine.prefix.lookup(engine.fw.adapter_version(None), long, limit=len(long))[0] >= 16


def test_list_base_models_reports_family_and_path(tmp_path: Path, gpt2_dir: Path) -> None:
    settings = Settings.from_env({"TEACHLOOP_HOME": str(tmp_path / "home")})
    add_model(settings, "tiny-gpt2", gpt2_dir)
    add_model(settings, "tiny-llama3", write_tiny(tmp_path, "llama3"))
    entries = {e.name: e for e in list_base_models(settings)}
    assert set(entries) == {"tiny-gpt2", "tiny-llama3"}
    g, ll = entries["tiny-gpt2"], entries["tiny-llama3"]
    assert (g.family, g.architecture, g.forward, g.context_length) == ("gpt2", "GPT2LMHeadModel", "generic", 256)
    assert g.reason is not None and "GPT2LMHeadModel" in g.reason
    assert (ll.family, ll.forward, ll.reason, ll.context_length) == ("llama", "fast", None, 512)


def test_a_mixture_of_experts_model_runs_generic_and_adapts_what_is_linear(tmp_path: Path) -> None:
    """Qwen3-MoE (fused expert tensors): generic path, logprobs as transformers; LoRA covers attention only,
    and a spec asking for the MLP alone is refused naming it, leaving no adapter behind."""
    import transformers as tf

    from teachloop.core.errors import InvalidInput

    tokenizer = tiny_tokenizer()
    config = tf.Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                               moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, head_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tf.Qwen3MoeForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    engine = TorchEngine(tmp_path / "moe", device="cpu")
    assert isinstance(engine.fw, GenericForward)
    seq = list(range(5, 40))
    with torch.no_grad():
        assert float((torch.tensor(engine.logprobs([seq])[0]) - hf_logprobs(model, seq)).abs().max()) < HF_TOLERANCE
    with pytest.raises(InvalidInput, match="train_mlp"):
        engine.create_adapter("m", LoraSpec(rank=2, train_attn=False, train_mlp=True))
    assert engine.list_adapters() == []
    engine.create_adapter("a", LoraSpec(rank=2, seed=0))
    res = engine.forward_backward([Datum(seq[:-1], seq[1:])], "cross_entropy", adapter="a")
    assert engine.optim_step("a", AdamParams(learning_rate=1e-2)).grad_norm > 0 and res.loss > 0
    engine.close()

"""TorchEngine on a tiny random Llama: sampling, logprob agreement, losses vs naive references, adapters."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from teachloop.core import AdamParams, Datum, InvalidInput, LoraSpec, LossConfig, NotFound, SamplingParams
from teachloop.engine import LOGPROB_TOLERANCE
from teachloop.engine.torch_engine import TorchEngine
from tests._tiny import tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), num_layers=2, hidden_size=64)


@pytest.fixture
def engine(model_dir: Path) -> TorchEngine:
    return TorchEngine(model_dir, device="cpu")


def _perturb(engine: TorchEngine, name: str, seed: int = 1) -> None:
    """Give an adapter non-zero B so it differs from the base."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in engine._adapters[name].params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _prompt(engine: TorchEngine, text: str = "What is 12 + 35?") -> list[int]:
    return list(engine.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"))


# --------------------------------------------------------------------------------------------- sampling


def test_sample_logprobs_match_recomputation(engine: TorchEngine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    _perturb(engine, "a")
    prompts = [_prompt(engine), _prompt(engine, "Hello there")]
    for params in (SamplingParams(max_tokens=12, temperature=1.0, seed=1),
                   SamplingParams(max_tokens=12, temperature=0.7, top_k=20, top_p=0.9, seed=2)):
        out = engine.sample(prompts, 3, params, adapter="a")
        assert [len(g) for g in out] == [3, 3]
        seqs = [p + s.tokens for p, g in zip(prompts, out, strict=True) for s in g]
        recomputed = engine.logprobs(seqs, adapter="a")
        k = 0
        for p, g in zip(prompts, out, strict=True):
            for s in g:
                assert len(s.logprobs) == len(s.tokens)
                tail = recomputed[k][len(p) - 1 :]
                k += 1
                assert max(abs(a - b) for a, b in zip(s.logprobs, tail, strict=True)) < LOGPROB_TOLERANCE


def test_seeded_sampling_is_reproducible_and_seeds_differ(engine: TorchEngine) -> None:
    p = [_prompt(engine)]
    a = engine.sample(p, 4, SamplingParams(max_tokens=10, seed=7))
    b = engine.sample(p, 4, SamplingParams(max_tokens=10, seed=7))
    c = engine.sample(p, 4, SamplingParams(max_tokens=10, seed=8))
    assert [s.tokens for s in a[0]] == [s.tokens for s in b[0]]
    assert [s.tokens for s in a[0]] != [s.tokens for s in c[0]]


def test_greedy_matches_hf_generate(engine: TorchEngine) -> None:
    p = _prompt(engine)
    out = engine.sample([p], 1, SamplingParams(max_tokens=8, temperature=0, stop=[]))[0][0]
    ref = engine.hf.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert out.tokens == ref[0, len(p) :].tolist()
    assert out.stop_reason == "length"


def test_stop_token_ids_strings_and_max_tokens(engine: TorchEngine) -> None:
    p = _prompt(engine)
    free = engine.sample([p], 1, SamplingParams(max_tokens=12, temperature=0, stop=[]))[0][0]
    # a stop token id: the third greedy token
    stop_tok = free.tokens[2]
    first = free.tokens.index(stop_tok)
    s = engine.sample([p], 1, SamplingParams(max_tokens=12, temperature=0, stop=[stop_tok]))[0][0]
    assert s.tokens == free.tokens[: first + 1] and s.stop_reason == "stop"
    # a stop string: the decoded text of greedy tokens 3..4
    text = engine.tokenizer.decode(free.tokens[3:5])
    s2 = engine.sample([p], 1, SamplingParams(max_tokens=12, temperature=0, stop=[text]))[0][0]
    assert s2.stop_reason == "stop"
    assert text in engine.tokenizer.decode(s2.tokens)
    assert len(s2.tokens) <= 5
    s3 = engine.sample([p], 2, SamplingParams(max_tokens=3, stop=[]))[0]
    assert all(len(x.tokens) == 3 and x.stop_reason == "length" for x in s3)


def test_continuous_batch_admits_requests_between_steps(engine: TorchEngine) -> None:
    from teachloop.engine.sampler import SampleRequest

    greedy = SamplingParams(max_tokens=6, temperature=0, stop=[])
    p1, p2 = _prompt(engine), _prompt(engine, "Hello there")
    alone = engine.sample([p2], 1, greedy)[0][0].tokens
    batch = engine.batch()

    def drive() -> tuple[list[Any], list[Any]]:
        first = batch.add([SampleRequest(p1, 2, greedy)])
        batch.step()
        batch.step()
        late = batch.add([SampleRequest(p2, 1, greedy)])
        assert batch.active == 3
        batch.run()
        return first, late

    first, late = engine.exclusive(drive)
    assert all(len(s.tokens) == 6 for s in first)
    assert late[0].tokens == alone  # joining mid-flight changes nothing for the newcomer


def test_bad_sampling_input_is_rejected(engine: TorchEngine) -> None:
    with pytest.raises(InvalidInput, match="outside the vocabulary"):
        engine.sample([[engine.vocab_size + 5]], 1, SamplingParams())
    with pytest.raises(InvalidInput, match="empty"):
        engine.sample([[]], 1, SamplingParams())
    with pytest.raises(NotFound):
        engine.sample([[1, 2]], 1, SamplingParams(), adapter="missing")
    from teachloop.core import PayloadTooLarge

    with pytest.raises(PayloadTooLarge):
        engine.sample([[5] * engine.context_length], 1, SamplingParams())


# ------------------------------------------------------------------------------- losses vs reference


def _naive_logprobs(engine: TorchEngine, d: Datum, adapter: str | None) -> torch.Tensor:
    """Per-token logprobs through PEFT's own (HF) forward, one datum at a time."""
    peft = engine._peft
    x = torch.tensor([d.input_tokens])
    if adapter is None:
        with peft.disable_adapter():
            logits = peft(input_ids=x).logits[0]
    else:
        peft.set_adapter(adapter)
        for st in engine._adapters.values():  # set_adapter toggles requires_grad; restore ours
            for p in st.params:
                p.requires_grad_(True)
        logits = peft(input_ids=x).logits[0]
    lsm = torch.log_softmax(logits.float(), -1)
    return lsm[torch.arange(len(d.target_tokens)), torch.tensor(d.target_tokens)]


def _naive_loss(engine: TorchEngine, batch: list[Datum], loss: str, cfg: LossConfig) -> torch.Tensor:
    total = torch.zeros(())
    seq_terms = []
    for d in batch:
        lp = _naive_logprobs(engine, d, "a")
        ref = _naive_logprobs(engine, d, None).detach() if (loss == "dpo" or cfg.kl_coef) else None
        w = d.weights or [1.0] * d.num_tokens
        if loss == "dpo":
            seq_terms.append((sum(w[t] * lp[t] for t in range(d.num_tokens)),
                              sum(w[t] * ref[t] for t in range(d.num_tokens))))  # type: ignore[index]
            continue
        for t in range(d.num_tokens):
            if loss == "cross_entropy":
                total = total - w[t] * lp[t]
                continue
            adv, old = d.advantages[t], d.sampler_logprobs[t]  # type: ignore[index]
            r = torch.exp(lp[t] - old)
            if loss == "importance_sampling":
                term = -r * adv
            elif loss == "ppo":
                lo, hi = cfg.clip_bounds("ppo")
                term = -torch.minimum(r * adv, torch.clamp(r, lo, hi) * adv)
            else:
                lo, hi = cfg.clip_bounds("cispo")
                term = -torch.clamp(r, lo, hi).detach() * adv * lp[t]
            if cfg.kl_coef:
                dd = ref[t] - lp[t]  # type: ignore[index]
                term = term + cfg.kl_coef * (torch.exp(dd) - dd - 1)
            total = total + w[t] * term
    if loss == "dpo":
        for (sc, rc), (sr, rr) in zip(seq_terms[0::2], seq_terms[1::2], strict=True):
            total = total - torch.nn.functional.logsigmoid(cfg.dpo_beta * ((sc - rc) - (sr - rr)))
    return total


def _grads(engine: TorchEngine) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in engine._adapters["a"].params])


def _rl_batch(engine: TorchEngine) -> list[Datum]:
    """Two prompts x two completions sharing each prompt (exercises prefix sharing)."""
    gen = torch.Generator().manual_seed(3)
    batch = []
    for text in ("What is 12 + 35?", "Hello there"):
        p = _prompt(engine, text)
        for k in range(2):
            comp = torch.randint(3, engine.vocab_size, (5 + k,), generator=gen).tolist()
            toks = p + comp
            mask = [0] * len(p) + [1] * len(comp)
            adv = [0.0] * len(p) + [1.0 if k else -0.5] * len(comp)
            # sampler logprobs: the current ones shifted, so ratios differ from 1 and clipping triggers
            old = [0.0] * len(p) + (torch.randn(len(comp), generator=gen) * 0.3 - 2.0).tolist()
            batch.append(Datum.from_sequence(toks, mask, advantages=adv, sampler_logprobs=old))
    return batch


@pytest.mark.parametrize(
    ("loss", "cfg"),
    [
        ("cross_entropy", LossConfig()),
        ("importance_sampling", LossConfig()),
        ("ppo", LossConfig(clip_low=0.9, clip_high=1.1)),
        ("cispo", LossConfig(clip_low=0.5, clip_high=1.5)),
        ("ppo", LossConfig(kl_coef=0.3)),
        ("dpo", LossConfig(dpo_beta=0.5)),
    ],
)
@pytest.mark.parametrize("unembed", [True, False], ids=["lora-unembed", "fused-unembed"])
def test_loss_gradients_match_naive_reference(engine: TorchEngine, loss: str, cfg: LossConfig, unembed: bool) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0, train_unembed=unembed))
    _perturb(engine, "a")
    batch = _rl_batch(engine)
    if loss == "cross_entropy":
        batch = [Datum(d.input_tokens, d.target_tokens, [0.5 + (t % 3) for t in range(d.num_tokens)]) for d in batch]
    if loss == "dpo":
        batch = [Datum(d.input_tokens, d.target_tokens, d.weights) for d in batch]
    res = engine.forward_backward(batch, loss, cfg, adapter="a", logprobs_for="weighted")  # type: ignore[arg-type]
    ours = _grads(engine).clone()
    engine._adapters["a"].optimizer.zero_grad(set_to_none=True)
    ref_loss = _naive_loss(engine, batch, loss, cfg)
    ref_loss.backward()
    ref = _grads(engine)
    assert math.isclose(res.loss, float(ref_loss.detach()), rel_tol=1e-4, abs_tol=1e-4)
    assert float((ours - ref).norm() / ref.norm().clamp_min(1e-12)) < 1e-3
    assert res.metrics["loss:sum"] == pytest.approx(res.loss)


def test_packed_shared_and_padded_batches_give_the_same_loss(engine: TorchEngine) -> None:
    """Packed with shared prefixes (the engine), packed without sharing, and a padded HF batch agree."""
    from teachloop.engine import packing

    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    _perturb(engine, "a")
    batch = _rl_batch(engine)
    shared = engine.forward(batch, "ppo", adapter="a")
    assert shared.metrics["packed_tokens:sum"] < sum(d.num_tokens for d in batch)  # prefixes were shared
    original = packing.plan_packing
    try:
        packing_no_share = lambda seqs, **kw: original(seqs, share=False)  # noqa: E731
        import teachloop.engine.torch_engine as te

        te.plan_packing = packing_no_share  # type: ignore[assignment]
        unshared = engine.forward(batch, "ppo", adapter="a")
    finally:
        te.plan_packing = original  # type: ignore[assignment]
    assert unshared.metrics["packed_tokens:sum"] == sum(d.num_tokens for d in batch)
    assert shared.loss == pytest.approx(unshared.loss, rel=1e-5, abs=1e-5)
    # padded: one HF forward over a right-padded batch with an attention mask
    peft = engine._peft
    peft.set_adapter("a")
    width = max(d.num_tokens for d in batch)
    ids = torch.tensor([d.input_tokens + [0] * (width - d.num_tokens) for d in batch])
    att = torch.tensor([[1] * d.num_tokens + [0] * (width - d.num_tokens) for d in batch])
    with torch.no_grad():
        lsm = torch.log_softmax(peft(input_ids=ids, attention_mask=att).logits.float(), -1)
    for i, d in enumerate(batch):
        ref = lsm[i, torch.arange(d.num_tokens), torch.tensor(d.target_tokens)]
        assert max(abs(a - b) for a, b in zip(shared.logprobs[i], ref.tolist(), strict=True)) < 1e-3


# ------------------------------------------------------------------------------ adapters, checkpoints


def _train_steps(engine: TorchEngine, name: str, batch: list[Datum], steps: int, lr: float = 1e-2) -> list[float]:
    losses = []
    for _ in range(steps):
        r = engine.forward_backward(batch, "cross_entropy", adapter=name)
        engine.optim_step(name, AdamParams(learning_rate=lr, grad_clip_norm=1.0, weight_decay=0.01))
        losses.append(r.loss)
    return losses


def test_loading_and_merging_print_no_transformers_progress_bar(model_dir: Path, tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    assert "Loading weights" in capfd.readouterr().err  # what `teachloop up` printed before
    engine = TorchEngine(model_dir, device="cpu")
    engine.create_adapter("x", LoraSpec(rank=4, seed=0))
    engine.merge_adapter("x", tmp_path / "merged")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # switched off only while the engine loads


def test_checkpoint_resume_equals_uninterrupted(engine: TorchEngine, tmp_path: Path) -> None:
    batch = [Datum.from_sequence(_prompt(engine) + [10, 11, 12, 13], [0] * 20 + [1] * 4)]
    engine.create_adapter("run", LoraSpec(rank=4, seed=5))
    _train_steps(engine, "run", batch, 2)
    engine.save_checkpoint("run", tmp_path / "ck")
    uninterrupted = _train_steps(engine, "run", batch, 2)
    after = engine.logprobs([batch[0].input_tokens + [batch[0].target_tokens[-1]]], adapter="run")[0]
    resumed_info = engine.load_checkpoint("resumed", tmp_path / "ck")
    assert resumed_info.step == 2
    resumed = _train_steps(engine, "resumed", batch, 2)
    assert resumed == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7)
    assert engine.logprobs([batch[0].input_tokens + [batch[0].target_tokens[-1]]], adapter="resumed")[0] == \
        pytest.approx(after, abs=1e-6)
    assert engine.list_adapters()[0].step == 4


def test_sft_loss_goes_down_and_base_is_untouched(engine: TorchEngine) -> None:
    batch = [Datum.from_sequence(_prompt(engine) + [20, 21, 22, 23, 24], [0] * 20 + [1] * 5)]
    base_before = engine.logprobs([batch[0].input_tokens], adapter=None)
    engine.create_adapter("sft", LoraSpec(rank=8, seed=1, train_unembed=True))
    losses = _train_steps(engine, "sft", batch, 20, lr=3e-3)  # larger rates make this tiny model's loss spike
    assert losses[-1] < 0.25 * losses[0]
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 17  # a steady descent, not one lucky step
    assert engine.logprobs([batch[0].input_tokens], adapter=None)[0] == pytest.approx(base_before[0], abs=1e-6)


def test_peft_format_round_trip_and_merge(engine: TorchEngine, model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine.create_adapter("x", LoraSpec(rank=4, seed=0, train_unembed=True))
    _perturb(engine, "x")
    seq = _prompt(engine) + [30, 31, 32]
    ours = engine.logprobs([seq], adapter="x")[0]
    out = engine.save_adapter("x", tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    # a plain PEFT model loads it and agrees
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(out))
    with torch.no_grad():
        lsm = torch.log_softmax(peft(input_ids=torch.tensor([seq[:-1]])).logits[0], -1)
    theirs = lsm[torch.arange(len(seq) - 1), torch.tensor(seq[1:])].tolist()
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-3
    # loading it back under another name gives the same policy; names coexist
    engine.load_adapter("y", out)
    assert engine.logprobs([seq], adapter="y")[0] == pytest.approx(ours, abs=1e-5)
    assert {a.name for a in engine.list_adapters()} == {"x", "y"}
    # merged export is a plain HF model with the adapter baked in
    merged_dir = engine.merge_adapter("x", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    with torch.no_grad():
        lsm = torch.log_softmax(merged(input_ids=torch.tensor([seq[:-1]])).logits[0], -1)
    merged_lp = lsm[torch.arange(len(seq) - 1), torch.tensor(seq[1:])].tolist()
    assert max(abs(a - b) for a, b in zip(ours, merged_lp, strict=True)) < 1e-3
    engine.delete_adapter("y")
    assert [a.name for a in engine.list_adapters()] == ["x"]


def test_bad_training_input_is_rejected_and_changes_nothing(engine: TorchEngine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    ok = Datum([1, 2, 3], [2, 3, 4])
    with pytest.raises(InvalidInput, match="advantages"):
        engine.forward_backward([ok], "ppo", adapter="a")
    with pytest.raises(InvalidInput, match="outside"):
        engine.forward_backward([Datum([1, 2], [2, engine.vocab_size])], "cross_entropy", adapter="a")
    with pytest.raises(InvalidInput, match="even"):
        engine.forward_backward([ok], "dpo", adapter="a")
    with pytest.raises(InvalidInput, match="no accumulated gradient"):
        engine.optim_step("a", AdamParams())
    with pytest.raises(InvalidInput, match="length"):
        Datum([1, 2, 3], [2, 3])
    with pytest.raises(NotFound):
        engine.forward_backward([ok], "cross_entropy", adapter="nope")
    with pytest.raises(InvalidInput, match="adapter name"):
        engine.create_adapter("bad name!", LoraSpec())
    assert all(p.grad is None for p in engine._adapters["a"].params)


def test_copy_adapter_is_an_exact_snapshot(engine: TorchEngine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    _perturb(engine, "a")
    seq = [*_prompt(engine), 40, 41]
    engine.copy_adapter("a", "snap")
    assert engine.logprobs([seq], "snap")[0] == pytest.approx(engine.logprobs([seq], "a")[0], abs=1e-6)
    _perturb(engine, "a", seed=2)  # training the original leaves the snapshot alone
    assert engine.logprobs([seq], "snap")[0] != pytest.approx(engine.logprobs([seq], "a")[0], abs=1e-4)


def test_layer_checkpointing_gives_the_same_loss_and_gradient(engine: TorchEngine) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=0))
    _perturb(engine, "a")
    batch = _rl_batch(engine)
    plain = engine.forward_backward(batch, "ppo", adapter="a")
    g_plain = _grads(engine).clone()
    engine._adapters["a"].optimizer.zero_grad(set_to_none=True)
    engine.fw.checkpoint_layers = True
    try:
        ckpt = engine.forward_backward(batch, "ppo", adapter="a")
    finally:
        engine.fw.checkpoint_layers = False
    assert ckpt.loss == pytest.approx(plain.loss, rel=1e-6, abs=1e-7)
    assert float((_grads(engine) - g_plain).norm() / g_plain.norm()) < 1e-5

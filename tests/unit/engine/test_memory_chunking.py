"""Micro-batched ``forward_backward``: the same loss, logprobs, metrics and gradient, with memory bounded by the chunk.

``packing.micro_batches`` splits a batch (property tests); the torch engine runs a
batch split into micro-batches of ``micro_batch_tokens`` packed tokens and must
give what one pass over the whole batch gives (differential tests on a tiny
random Llama, for every loss); and the activations it keeps for the backward
must not grow with the batch (measured through autograd's saved-tensor hooks).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.core import Datum, LoraSpec, LossConfig
from teachloop.engine.losses import merge_metrics
from teachloop.engine.packing import micro_batches, plan_packing
from teachloop.engine.torch_engine import TorchEngine
from tests._tiny import tiny_llama

# ------------------------------------------------------------------------------------------ micro_batches


def _groups(draw: Any, max_groups: int = 6) -> list[list[int]]:
    """GRPO-like batches: prompts with several continuations each, plus some unrelated sequences."""
    seqs: list[list[int]] = []
    for _ in range(draw(st.integers(1, max_groups))):
        prompt = draw(st.lists(st.integers(0, 30), min_size=1, max_size=24))
        for _ in range(draw(st.integers(1, 5))):
            seqs.append(prompt + draw(st.lists(st.integers(0, 30), min_size=1, max_size=12)))
    order = draw(st.permutations(range(len(seqs))))
    return [seqs[i] for i in order]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), max_tokens=st.integers(1, 120), pairs=st.booleans())
def test_micro_batches_cover_the_batch_within_the_bound(data: Any, max_tokens: int, pairs: bool) -> None:
    seqs = _groups(data.draw)
    parts = micro_batches(seqs, max_tokens, pairs=pairs)
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(len(seqs)))  # every sequence exactly once
    for part in parts:
        assert part == sorted(part)
        if pairs:  # a DPO pair is never split
            assert all((i ^ 1) in part for i in part if (i ^ 1) < len(seqs))
        plan = plan_packing([seqs[i] for i in part])
        prompt = max([plan.lens[parent] for parent in plan.parent if parent >= 0], default=0)  # longest shared
        unit = 2 if pairs else 1
        # over the bound only for a part of one cluster whose prompt is long (it is not recomputed for fewer
        # tokens than its own), or for one unit (a sequence or pair longer than the bound)
        assert len(plan.tokens) <= max(max_tokens, 2 * prompt) or len(part) <= unit


def test_micro_batches_keep_a_group_whole_when_it_fits() -> None:
    # 3 groups of 8: a 101-token prompt each (distinct first token), continuations of 2 distinct tokens
    seqs = [[g, *range(100), 300 + j, 400 + j] for g in range(3) for j in range(8)]
    parts = micro_batches(seqs, 101 + 8 * 2)
    assert parts == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    # a bound smaller than a group: the group is split, each part repeating the prompt, but never for fewer
    # tokens than the prompt's own
    small = micro_batches(seqs[:8], 101 + 4 * 2)
    assert small == [list(range(8))]
    long_tails = [[*range(10), *range(100 + 10 * j, 110 + 10 * j)] for j in range(8)]  # 10-token prompt
    assert micro_batches(long_tails, 10 + 4 * 10) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_merge_metrics_weights_each_mean_by_what_it_averaged() -> None:
    a = {"loss:sum": 1.0, "tokens:sum": 3.0, "ratio:mean": 1.0, "nll:mean": 2.0, "pairs:sum": 1.0,
         "accuracy:mean": 1.0}
    b = {"loss:sum": 2.0, "tokens:sum": 1.0, "ratio:mean": 2.0, "nll:mean": 4.0, "pairs:sum": 3.0,
         "accuracy:mean": 0.0}
    out = merge_metrics([a, b], [1.0, 3.0])
    assert out["loss:sum"] == 3.0 and out["tokens:sum"] == 4.0
    assert out["ratio:mean"] == pytest.approx((3 * 1.0 + 1 * 2.0) / 4)
    assert out["nll:mean"] == pytest.approx((1 * 2.0 + 3 * 4.0) / 4)
    assert out["accuracy:mean"] == pytest.approx(1 / 4)


# ------------------------------------------------------------------------------------ the engine, chunked


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchEngine]:
    eng = TorchEngine(tiny_llama(tmp_path_factory.mktemp("tiny"), num_layers=2, hidden_size=64), device="cpu")
    eng.create_adapter("a", LoraSpec(rank=4, seed=0))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # B != 0, so the adapter differs from the base (KL and DPO terms are non-trivial)
        for p in eng._adapters["a"].params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    yield eng
    eng.close()


def _batch(rng: random.Random, vocab: int, groups: int, group: int, prompt: int, new: int, loss: str) -> list[Datum]:
    out: list[Datum] = []
    for _ in range(groups):
        p = [rng.randrange(vocab) for _ in range(rng.randint(1, prompt))]
        for _ in range(group):
            c = [rng.randrange(vocab) for _ in range(rng.randint(1, new))]
            tokens = p + c
            mask = [0.0] * len(p) + [1.0] * len(c)
            if loss in ("cross_entropy", "dpo"):
                weights = [m * rng.choice((0.5, 1.0)) for m in mask] if loss == "cross_entropy" else mask
                out.append(Datum.from_sequence(tokens, weights))
            else:
                adv = rng.uniform(-1, 1)
                old = [0.0] * len(p) + [-rng.uniform(0.5, 6) for _ in c]
                out.append(Datum.from_sequence(tokens, mask, advantages=[m * adv for m in mask],
                                               sampler_logprobs=old))
    return out


def _run(engine: TorchEngine, batch: list[Datum], loss: Any, config: LossConfig, chunk: int) -> tuple[Any, list[Any]]:
    engine.micro_batch_tokens = chunk
    state = engine._adapters["a"]
    for p in state.params:
        p.grad = None
    try:
        res = engine.forward_backward(batch, loss, config, adapter="a")
    finally:
        engine.micro_batch_tokens = TorchEngine.micro_batch_tokens
        state.accumulated = 0
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in state.params]
    for p in state.params:
        p.grad = None
    return res, grads


#: the per-token RL losses (importance_sampling, cispo) share ppo's path through the engine
CASES = [("ppo", LossConfig()), ("ppo", LossConfig(kl_coef=0.1)), ("cross_entropy", LossConfig()),
         ("dpo", LossConfig())]


@pytest.mark.parametrize(("loss", "config"), CASES, ids=[f"{c[0]}-kl{c[1].kl_coef}" for c in CASES])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 10_000), fraction=st.floats(0.1, 0.6))
def test_chunked_forward_backward_equals_one_pass(
    engine: TorchEngine, loss: Any, config: LossConfig, seed: int, fraction: float
) -> None:
    rng = random.Random(seed)
    batch = _batch(rng, engine.vocab_size, groups=rng.randint(2, 4), group=rng.choice((2, 4)), prompt=20, new=10,
                   loss=loss)
    chunk = max(1, int(fraction * len(plan_packing([d.input_tokens for d in batch]).tokens)))
    assert len(micro_batches([d.input_tokens for d in batch], chunk, pairs=loss == "dpo")) > 1
    whole, g_whole = _run(engine, batch, loss, config, 10**9)
    parts, g_parts = _run(engine, batch, loss, config, chunk)
    assert parts.loss == pytest.approx(whole.loss, rel=1e-4, abs=1e-4)
    assert parts.num_tokens == whole.num_tokens
    for a, b in zip(parts.logprobs, whole.logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4, nan_ok=True)
    assert set(parts.metrics) == set(whole.metrics)
    for key, value in whole.metrics.items():
        if key != "packed_tokens:sum":  # parts of a split group each pack the prompt again
            assert parts.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    for a, b in zip(g_parts, g_whole, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


class _SavedBytes:
    """Peak bytes autograd keeps for one backward: the saved tensors of each forward, until its backward starts."""

    def __init__(self) -> None:
        self.peak = 0
        self._current = 0
        self._seen: set[int] = set()
        self._in_backward = False

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if self._in_backward:  # a new forward (the next micro-batch) after a backward
            self._current, self._seen, self._in_backward = 0, set(), False
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self._current += storage.nbytes()
            self.peak = max(self.peak, self._current)
        return t

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        self._in_backward = True
        return t


def _saved_peak(engine: TorchEngine, batch: list[Datum], chunk: int) -> int:
    probe = _SavedBytes()

    def measured() -> None:  # the hooks are thread-local: install them on the engine's compute thread
        with torch.autograd.graph.saved_tensors_hooks(probe.pack, probe.unpack):
            _run(engine, batch, "ppo", LossConfig(), chunk)

    engine._compute.run(measured)
    return probe.peak


def test_saved_activations_do_not_grow_with_the_batch(engine: TorchEngine) -> None:
    rng = random.Random(0)
    small = _batch(rng, engine.vocab_size, groups=2, group=4, prompt=40, new=20, loss="ppo")
    large = small + _batch(rng, engine.vocab_size, groups=6, group=4, prompt=40, new=20, loss="ppo")
    # one pass: the activations kept for the backward grow with the batch (so the probe can fail)
    assert _saved_peak(engine, large, 10**9) > 2.5 * _saved_peak(engine, small, 10**9)
    # micro-batches of 128 packed tokens: the peak is that of one micro-batch, whatever the batch
    assert _saved_peak(engine, large, 128) <= 1.2 * _saved_peak(engine, small, 128)


def test_a_micro_batch_over_the_bound_checkpoints_its_layers_and_stays_exact(engine: TorchEngine) -> None:
    rng = random.Random(5)
    batch = _batch(rng, engine.vocab_size, groups=2, group=4, prompt=1, new=6, loss="ppo")
    long_prompt = [rng.randrange(engine.vocab_size) for _ in range(40)]
    batch = [Datum.from_sequence(long_prompt + d.input_tokens + d.target_tokens[-1:], [0.0] * 40 + list(d.weights or []) + [1.0],
                                 advantages=[0.0] * 40 + list(d.advantages or []) + [0.5],
                                 sampler_logprobs=[0.0] * 40 + list(d.sampler_logprobs or []) + [-2.0])
             for d in batch]
    # a group packs 40 + 4 tails; under a 30-token bound it cannot be split (the prompt is longer than the
    # tails a part would hold), so its micro-batch exceeds the bound and is checkpointed
    whole, g_whole = _run(engine, batch, "ppo", LossConfig(), 10**9)
    parts, g_parts = _run(engine, batch, "ppo", LossConfig(), 30)
    assert not engine.fw.checkpoint_layers  # restored
    assert parts.loss == pytest.approx(whole.loss, rel=1e-4, abs=1e-4)
    for a, b in zip(g_parts, g_whole, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    assert _saved_peak(engine, batch, 30) < 0.5 * _saved_peak(engine, batch, 10**9)

"""Batching is invisible: the property test of continuous batching on the real ``DecodeBatch``.

A tiny random-weight Llama (two LoRA adapters and the base; float32 weights, and
bfloat16 ones as ``TEACHLOOP_DTYPE=bfloat16`` loads them) runs random traffic
through one ``DecodeBatch`` the way the serving scheduler drives it: requests
arrive between steps, prompts and ``max_tokens`` vary, ``n`` is 1-3, some have
stop token ids, penalties, a logit bias or a grammar constraint, some are
dropped mid-way (a client that left), one may carry a constraint that raises.
The cache starts at 2 rows x 8 positions, so it grows during prefill and during
decode steps (the path that once turned the cache into inference tensors and
failed every request of a mixed batch).

The property, for every generated case: each request that was not dropped gets
token for token the sequences it gets when it runs alone on a fresh batch --
greedy, and seeded sampling too (each request owns its generator); a dropped
request's tokens are a prefix of its solo answer; a request whose constraint
raised fails alone. Nothing raises out of ``add``/``step``/``drop``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teachloop.core import LoraSpec, SamplingParams
from teachloop.engine.sampler import DecodeBatch, SampleRequest
from teachloop.engine.torch_engine import TorchEngine
from tests._tiny import tiny_llama

ADAPTERS = (None, "a", "b")


def _engine(tmp_path_factory: pytest.TempPathFactory, dtype: str) -> TorchEngine:
    model_dir: Path = tiny_llama(tmp_path_factory.mktemp("tiny-batch"), num_layers=2, hidden_size=64)
    eng = TorchEngine(model_dir, device="cpu", dtype=dtype)
    for k, name in enumerate(("a", "b")):
        eng.create_adapter(name, LoraSpec(rank=4, seed=k))
        gen = torch.Generator().manual_seed(10 + k)
        with torch.no_grad():
            for p in eng._adapters[name].params:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        eng.fw.refresh_adapters()
    return eng


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TorchEngine:
    return _engine(tmp_path_factory, "float32")


@pytest.fixture(scope="module")
def engine_bf16(tmp_path_factory: pytest.TempPathFactory) -> TorchEngine:
    """The same model and adapters with bfloat16 weights (``TEACHLOOP_DTYPE=bfloat16``)."""
    return _engine(tmp_path_factory, "bfloat16")


class EvenTokens:
    """A grammar stand-in: only even token ids, finished after ``length`` tokens."""

    def __init__(self, length: int, fail_at: int | None = None) -> None:
        self.length = length
        self.fail_at = fail_at
        self.seen = 0

    def allowed(self, vocab_size: int) -> torch.Tensor:
        if self.fail_at is not None and self.seen >= self.fail_at:
            raise RuntimeError("broken grammar")
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[0::2] = True
        return mask

    def accept(self, token: int) -> None:
        assert token % 2 == 0, f"token {token} was not allowed"
        self.seen += 1

    @property
    def finished(self) -> bool:
        return self.seen >= self.length


@dataclass
class Case:
    prompt: list[int]
    n: int
    params: SamplingParams
    adapter: str | None
    arrive: int  # decode step before which it is added
    drop_after: int | None  # steps after arrival at which the client leaves
    constrain: int | None  # EvenTokens length
    fail_at: int | None  # the constraint raises after this many tokens

    def request(self, key: object = None) -> SampleRequest:
        constraint = None
        if self.constrain is not None:
            length, fail_at = self.constrain, self.fail_at
            constraint = lambda _i: EvenTokens(length, fail_at)  # noqa: E731
        return SampleRequest(self.prompt, self.n, self.params, self.adapter, key=key, constraint=constraint)


#: shared prompt heads (a system prompt, few-shot examples): 0, 1 or 2 blocks of the prefix cache and change
HEADS = ([], list(range(40, 60)), list(range(40, 77)))


def cases(vocab: int) -> st.SearchStrategy[Case]:
    token = st.integers(3, vocab - 1)
    params = st.builds(
        lambda temp, seed, mt, stop, pres, freq, bias: SamplingParams(
            max_tokens=mt, temperature=temp, seed=seed, stop=stop, presence_penalty=pres,
            frequency_penalty=freq, logit_bias=bias,
        ),
        temp=st.sampled_from([0.0, 0.0, 1.0, 0.7]),
        seed=st.integers(0, 2**31),
        mt=st.integers(1, 14),
        stop=st.one_of(st.none(), st.lists(token, min_size=1, max_size=3).map(tuple)),
        pres=st.sampled_from([0.0, 0.0, 0.5, -1.0]),
        freq=st.sampled_from([0.0, 0.0, 1.0]),
        bias=st.one_of(st.just(()), st.lists(st.tuples(token, st.sampled_from([-100.0, 5.0, 100.0])),
                                              max_size=2).map(tuple)),
    )
    return st.builds(
        Case,
        prompt=st.builds(lambda head, tail: HEADS[head] + tail, st.integers(0, 2),
                         st.lists(token, min_size=1, max_size=20)),
        n=st.integers(1, 3),
        params=params,
        adapter=st.sampled_from(ADAPTERS),
        arrive=st.integers(0, 6),
        drop_after=st.one_of(st.none(), st.none(), st.integers(0, 5)),
        constrain=st.one_of(st.none(), st.none(), st.integers(1, 6)),
        fail_at=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 3)),
    )


def _solo(engine: TorchEngine, case: Case) -> tuple[list[list[int]], bool]:
    """``(tokens per sample, whether a constraint failed)`` with the request alone on a fresh batch."""
    batch: DecodeBatch = engine.batch(rows=2, capacity=8)
    seqs = batch.add([case.request()])
    while batch.active:
        batch.step()
    return [s.tokens for s in sorted(seqs, key=lambda s: s.index)], any(s.error is not None for s in seqs)


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
@pytest.mark.parametrize("prefix_cache", [False, True], ids=["whole-prefill", "prefix-cache"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_batching_is_invisible(request: pytest.FixtureRequest, weights: str, prefix_cache: bool,
                               data: st.DataObject) -> None:
    """Batched (with or without prefix reuse) == alone on a fresh batch without a prefix cache."""
    engine: TorchEngine = request.getfixturevalue("engine" if weights == "float32" else "engine_bf16")
    traffic: list[Case] = data.draw(st.lists(cases(engine.vocab_size), min_size=1, max_size=8))
    batch: DecodeBatch = engine.batch(rows=2, capacity=8, prefix_cache=prefix_cache)
    seqs: dict[int, list] = {}
    step = 0
    pending = sorted(range(len(traffic)), key=lambda i: traffic[i].arrive)
    while pending or batch.active:
        due = [i for i in pending if traffic[i].arrive <= step]
        pending = [i for i in pending if i not in due]
        if due:
            for s in batch.add([traffic[i].request(key=i) for i in due]):
                seqs.setdefault(s.request.key, []).append(s)
        for i, case in enumerate(traffic):
            if case.drop_after is not None and i in seqs and step - case.arrive >= case.drop_after:
                batch.drop(seqs[i])
        if batch.active:
            batch.step()
        step += 1
    for i, case in enumerate(traffic):
        solo, solo_failed = _solo(engine, case)
        got = [s.tokens for s in sorted(seqs[i], key=lambda s: s.index)]
        failed = any(s.error is not None for s in seqs[i])
        dropped = any(s.stop_reason == "cancelled" for s in seqs[i])
        if failed or solo_failed:
            assert failed == solo_failed or dropped, f"request {i}: a constraint failed in one run only"
            continue
        if dropped:
            for g, s in zip(got, solo, strict=True):
                assert s[: len(g)] == g, f"request {i}: a dropped request's tokens are not a prefix of its solo answer"
        else:
            assert got == solo, f"request {i} ({case}) differs batched vs alone"
            assert all(s.stop_reason in ("stop", "length") for s in seqs[i])


def test_prefix_reuse_matches_a_whole_prefill(engine: TorchEngine) -> None:
    """A prompt whose head is cached gets the keys/values and logprobs of a whole prefill (float32 rounding)."""
    engine.prefix.clear()
    head = list(range(40, 90))  # 3 full blocks of 16
    params = SamplingParams(max_tokens=6, temperature=0.0, stop=())
    for adapter in (None, "a"):
        warm = engine.batch(prefix_cache=True)
        warm.add([SampleRequest(head + [7, 8], 1, params, adapter)])
        before = engine.prefix.stats()
        hit_batch, cold_batch = engine.batch(prefix_cache=True), engine.batch()
        prompt = head + [9, 10, 11]
        hit = hit_batch.add([SampleRequest(prompt, 2, params, adapter, top_logprobs=5)])
        cold = cold_batch.add([SampleRequest(prompt, 2, params, adapter, top_logprobs=5)])
        assert engine.prefix.stats().hits - before.hits == 48, "the 3 cached blocks were not reused"
        for layer in range(len(hit_batch.cache.k)):
            for row in range(2):
                torch.testing.assert_close(hit_batch.cache.k[layer][row, :, : len(prompt)],
                                           cold_batch.cache.k[layer][row, :, : len(prompt)], atol=1e-5, rtol=1e-4)
        while hit_batch.active or cold_batch.active:
            hit_batch.step()
            cold_batch.step()
        for h, c in zip(hit, cold, strict=True):
            assert h.tokens == c.tokens
            assert max(abs(a - b) for a, b in zip(h.logprobs, c.logprobs, strict=True)) < 1e-4
    # another adapter, or the same adapter after an update, never reuses these blocks
    before = engine.prefix.stats().hits
    engine.batch(prefix_cache=True).add([SampleRequest(head + [9], 1, params, "b")])
    assert engine.prefix.stats().hits == before
    with torch.no_grad():
        engine._adapters["a"].params[0].add_(0.01)
    engine.batch(prefix_cache=True).add([SampleRequest(head + [9], 1, params, "a")])
    assert engine.prefix.stats().hits == before


def test_prefix_cache_evicts_least_recently_used_and_keeps_heads() -> None:
    from teachloop.engine.prefix import PrefixCache

    block = torch.zeros(1, 2, 1, 4, 2)  # 64 bytes per block of 4 tokens
    cache = PrefixCache(block_size=4, max_bytes=64 * 3)
    kv = torch.arange(1 * 2 * 1 * 8 * 2, dtype=torch.float32).view(1, 2, 1, 8, 2)
    cache.insert("s", list(range(8)), kv)  # 2 blocks
    assert cache.stats().blocks == 2 and cache.stats().bytes == 2 * block.numel() * 4
    length, got = cache.lookup("s", list(range(8)) + [99], limit=8)
    assert length == 8 and got is not None and torch.equal(got, kv)
    assert cache.lookup("other scope", list(range(8)), limit=8) == (0, None)
    cache.insert("s", [50, 51, 52, 53, 54, 55, 56, 57], kv)  # 2 more: over the cap, one block evicted
    stats = cache.stats()
    assert stats.blocks == 3 and stats.evictions == 1
    # the lookup touched the first chain tail-first, so its tail was the least recently used: head kept
    assert cache.lookup("s", list(range(8)), limit=8)[0] == 4
    assert cache.lookup("s", [50, 51, 52, 53, 54, 55, 56, 57], limit=8)[0] == 8


def test_grown_cache_survives_retire(engine: TorchEngine) -> None:
    """The regression itself: rows finishing on different steps after the cache grew inside a step."""
    batch = engine.batch(rows=1, capacity=4)
    reqs = [SampleRequest(list(range(3, 3 + k)), 1, SamplingParams(max_tokens=m, temperature=0.0, stop=()))
            for k, m in ((2, 9), (6, 3), (1, 5))]
    seqs = batch.add(reqs)
    while batch.active:
        batch.step()
    assert [len(s.tokens) for s in seqs] == [9, 3, 5]
    assert batch.cache.n == 0


def test_a_failing_constraint_fails_only_its_request(engine: TorchEngine) -> None:
    batch = engine.batch()
    ok = SampleRequest([5, 6, 7], 2, SamplingParams(max_tokens=6, temperature=0.0, stop=()), key="ok")
    bad = SampleRequest([5, 6, 7], 1, SamplingParams(max_tokens=6, temperature=0.0, stop=()), key="bad",
                        constraint=lambda _i: EvenTokens(6, fail_at=2))
    seqs = batch.add([ok, bad])
    while batch.active:
        batch.step()
    by_key = {(s.request.key, s.index): s for s in seqs}
    bad_seq = by_key[("bad", 0)]
    assert isinstance(bad_seq.error, RuntimeError) and bad_seq.stop_reason == "stop"
    assert all(t % 2 == 0 for t in bad_seq.tokens[:2])  # constrained until it broke, then it left the batch
    assert len(bad_seq.tokens) == 3
    for i in range(2):
        assert by_key[("ok", i)].error is None and len(by_key[("ok", i)].tokens) == 6

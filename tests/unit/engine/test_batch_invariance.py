"""Batching is invisible: the property test of continuous batching on the real ``DecodeBatch``.

A tiny random-weight Llama (two LoRA adapters and the base) runs random traffic
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


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TorchEngine:
    model_dir: Path = tiny_llama(tmp_path_factory.mktemp("tiny-batch"), num_layers=2, hidden_size=64)
    eng = TorchEngine(model_dir, device="cpu")
    for k, name in enumerate(("a", "b")):
        eng.create_adapter(name, LoraSpec(rank=4, seed=k))
        gen = torch.Generator().manual_seed(10 + k)
        with torch.no_grad():
            for p in eng._adapters[name].params:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        eng.fw.refresh_adapters()
    return eng


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
        prompt=st.lists(token, min_size=1, max_size=20),
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_batching_is_invisible(engine: TorchEngine, data: st.DataObject) -> None:
    traffic: list[Case] = data.draw(st.lists(cases(engine.vocab_size), min_size=1, max_size=8))
    batch: DecodeBatch = engine.batch(rows=2, capacity=8)
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

"""The scheduler: continuous batching across adapters, limits, cancellation, failures; on the echo and tiny engines."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from teachloop.core.errors import InvalidInput, ModelError, ServiceUnavailable
from teachloop.core.sampling import SampledSequence, SamplingParams
from teachloop.serve import GenerationJob, Scheduler
from teachloop.serve.scheduler import TokenEvent
from tests.unit.serve.fakes import EchoEngine


class Collect:
    """A thread-safe TokenSink for tests."""

    def __init__(self) -> None:
        self.events: list[TokenEvent] = []
        self.results: list[SampledSequence] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def tokens(self, events: list[TokenEvent]) -> None:
        self.events.extend(events)

    def finish(self, results: list[SampledSequence]) -> None:
        self.results = results
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


def _job(engine: EchoEngine, text: str, *, n: int = 1, adapter: str | None = None, **params: Any) -> tuple[GenerationJob, Collect]:
    prompt = engine.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
    sink = Collect()
    return GenerationJob(list(prompt), n, SamplingParams(stop=(engine.eos,), **params), adapter, sink), sink


@pytest.fixture
def scheduler(engine: EchoEngine) -> Any:
    s = Scheduler(engine, max_rows=4, max_queue=2)
    s.start()
    yield s
    s.stop()


def test_a_request_joins_the_running_batch_between_steps(engine: EchoEngine, scheduler: Scheduler) -> None:
    engine.step_delay = 0.02
    engine.adapters["tl-a"] = "A "
    long_job, long_sink = _job(engine, "one two three four five six seven eight nine ten")
    scheduler.submit(long_job)
    time.sleep(0.1)  # the first request is decoding
    short_job, short_sink = _job(engine, "hi", adapter="tl-a")
    scheduler.submit(short_job)
    assert long_sink.done.wait(10) and short_sink.done.wait(10)
    assert long_sink.results and short_sink.results
    text = engine.decode(short_sink.results[0].tokens)
    assert text.startswith("A hi")
    # the late request was prefilled alone, then decoded in the same passes as the first, other adapter and all
    assert [len(p) for p in engine.prefills] == [1, 1]
    shared = [s for s in engine.steps if {k for k, _ in s} == {long_job, short_job}]
    assert shared and {a for _, a in shared[0]} == {None, "tl-a"}
    first_shared = engine.steps.index(shared[0])
    assert any(k is long_job for s in engine.steps[:first_shared] for k, _ in s)
    stats = scheduler.stats()
    assert stats.requests_completed == 2 and stats.tokens_total == sum(
        len(s.results[0].tokens) for s in (long_sink, short_sink) if s.results
    )


def test_events_carry_every_token_with_logprobs_and_top(engine: EchoEngine, scheduler: Scheduler) -> None:
    job, sink = _job(engine, "hello there", n=2)
    job.top_logprobs = 2
    scheduler.submit(job)
    assert sink.done.wait(10) and sink.results is not None
    for i in range(2):
        tokens = [t for idx, t, _, _ in sink.events if idx == i]
        assert tokens == sink.results[i].tokens
        assert all(top is not None and top[0][0] == t for idx, t, _, top in sink.events if idx == i)


def test_rows_are_capped_and_a_full_queue_is_refused(engine: EchoEngine, scheduler: Scheduler) -> None:
    engine.step_delay = 0.02
    with pytest.raises(InvalidInput) as err:
        scheduler.submit(_job(engine, "x", n=5)[0])
    assert err.value.param == "n"
    jobs = [_job(engine, "a b c d e f g h i j k l", n=2) for _ in range(4)]
    for job, _ in jobs[:2]:
        scheduler.submit(job)
    deadline = time.monotonic() + 5
    while scheduler.stats().active_rows < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert scheduler.stats().active_rows == 4  # two requests of two rows fill the batch
    for job, _ in jobs[2:]:
        scheduler.submit(job)  # they wait in the queue (max_queue=2)
    assert scheduler.stats().queued == 2
    with pytest.raises(ServiceUnavailable):
        scheduler.submit(_job(engine, "overflow")[0])
    for _, sink in jobs:
        assert sink.done.wait(10) and sink.error is None
    assert max(len(s) for s in engine.steps) <= 4
    assert scheduler.stats().requests_rejected >= 1


def test_cancelled_jobs_stop_and_leave_the_batch(engine: EchoEngine, scheduler: Scheduler) -> None:
    engine.step_delay = 0.02
    job, sink = _job(engine, " ".join(["word"] * 100))
    scheduler.submit(job)
    time.sleep(0.1)
    scheduler.cancel(job)
    deadline = time.monotonic() + 5
    while scheduler.stats().active_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.stats().active_rows == 0 and not sink.done.is_set()
    assert len(engine.steps) < 90  # it stopped long before its 100 words
    assert scheduler.stats().requests_cancelled == 1


def test_a_failed_step_fails_the_batch_and_the_scheduler_carries_on(engine: EchoEngine, scheduler: Scheduler) -> None:
    engine.step_delay = 0.01
    job, sink = _job(engine, "a b c d e f")
    engine.fail_next_step = True
    scheduler.submit(job)
    assert sink.done.wait(10) and isinstance(sink.error, ModelError)
    job, sink = _job(engine, "again")
    scheduler.submit(job)
    assert sink.done.wait(10) and sink.error is None
    assert scheduler.stats().requests_failed == 1


def test_stop_fails_waiting_jobs_and_refuses_new_ones(engine: EchoEngine) -> None:
    engine.step_delay = 0.05
    s = Scheduler(engine, max_rows=1)
    s.start()
    jobs = [_job(engine, "one two three four") for _ in range(3)]
    for job, _ in jobs:
        s.submit(job)
    s.stop()
    for _, sink in jobs:
        assert sink.done.wait(5)
    assert any(isinstance(sink.error, ServiceUnavailable) for _, sink in jobs)
    with pytest.raises(ServiceUnavailable):
        s.submit(_job(engine, "late")[0])


def test_async_sink_delivers_on_the_event_loop(engine: EchoEngine, scheduler: Scheduler) -> None:
    from teachloop.serve import AsyncSink

    async def run() -> list[str]:
        sink = AsyncSink()
        job, _ = _job(engine, "async hello")
        job.sink = sink
        scheduler.submit(job)
        kinds = []
        while True:
            kind, _payload = await asyncio.wait_for(sink.queue.get(), 10)
            kinds.append(kind)
            if kind == "done":
                return kinds

    kinds = asyncio.run(run())
    assert kinds[-1] == "done" and "tokens" in kinds


def test_on_the_tiny_llama_greedy_batches_equal_single_sampling(tmp_path: Path) -> None:
    """Real DecodeBatch: concurrent greedy requests (two adapters + base) match engine.sample one by one."""
    from teachloop.core.training import LoraSpec
    from teachloop.engine.torch_engine import TorchEngine
    from tests._tiny import tiny_llama

    engine = TorchEngine(tiny_llama(tmp_path), device="cpu")
    spec = LoraSpec(rank=4, seed=1)
    for name in ("a1", "a2"):
        engine.create_adapter(name, spec)
        with __import__("torch").no_grad():  # make the adapters differ from the base
            for p in engine._adapters[name].params:
                p.add_(0.05 * __import__("torch").randn_like(p))
    params = SamplingParams(max_tokens=12, temperature=0.0, stop=())
    prompts = [engine.tokenizer.encode(t) for t in ("Hello there", "What is 12 + 35?", "the of and")]
    adapters: list[str | None] = [None, "a1", "a2"]
    expected = [engine.sample([p], 1, params, adapter=a)[0][0].tokens for p, a in zip(prompts, adapters, strict=True)]
    scheduler = Scheduler(engine, max_rows=8)
    scheduler.start()
    try:
        sinks = []
        for p, a in zip(prompts, adapters, strict=True):
            sink = Collect()
            scheduler.submit(GenerationJob(list(p), 1, params, a, sink))
            sinks.append(sink)
        for sink in sinks:
            assert sink.done.wait(30) and sink.error is None
        assert [s.results[0].tokens for s in sinks if s.results] == expected
        assert len({tuple(e) for e in expected}) == 3  # the adapters really differ
    finally:
        scheduler.stop()

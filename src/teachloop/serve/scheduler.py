"""The serving scheduler: one thread per engine drives continuous batching.

``Scheduler(engine)`` owns the engine's ``DecodeBatch``. Requests (``GenerationJob``)
arrive from any thread through ``submit`` onto a bounded FIFO queue. The
scheduler thread loops: admit waiting jobs while their rows fit under
``max_rows`` (``batch.add`` prefills them together and samples their first
token), then ``batch.step()`` advances every active row by one token in one
forward pass, whatever adapter each row uses. Both happen inside
``engine.exclusive`` (on the engine's compute thread) one tick at a time, so
other engine users (a trainer) interleave between steps. Token events and
results are handed to each job's ``TokenSink`` once per tick, afterwards; ``AsyncSink`` turns
them into an ``asyncio.Queue`` on the request's event loop
(``loop.call_soon_threadsafe``).

Stop conditions (EOS, stop token ids, stop strings, ``max_tokens``) are the
engine's. A full queue is refused at once with ``ServiceUnavailable`` (503); a
job whose ``n`` exceeds ``max_rows`` is ``InvalidInput``. A cancelled job leaves
the queue, or, once running, has its rows dropped from the batch at the next
tick. A sequence that fails alone (its grammar constraint raised) fails only
its own job; if a forward pass raises, every job in the batch fails with that
error and the scheduler continues on a fresh batch.

This module knows nothing of chat messages, HTTP or storage: token ids in,
token ids and logprobs out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from teachloop.core.errors import InvalidInput, ModelError, ServiceUnavailable, TeachloopError
from teachloop.core.sampling import SampledSequence, SamplingParams, StopReason

if TYPE_CHECKING:
    from teachloop.engine.base import TokenConstraint
    from teachloop.engine.sampler import SampleRequest

log = logging.getLogger(__name__)

#: (sample index, token id, logprob, top logprobs as [(token id, logprob)] or None)
TokenEvent = tuple[int, int, float, list[tuple[int, float]] | None]
#: what an ``AsyncSink`` queue yields: ("tokens", [TokenEvent]), ("done", [SampledSequence]) or ("error", exc)
SinkEvent = tuple[Literal["tokens", "done", "error"], Any]


class SeqLike(Protocol):
    """One sequence of a running batch (``engine.sampler._Seq``)."""

    request: SampleRequest
    index: int
    tokens: list[int]
    top: list[list[tuple[int, float]]]
    max_tokens: int
    stop_reason: StopReason | None
    error: Exception | None

    def result(self) -> SampledSequence: ...


T = TypeVar("T")


class DecodeBatchLike(Protocol):
    """The continuous batch the scheduler drives (``engine.sampler.DecodeBatch``)."""

    @property
    def active(self) -> int: ...

    def validate(self, req: SampleRequest) -> None: ...

    def add(self, requests: Sequence[SampleRequest]) -> Sequence[SeqLike]: ...

    def step(self) -> Sequence[SeqLike]: ...

    def drop(self, seqs: Sequence[Any]) -> Sequence[SeqLike]: ...


class BatchingEngine(Protocol):
    """What serving needs from an engine: a batch to drive, its lock, and adapters (``TorchEngine``)."""

    @property
    def context_length(self) -> int: ...

    @property
    def eos_token_ids(self) -> list[int]: ...

    def batch(self) -> DecodeBatchLike: ...

    # ``batch(prefix_cache=True)`` too, when the scheduler is built with ``prefix_cache=True``

    def exclusive(self, fn: Callable[[], T]) -> T: ...

    def load_adapter(self, name: str, path: Path) -> Any: ...

    def delete_adapter(self, name: str) -> None: ...

    def has_adapter(self, name: str) -> bool: ...


class TokenSink(Protocol):
    """Receives one job's output; called from the scheduler thread, must not block."""

    def tokens(self, events: list[TokenEvent]) -> None: ...

    def finish(self, results: list[SampledSequence]) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class AsyncSink:
    """A ``TokenSink`` that forwards into ``self.queue`` on ``loop`` (create it on that loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.queue: asyncio.Queue[SinkEvent] = asyncio.Queue()

    def _put(self, item: SinkEvent) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def tokens(self, events: list[TokenEvent]) -> None:
        self._put(("tokens", events))

    def finish(self, results: list[SampledSequence]) -> None:
        self._put(("done", results))

    def fail(self, error: BaseException) -> None:
        self._put(("error", error))


@dataclass(eq=False)
class GenerationJob:
    """One request for ``n`` continuations of ``prompt``.

    Attributes:
        prompt: prompt token ids.
        n: continuations; they share the prompt's prefill and occupy ``n`` rows.
        params: sampling parameters (stop conditions included).
        adapter: the engine's adapter name, or None for the base model.
        sink: where tokens and results go.
        top_logprobs: also report the k most likely tokens at each step (0-20).
        constraint: builds the ``TokenConstraint`` of each sample (``constraint(index)``),
            or None for free decoding.
    """

    prompt: list[int]
    n: int
    params: SamplingParams
    adapter: str | None
    sink: TokenSink
    top_logprobs: int = 0
    constraint: Callable[[int], TokenConstraint] | None = None
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    _pending: list[tuple[int, int, float]] = field(default_factory=list, repr=False)
    _seqs: dict[int, SeqLike] = field(default_factory=dict, repr=False)
    _emitted: dict[int, int] = field(default_factory=dict, repr=False)
    _results: dict[int, SampledSequence] = field(default_factory=dict, repr=False)

    def _on_token(self, index: int, token: int, logprob: float) -> None:
        self._pending.append((index, token, logprob))


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot of the scheduler's load and throughput."""

    running: bool
    queued: int
    active_requests: int
    active_rows: int
    max_rows: int
    max_queue: int
    tokens_per_s: float
    tokens_total: int
    steps_total: int
    step_ms_mean: float
    prefills_total: int
    prefill_ms_mean: float
    engine_busy_s: float
    requests_completed: int
    requests_failed: int
    requests_rejected: int
    requests_cancelled: int


class Scheduler:
    """Continuous batching over one engine, in one thread (see the module docstring)."""

    def __init__(
        self,
        engine: BatchingEngine,
        *,
        max_rows: int = 32,
        max_queue: int = 256,
        rate_window_s: float = 10.0,
        name: str = "teachloop-scheduler",
        prefix_cache: bool = False,
    ) -> None:
        if max_rows < 1:
            raise InvalidInput("max_rows must be at least 1", param="max_rows")
        if max_queue < 0:
            raise InvalidInput("max_queue must be at least 0", param="max_queue")
        self.engine = engine
        #: batches reuse the engine's cached prompt prefixes (``engine.batch(prefix_cache=True)``)
        self.prefix_cache = prefix_cache
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.name = name
        self._cv = threading.Condition()
        self._queue: deque[GenerationJob] = deque()
        self._active: dict[GenerationJob, None] = {}
        self._batch: DecodeBatchLike | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._rate_window = rate_window_s
        self._ticks: deque[tuple[float, int]] = deque()
        self._counts = {"tokens": 0, "steps": 0, "prefills": 0, "completed": 0, "failed": 0, "rejected": 0,
                        "cancelled": 0}
        self._step_ms = 0.0
        self._prefill_ms = 0.0
        self._busy_s = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the scheduler thread (idempotent)."""
        with self._cv:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current tick; every queued or running job fails with ``ServiceUnavailable``."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        gone = ServiceUnavailable("the server is shutting down; retry on another replica")
        with self._cv:
            jobs = list(self._queue) + list(self._active)
            self._queue.clear()
            self._active.clear()
        for job in jobs:
            if not job.cancelled:
                job.sink.fail(gone)

    @property
    def batch(self) -> DecodeBatchLike | None:
        """The running batch (None before the first request or after a failed step); read it, never drive it."""
        return self._batch

    @property
    def running(self) -> bool:
        """Whether the scheduler thread is alive."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # ------------------------------------------------------------------ requests
    def submit(self, job: GenerationJob) -> None:
        """Queue ``job``; ``ServiceUnavailable`` when the queue is full or the scheduler is not running."""
        if job.n > self.max_rows:
            raise InvalidInput(f"n must be at most {self.max_rows} on this server, got {job.n}", param="n")
        with self._cv:
            if not self.running:
                raise ServiceUnavailable("the serving scheduler is not running")
            if len(self._queue) >= self.max_queue:
                self._counts["rejected"] += 1
                raise ServiceUnavailable(
                    f"the server is at capacity ({len(self._queue)} requests waiting); retry shortly"
                )
            self._queue.append(job)
            self._cv.notify()

    def cancel(self, job: GenerationJob) -> None:
        """Stop working on ``job`` (its sink gets nothing more)."""
        with self._cv:
            if job.cancelled or (job not in self._active and job not in self._queue):
                return  # finished, failed or never submitted: nothing to stop
            job.cancelled = True
            self._counts["cancelled"] += 1
            with suppress(ValueError):
                self._queue.remove(job)

    def stats(self) -> SchedulerStats:
        """Queue depth, active rows and throughput now."""
        now = time.monotonic()
        with self._cv:
            self._prune(now)
            tokens = sum(n for _, n in self._ticks)
            span = min(self._rate_window, now - self._ticks[0][0]) if self._ticks else 0.0
            batch = self._batch
            return SchedulerStats(
                running=self.running,
                queued=len(self._queue),
                active_requests=len(self._active),
                active_rows=batch.active if batch is not None else 0,
                max_rows=self.max_rows,
                max_queue=self.max_queue,
                tokens_per_s=tokens / span if span > 0 else 0.0,
                tokens_total=self._counts["tokens"],
                steps_total=self._counts["steps"],
                step_ms_mean=self._step_ms,
                prefills_total=self._counts["prefills"],
                prefill_ms_mean=self._prefill_ms,
                engine_busy_s=self._busy_s,
                requests_completed=self._counts["completed"],
                requests_failed=self._counts["failed"],
                requests_rejected=self._counts["rejected"],
                requests_cancelled=self._counts["cancelled"],
            )

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        from teachloop.engine.sampler import SampleRequest

        while True:
            with self._cv:
                while not self._stopping and not self._queue and not self._active:
                    self._cv.wait()
                if self._stopping:
                    return
                admitted = self._admit()
            try:
                finished = self._tick(admitted, SampleRequest)
            except BaseException as err:  # a failed forward: fail the batch, keep serving
                log.exception("decode step failed; failing %d running requests", len(self._active) + len(admitted))
                error = err if isinstance(err, TeachloopError) else ModelError(f"generation failed: {err}")
                with self._cv:
                    jobs = list(dict.fromkeys([*self._active, *admitted]))
                    self._active.clear()
                    self._batch = None
                    self._counts["failed"] += len(jobs)
                for job in jobs:
                    if not job.cancelled:
                        job.sink.fail(error)
                continue
            self._deliver(finished)

    def _admit(self) -> list[GenerationJob]:
        """Pop queued jobs (FIFO) while their rows fit; called with ``_cv`` held."""
        free = self.max_rows - (self._batch.active if self._batch is not None else 0)
        out: list[GenerationJob] = []
        while self._queue and self._queue[0].n <= free:
            job = self._queue.popleft()
            free -= job.n
            out.append(job)
        return out

    def _tick(self, admitted: list[GenerationJob], request_type: type[SampleRequest]) -> list[SeqLike]:
        """Stop cancelled rows, prefill ``admitted``, one decode step: on the engine's thread, exclusively."""
        return self.engine.exclusive(lambda: self._tick_exclusive(admitted, request_type))

    def _tick_exclusive(self, admitted: list[GenerationJob], request_type: type[SampleRequest]) -> list[SeqLike]:
        """The body of ``_tick``; runs with the engine to itself."""
        finished: list[SeqLike] = []
        if self._batch is None:
            self._batch = self.engine.batch(prefix_cache=True) if self.prefix_cache else self.engine.batch()  # type: ignore[call-arg]
        batch = self._batch
        for job in self._active:
            if job.cancelled:  # frees its rows now; nothing more reaches its sink
                finished.extend(batch.drop(list(job._seqs.values())))
        requests = []
        for job in admitted:
            req = request_type(
                job.prompt, job.n, job.params, job.adapter, top_logprobs=job.top_logprobs,
                on_token=job._on_token, key=job, constraint=job.constraint,
            )
            try:
                batch.validate(req)
            except TeachloopError as err:
                self._counts["failed"] += 1
                job.sink.fail(err)
                continue
            requests.append(req)
        if requests:
            for req in requests:
                self._active[req.key] = None
            t0 = time.perf_counter()
            for seq in batch.add(requests):
                seq.request.key._seqs[seq.index] = seq
                if seq.stop_reason is not None:
                    finished.append(seq)
            self._prefill_ms = self._timed("prefills", self._prefill_ms, t0)
        if batch.active:
            t0 = time.perf_counter()
            finished.extend(batch.step())
            self._step_ms = self._timed("steps", self._step_ms, t0)
        return finished

    def _timed(self, counter: str, mean_ms: float, t0: float) -> float:
        """Count one pass that began at ``t0``; returns the updated moving mean of its duration (ms)."""
        seconds = time.perf_counter() - t0
        self._busy_s += seconds
        self._counts[counter] += 1
        return seconds * 1000 if self._counts[counter] == 1 else 0.9 * mean_ms + 0.1 * seconds * 1000

    def _deliver(self, finished: list[SeqLike]) -> None:
        """Hand this tick's tokens, then finished results, to the sinks."""
        produced = 0
        for job in list(self._active):
            if not job._pending:
                continue
            pending, job._pending = job._pending, []
            produced += len(pending)
            if job.cancelled:
                continue
            events: list[TokenEvent] = []
            for index, token, logprob in pending:
                top = None
                if job.top_logprobs:
                    pos = job._emitted.get(index, 0)
                    job._emitted[index] = pos + 1
                    tops = job._seqs[index].top
                    top = tops[pos] if pos < len(tops) else None
                events.append((index, token, logprob, top))
            job.sink.tokens(events)
        done: list[GenerationJob] = []
        failed: dict[GenerationJob, Exception] = {}
        for seq in finished:
            job = seq.request.key
            if seq.error is not None and job not in failed:
                failed[job] = seq.error
            job._results[seq.index] = seq.result()
            if len(job._results) == job.n and job not in failed:
                done.append(job)
        for job in failed:
            job.cancelled = job.cancelled or len(job._results) < job.n  # its other rows are dropped next tick
        with self._cv:
            for job in done:
                self._active.pop(job, None)
            for job in failed:
                if len(job._results) == job.n:
                    self._active.pop(job, None)
            self._counts["failed"] += len(failed)
            self._counts["tokens"] += produced
            self._counts["completed"] += sum(1 for j in done if not j.cancelled)
            now = time.monotonic()
            self._ticks.append((now, produced))
            self._prune(now)
        for job, err in failed.items():
            error = err if isinstance(err, TeachloopError) else ModelError(f"generation failed: {err}")
            job.sink.fail(error)
        for job in done:
            if not job.cancelled:
                job.sink.finish([job._results[i] for i in range(job.n)])

    def _prune(self, now: float) -> None:
        while self._ticks and now - self._ticks[0][0] > self._rate_window:
            self._ticks.popleft()


__all__ = [
    "AsyncSink",
    "BatchingEngine",
    "DecodeBatchLike",
    "GenerationJob",
    "Scheduler",
    "SchedulerStats",
    "SeqLike",
    "SinkEvent",
    "TokenEvent",
    "TokenSink",
]

"""Trace capture: one writer thread, group commits, and an acknowledgement per trace.

``TraceWriter(database)`` owns a thread that takes trace rows (dicts of
``store.schema.Trace`` columns) from a queue and writes everything waiting in
one transaction: while one commit runs, the next batch gathers, so under load
many traces share a commit and an idle server commits each trace at once
(no timer). ``submit`` returns a ``concurrent.futures.Future`` the writer
resolves only after the transaction holding that row has committed; ``write``
awaits it from a coroutine. The HTTP layer answers a request only once its
trace's future resolved, so a crash (even SIGKILL) never loses the trace of an
answered call: committed means in the database file (SQLite WAL) or on the
server (PostgreSQL).

If a batch fails, its rows are retried one by one, so one bad row fails only
its own request. After ``close`` nothing more is accepted (``ServiceUnavailable``);
rows already queued are written first. This module knows nothing of HTTP or
engines; it writes rows it is given.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from teachloop.core.errors import ServiceUnavailable
from teachloop.store.db import Database
from teachloop.store.repos.traces import insert_trace_rows

log = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True)
class TraceWriterStats:
    """What the writer has done so far.

    ``wait_ms_*`` is the time from ``submit`` to the commit that made the row durable:
    exactly what capture adds to a request's latency, since the answer waits for it.
    """

    pending: int  # rows queued, not yet committed
    rows_written: int
    commits: int
    rows_per_commit: float
    commit_ms_mean: float  # mean duration of one group commit
    wait_ms_mean: float  # mean submit -> durable time per row
    wait_ms_max: float
    failures: int


def _columns(values: dict[str, Any]) -> dict[str, Any]:
    """The columns to insert: ``tools`` given as None is left out, so it stays SQL NULL (not JSON null)."""
    return {k: v for k, v in values.items() if v is not None or k not in ("tools",)}


class TraceWriter:
    """Batches trace inserts off the request path (see the module docstring)."""

    def __init__(self, database: Database, *, max_batch: int = 256, name: str = "teachloop-traces") -> None:
        self.database = database
        self.max_batch = max_batch
        self.name = name
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._rows = self._commits = self._failures = 0
        self._commit_ms_total = self._wait_ms_total = self._wait_ms_max = 0.0

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closed = False
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    def submit(self, values: dict[str, Any]) -> Future[None]:
        """Queue one trace row; the future resolves once it is committed (or fails with the write's error)."""
        future: Future[None] = Future()
        with self._lock:
            if self._closed or self._thread is None:
                raise ServiceUnavailable("trace capture is not running; the request was not answered")
            self._queue.put((values, future, time.perf_counter()))
        return future

    async def write(self, values: dict[str, Any]) -> None:
        """Queue one trace row and wait until it is committed."""
        await asyncio.wrap_future(self.submit(values))

    def stats(self) -> TraceWriterStats:
        """Rows and commits so far."""
        return TraceWriterStats(
            pending=self._queue.qsize(),
            rows_written=self._rows,
            commits=self._commits,
            rows_per_commit=self._rows / self._commits if self._commits else 0.0,
            commit_ms_mean=self._commit_ms_total / self._commits if self._commits else 0.0,
            wait_ms_mean=self._wait_ms_total / self._rows if self._rows else 0.0,
            wait_ms_max=self._wait_ms_max,
            failures=self._failures,
        )

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[tuple[dict[str, Any], Future[None], float]]) -> None:
        t0 = time.perf_counter()
        try:
            with self.database.connection() as conn:  # Core: no ORM session per commit
                insert_trace_rows(conn, [_columns(values) for values, _, _ in batch])
        except Exception as err:
            if len(batch) > 1:
                for one in batch:
                    self._write([one])
                return
            self._failures += 1
            log.error("could not store trace %s: %s", batch[0][0].get("id"), err)
            _settle(batch[0][1], err)
            return
        done = time.perf_counter()
        self._commit_ms_total += (done - t0) * 1000
        self._commits += 1
        self._rows += len(batch)
        for _, future, submitted in batch:
            wait_ms = (done - submitted) * 1000
            self._wait_ms_total += wait_ms
            self._wait_ms_max = max(self._wait_ms_max, wait_ms)
            _settle(future, None)


def _settle(future: Future[None], error: BaseException | None) -> None:
    if future.set_running_or_notify_cancel():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


__all__ = ["TraceWriter", "TraceWriterStats"]

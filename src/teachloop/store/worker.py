"""The worker: claims jobs from the queue, runs their handlers, records the outcome.

``Worker(db, handlers)`` claims only the kinds it has a handler for. While a
handler runs, a background thread renews the lease every ``lease_seconds / 3``;
if the worker process dies, the lease runs out and another worker takes the job
(the attempt counts). A handler returns a JSON-able dict (or None) as the job's
result. An exception is recorded on the job as ``{"type", "message"}`` and
retried with backoff -- except ``InvalidInput`` (bad payload), which fails the
job at once -- and never stops the worker; neither do database outages, which
are logged and waited out. ``KeyboardInterrupt``/``SystemExit`` are not caught:
the lease expires and the job is retried elsewhere.

This module knows nothing about what jobs do; handlers are plain callables the
caller registers (``cli/`` assembles them).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from teachloop.core.errors import Conflict, InvalidInput, TeachloopError
from teachloop.store.db import Database
from teachloop.store.queue import DEFAULT_LEASE_SECONDS, Job, JobQueue

log = logging.getLogger(__name__)

#: A job handler: takes the claimed job, returns its result (a JSON-able dict) or None.
Handler = Callable[[Job], "dict[str, Any] | None"]


def default_worker_id() -> str:
    """``<host>:<pid>:<random>``, unique per worker."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """Runs jobs of the registered kinds, one at a time."""

    def __init__(
        self,
        db: Database | JobQueue,
        handlers: Mapping[str, Handler],
        worker_id: str | None = None,
        poll_interval: float = 1.0,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        heartbeat_interval: float | None = None,
    ) -> None:
        if poll_interval <= 0 or lease_seconds <= 0:
            raise InvalidInput("poll_interval and lease_seconds must be positive", param="poll_interval")
        self.queue = db if isinstance(db, JobQueue) else JobQueue(db)
        self.handlers = dict(handlers)
        self.worker_id = worker_id or default_worker_id()
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = heartbeat_interval or lease_seconds / 3

    def run_once(self) -> Job | None:
        """Claim and run one job; return it as recorded afterwards, or None if none was runnable."""
        try:
            job = self.queue.claim(self.worker_id, self.handlers.keys(), self.lease_seconds)
        except TeachloopError as err:
            log.warning("worker %s cannot claim a job: %s", self.worker_id, err)
            return None
        if job is None:
            return None
        log.info("worker %s running %s %s (attempt %d)", self.worker_id, job.kind, job.id, job.attempts)
        stop = threading.Event()
        beats = threading.Thread(
            target=self._heartbeat, args=(job.id, stop), name=f"heartbeat-{job.id}", daemon=True
        )
        beats.start()
        error: Exception | None = None
        result: Any = None
        try:
            result = self.handlers[job.kind](job)
        except Exception as err:
            log.warning(
                "job %s (%s) failed: %s: %s", job.id, job.kind, type(err).__name__, err, exc_info=True
            )
            error = err
        finally:
            stop.set()
            beats.join()
        if error is None and result is not None and not isinstance(result, dict):
            error = InvalidInput(
                f"handler for {job.kind!r} returned {type(result).__name__}, not a dict or None"
            )
        return self._record(job, result, error)

    def _record(self, job: Job, result: dict[str, Any] | None, error: Exception | None) -> Job:
        """Complete or fail the job; if this worker no longer holds it, keep what is recorded."""
        try:
            if error is None:
                try:
                    return self.queue.complete(job.id, result, worker_id=self.worker_id)
                except InvalidInput as err:  # a result that is not JSON-serialisable
                    error = err
            retry = not isinstance(error, InvalidInput)
            return self.queue.fail(job.id, error, retry=retry, worker_id=self.worker_id)
        except Conflict as err:  # cancelled, or the lease expired and another worker took the job
            log.warning("job %s outcome discarded: %s", job.id, err)
            return self.queue.get(job.org_id, job.id)

    def _heartbeat(self, job_id: str, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            try:
                self.queue.heartbeat(job_id, self.worker_id, self.lease_seconds)
            except Conflict as err:
                log.warning("worker %s stops heartbeating %s: %s", self.worker_id, job_id, err)
                return
            except TeachloopError as err:  # database hiccup: try again at the next beat
                log.warning("heartbeat for %s failed: %s", job_id, err)

    def run_forever(self, stop_event: threading.Event) -> None:
        """Run jobs until ``stop_event`` is set, sleeping ``poll_interval`` when the queue is empty."""
        log.info("worker %s started for kinds %s", self.worker_id, sorted(self.handlers) or "(none)")
        while not stop_event.is_set():
            try:
                job = self.run_once()
            except Exception:  # never let one bad job or outage stop the worker
                log.exception("worker %s: unexpected error", self.worker_id)
                job = None
            if job is None:
                stop_event.wait(self.poll_interval)
        log.info("worker %s stopped", self.worker_id)


__all__ = ["Handler", "Worker", "default_worker_id"]

"""``ModelQueue``: one training model's requests, executed in ``seq_id`` order, once each.

The SDK numbers a training client's requests ``seq_id = 1, 2, 3, ...`` and may
deliver them out of order (the chunks of one ``forward_backward`` are sent
concurrently, the first chunk last) or twice (its retry loops re-send with a
fresh idempotency key). The queue runs request ``n`` only after ``n - 1`` has
finished, one at a time, so gradients of every chunk accumulate before the
``optim_step`` that follows them. A request whose ``seq_id`` was seen before
is not run again: ``submit`` hands back the first request's future. A
``seq_id`` of 0 (unset) means "after everything submitted so far".

Bad orderings are the client's error (``InvalidInput``): a ``seq_id`` already
executed but unknown, or one more than ``MAX_AHEAD`` past the next expected.
When the next expected request has not arrived ``gap_timeout`` seconds after a
later one was queued, the waiting requests fail (``user`` category, naming
the missing ``seq_id``) and the queue moves past them; the model's state is
unchanged by requests that never ran.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from teachloop.core.errors import InvalidInput
from teachloop.tinker.futures import Future, FutureStore, settle

#: How far past the next expected ``seq_id`` a request may be.
MAX_AHEAD = 4096
#: Seconds a gap in the sequence may stay open before the waiting requests fail.
GAP_TIMEOUT_S = 120.0

Work = Callable[[], dict[str, Any] | bytes]


class ModelQueue:
    """The ordered executor of one model (see the module docstring)."""

    def __init__(
        self, model_id: str, store: FutureStore, executor: Executor, *, next_seq: int = 1,
        gap_timeout: float = GAP_TIMEOUT_S,
    ) -> None:
        self.model_id = model_id
        self.store = store
        self.executor = executor
        self.gap_timeout = gap_timeout
        self._lock = threading.Lock()
        self._next = next_seq
        self._last = next_seq - 1  # highest seq_id submitted
        self._pending: dict[int, tuple[Future, Work]] = {}
        self._seen: dict[int, Future] = {}
        self._busy = False

    @property
    def next_seq(self) -> int:
        """The ``seq_id`` that runs next."""
        return self._next

    def submit(self, seq_id: int, fut: Future, work: Work) -> Future:
        """Queue ``work`` as request ``seq_id`` (``fut`` gets its outcome); the future to report to the client.

        A repeated ``seq_id`` returns the first request's future and queues nothing.
        """
        with self._lock:
            if seq_id == 0:
                seq_id = self._last + 1
            if seq_id in self._seen:
                return self._seen[seq_id]
            if seq_id < self._next:
                raise InvalidInput(
                    f"seq_id {seq_id} of model {self.model_id} is before the next expected ({self._next}) and was "
                    "never received; seq_ids count up from 1 per training client",
                    param="seq_id",
                )
            if seq_id > self._next + MAX_AHEAD:
                raise InvalidInput(
                    f"seq_id {seq_id} of model {self.model_id} skips ahead of the next expected ({self._next}) by "
                    f"more than {MAX_AHEAD}",
                    param="seq_id",
                )
            self._seen[seq_id] = fut
            self._pending[seq_id] = (fut, work)
            self._last = max(self._last, seq_id)
            waiting_for = self._next if seq_id != self._next else None
        if waiting_for is not None and self.gap_timeout > 0:
            timer = threading.Timer(self.gap_timeout, self._gap_expired, args=(waiting_for,))
            timer.daemon = True
            timer.start()
        self._drain()
        return fut

    def run_now(self, work: Callable[[], Any]) -> Any:
        """Consume the next ``seq_id`` for ``work`` run inline (used by create-from-state: the load is seq 0)."""
        with self._lock:
            self._next += 1
            self._last = max(self._last, self._next - 1)
        return work()

    def _drain(self) -> None:
        with self._lock:
            if self._busy or self._next not in self._pending:
                return
            self._busy = True
            fut, work = self._pending.pop(self._next)
        self.executor.submit(self._run, fut, work)

    def _run(self, fut: Future, work: Work) -> None:
        try:
            settle(self.store, fut, work)
        finally:
            with self._lock:
                self._busy = False
                self._next += 1
            self._drain()

    def _gap_expired(self, missing: int) -> None:
        with self._lock:
            if self._next != missing or self._busy or missing in self._pending or not self._pending:
                return
            failed = sorted(self._pending.items())
            self._pending.clear()
            self._next = self._last + 1
        for seq, (fut, _) in failed:
            self.store.fail(
                fut,
                f"seq_id {seq} of model {self.model_id} waited {self.gap_timeout:.0f} s for seq_id {missing}, which "
                "never arrived; the request was not run",
                "user",
            )


__all__ = ["GAP_TIMEOUT_S", "MAX_AHEAD", "ModelQueue"]

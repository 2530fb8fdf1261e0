"""Futures of the Tinker protocol: every mutating request answers a ``request_id`` at once.

``FutureStore`` keeps one ``Future`` per request id, scoped to the
organisation that made it. Work runs elsewhere (``ordering.ModelQueue``, the
service's executor) and ends with ``resolve`` (a result: a JSON-able dict or
protobuf bytes) or ``fail`` (a message and an ``ErrorCategory``). A caller
long-polls with ``wait`` (asyncio): it returns as soon as the future is done or
after ``timeout`` seconds (the route then answers ``try_again``; the SDK gives
up on a poll after 45 s, so keep it well below). Finished results stay
retrievable for ``retention`` seconds (default 15 minutes, the SDK retries for
up to 5) and are then dropped; ``cancel`` fails a pending future with
``user`` category. Thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from teachloop.core.errors import Conflict, Forbidden, InvalidInput, NotFound, TeachloopError, Unauthorized
from teachloop.core.tinker import ErrorCategory

logger = logging.getLogger(__name__)

#: How long a finished future stays retrievable, seconds.
RETENTION_S = 15 * 60


@dataclass
class Future:
    """One request's outcome.

    Attributes:
        request_id: its id.
        org_id: the organisation that made the request.
        kind: what it was (``forward_backward``, ``sample``, ...), for logs.
        result: the JSON result or the protobuf bytes, once resolved.
        error: the failure message, once failed.
        category: the failure's category.
        done_at: ``time.monotonic()`` when it finished.
    """

    request_id: str
    org_id: str
    kind: str
    result: dict[str, Any] | bytes | None = None
    error: str | None = None
    category: ErrorCategory = "unknown"
    done_at: float | None = None
    _callbacks: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def done(self) -> bool:
        """Whether it has a result or an error."""
        return self.done_at is not None


class FutureStore:
    """The futures of this server process."""

    def __init__(self, retention: float = RETENTION_S) -> None:
        self.retention = retention
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}

    def create(self, org_id: str, kind: str) -> Future:
        """A new pending future."""
        fut = Future(f"{kind}-{uuid.uuid4().hex}", org_id, kind)
        with self._lock:
            self._expire()
            self._futures[fut.request_id] = fut
        return fut

    def _expire(self) -> None:
        now = time.monotonic()
        stale = [k for k, f in self._futures.items() if f.done_at is not None and now - f.done_at > self.retention]
        for key in stale:
            del self._futures[key]

    def get(self, org_id: str, request_id: str) -> Future:
        """The future ``request_id`` of ``org_id``; ``NotFound`` for an unknown, expired or foreign id."""
        with self._lock:
            fut = self._futures.get(request_id)
        if fut is None or fut.org_id != org_id:
            raise NotFound(f"request {request_id!r} is unknown or its result has expired", param="request_id")
        return fut

    def _finish(self, fut: Future) -> None:
        with self._lock:
            if fut.done_at is not None:
                return
            fut.done_at = time.monotonic()
            callbacks, fut._callbacks = fut._callbacks, []
        for callback in callbacks:
            callback()

    def resolve(self, fut: Future, result: dict[str, Any] | bytes) -> None:
        """Finish ``fut`` with ``result`` (ignored if it already finished, e.g. cancelled)."""
        if fut.done:
            return
        fut.result = result
        self._finish(fut)

    def fail(self, fut: Future, message: str, category: ErrorCategory) -> None:
        """Finish ``fut`` as failed."""
        if fut.done:
            return
        fut.error, fut.category = message, category
        self._finish(fut)

    def cancel(self, org_id: str, request_id: str) -> bool:
        """Fail a pending future as cancelled; whether it was still pending."""
        fut = self.get(org_id, request_id)
        if fut.done:
            return False
        self.fail(fut, "the request was cancelled", "user")
        return True

    async def wait(self, fut: Future, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``fut``; whether it is done."""
        if fut.done:
            return True
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(event.set)

        with self._lock:
            if fut.done_at is None:
                fut._callbacks.append(wake)
        if fut.done:
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            with self._lock:
                if wake in fut._callbacks:
                    fut._callbacks.remove(wake)
        return fut.done


def category_of(err: BaseException) -> ErrorCategory:
    """``user`` for errors of the request (bad input, unknown or foreign ids, conflicts), else ``server``."""
    if isinstance(err, InvalidInput | NotFound | Conflict | Forbidden | Unauthorized):
        return "user"
    return "server"


def settle(store: FutureStore, fut: Future, work: Callable[[], dict[str, Any] | bytes]) -> None:
    """Run ``work`` and resolve ``fut`` with its result, or fail it with the error's message and category."""
    try:
        result = work()
    except TeachloopError as err:
        store.fail(fut, err.message, category_of(err))
    except Exception as err:  # a bug or a torch failure: reported to the client, which decides
        logger.exception("tinker request %s failed", fut.request_id)
        store.fail(fut, f"{type(err).__name__}: {err}", "server")
    else:
        store.resolve(fut, result)


__all__ = ["RETENTION_S", "Future", "FutureStore", "category_of", "settle"]

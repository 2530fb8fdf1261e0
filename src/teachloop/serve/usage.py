"""``Usage``: each organisation's chat completions on this server, counted apart.

``GET /api/serving/stats`` reports these figures to the caller's organisation
only. The scheduler's and trace writer's own figures (queue depth, active rows,
tokens/s, commits) are server-wide: any of them would let one organisation
watch another's traffic, so they stay inside the process (``Serving.scheduler``,
``Serving.traces``) for the operator and the benchmarks.

A request counts once it is accepted (queued on the scheduler): refused ones
(bad input, unknown model, full queue) count nowhere. It is ``in_flight`` until
its run is closed, then ``completed`` if it was answered in full (replies
recorded) or ``failed`` otherwise (the client left, generation or the trace
write failed). Tokens count when the replies are recorded; the rate is over
the last ``window_s`` seconds. Thread-safe; knows nothing of HTTP.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True)
class OrgUsage:
    """One organisation's figures since ``since``.

    Attributes:
        since: when this server started counting.
        in_flight: accepted requests not yet finished.
        completed: requests answered in full.
        failed: accepted requests that ended without a full answer.
        prompt_tokens: prompt tokens of the recorded requests.
        completion_tokens: tokens generated for the recorded requests.
        completion_tokens_per_s: generated tokens per second over the last ``window_s``.
        traces_written: traces committed.
        window_s: the rate's window.
    """

    since: datetime
    in_flight: int
    completed: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    completion_tokens_per_s: float
    traces_written: int
    window_s: float


@dataclass
class _Counters:
    in_flight: int = 0
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    traces_written: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)


class Usage:
    """Per-organisation counters (see the module docstring)."""

    def __init__(self, *, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.since = datetime.now(UTC)
        self._clock = clock
        self._lock = threading.Lock()
        self._orgs: dict[str, _Counters] = {}

    def _of(self, org_id: str) -> _Counters:
        counters = self._orgs.get(org_id)
        if counters is None:
            counters = self._orgs[org_id] = _Counters()
        return counters

    def _prune(self, counters: _Counters, now: float) -> None:
        while counters.recent and counters.recent[0][0] < now - self.window_s:
            counters.recent.popleft()

    def started(self, org_id: str) -> None:
        """A request of ``org_id`` was accepted."""
        with self._lock:
            self._of(org_id).in_flight += 1

    def finished(self, org_id: str, *, answered: bool) -> None:
        """A request of ``org_id`` ended (call once per ``started``)."""
        with self._lock:
            counters = self._of(org_id)
            counters.in_flight = max(0, counters.in_flight - 1)
            if answered:
                counters.completed += 1
            else:
                counters.failed += 1

    def tokens(self, org_id: str, prompt: int, completion: int) -> None:
        """The token counts of a request whose replies are complete."""
        now = self._clock()
        with self._lock:
            counters = self._of(org_id)
            counters.prompt_tokens += prompt
            counters.completion_tokens += completion
            counters.recent.append((now, completion))
            self._prune(counters, now)

    def traced(self, org_id: str) -> None:
        """A trace of ``org_id`` was committed."""
        with self._lock:
            self._of(org_id).traces_written += 1

    def of(self, org_id: str) -> OrgUsage:
        """The figures of ``org_id`` (zeros for an organisation that sent nothing)."""
        now = self._clock()
        with self._lock:
            counters = self._orgs.get(org_id) or _Counters()
            self._prune(counters, now)
            recent = sum(n for _, n in counters.recent)
            return OrgUsage(
                since=self.since, in_flight=counters.in_flight, completed=counters.completed, failed=counters.failed,
                prompt_tokens=counters.prompt_tokens, completion_tokens=counters.completion_tokens,
                completion_tokens_per_s=recent / self.window_s, traces_written=counters.traces_written,
                window_s=self.window_s,
            )


__all__ = ["OrgUsage", "Usage"]

"""Graders: turn one sample (a task and the conversation that answered it) into a ``Score``.

Contract:

- ``await grader.grade(sample)`` never raises (except on cancellation). An
  exception or a timeout inside the grader becomes ``Score.failed`` with kind
  ``"grader"`` and the error text, value 0; the caller's run goes on.
- A grader implements either ``score(sample) -> float | Score`` (sync) or
  ``ascore(sample)`` (async, e.g. an LLM judge). A sync ``score`` runs in a
  worker thread by default, so its ``timeout_s`` holds however slow it is and
  it never blocks other episodes; a grader that is provably fast may run on
  the event loop instead (``blocking = False``, or ``runs_inline(sample)``
  returning True, as the built-in text graders do for short replies).
- Graders compose with weights: ``0.8 * MathEquiv() + 0.2 * Regex(r"<think>")``
  is a ``Weighted`` grader whose value is the weighted mean of its parts and
  whose ``components`` keep each part's value by name.
- A ``GroupGrader`` scores all samples of a group at once (judges that rank).

Graders know nothing about rollouts, completers or the store. A blocking grader
runs in a daemon thread; one that times out cannot be killed, only abandoned
(it no longer blocks the caller or exit), so graders that can hang should
bound their own work too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.chat import Message
from teachloop.core.rl import Failure, FailureKind, ModelTurn, Task, Trajectory

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sample:
    """What a grader sees: the task, the whole conversation (prompt included) and, from the engine, token turns."""

    task: Task
    messages: tuple[Message, ...]
    turns: tuple[ModelTurn, ...] = ()

    @property
    def completion(self) -> str:
        """Text of the last assistant message ('' if none)."""
        for m in reversed(self.messages):
            if m.role == "assistant":
                return m.content
        return ""

    @classmethod
    def of(cls, task: Task, completion: str) -> Sample:
        """A single-turn sample: the task's prompt followed by one assistant reply."""
        return cls(task, (*task.prompt, Message(role="assistant", content=completion)))

    @classmethod
    def from_conversation(
        cls, messages: Sequence[Message], *, answer: str | None = None, info: dict[str, Any] | None = None,
        id: str = "conversation",
    ) -> Sample:
        """A sample of a logged conversation (e.g. product traffic): everything before the last
        assistant message is the task's prompt; ``answer``/``info`` are what graders compare against."""
        last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=len(messages))
        task = Task(id=id, prompt=tuple(messages[:last]), answer=answer, info=dict(info or {}))
        return cls(task, tuple(messages))

    @classmethod
    def from_trajectory(cls, task: Task, trajectory: Trajectory) -> Sample:
        """The sample a trajectory of ``task`` grades as."""
        return cls(task, trajectory.messages, trajectory.turns)


class Score(BaseModel):
    """A grade: a scalar value, its named components and, when grading failed, why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float = Field(description="The reward (0 when failed).")
    components: dict[str, float] = Field(default_factory=dict, description="Value of each named part.")
    failure: Failure | None = Field(default=None, description="Set when grading failed.")
    details: dict[str, Any] = Field(default_factory=dict, description="Extracted answer, judge reply, ...")

    @classmethod
    def failed(cls, message: str, *, kind: FailureKind = "grader", name: str | None = None) -> Score:
        """A failed grade with value 0 and the error stored."""
        return cls(value=0.0, components={name: 0.0} if name else {}, failure=Failure(kind=kind, message=message))


_LIMITS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
MAX_GRADER_THREADS = 32


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not future.done():
        future.set_result(value) if ok else future.set_exception(value)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking ``fn`` in a *daemon* thread (at most 32 at once per loop).

    Unlike ``asyncio.to_thread``, a call that never returns is abandoned when
    its awaiter times out: it does not hold up ``asyncio.run`` or interpreter exit.
    """
    loop = asyncio.get_running_loop()
    limit = _LIMITS.setdefault(loop, asyncio.Semaphore(MAX_GRADER_THREADS))
    async with limit:
        future: asyncio.Future[T] = loop.create_future()

        def target() -> None:
            ok, value = True, cast(Any, None)
            try:
                value = fn(*args, **kwargs)
            except BaseException as err:
                ok, value = False, err
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, future, ok, value)

        threading.Thread(target=target, daemon=True, name="teachloop-grader").start()
        return await future


def _coerce(out: float | Score | bool | None, name: str) -> Score:
    if isinstance(out, Score):
        score = out
    elif isinstance(out, bool | int | float):
        score = Score(value=float(out))
    else:
        return Score.failed(f"{name} returned {type(out).__name__}, expected a number", name=name)
    if not math.isfinite(score.value):
        return Score.failed(f"{name} returned a non-finite value {score.value}", name=name)
    if not score.components:
        score = score.model_copy(update={"components": {name: score.value}})
    return score


class Grader:
    """Base class of graders; see the module docstring for the contract.

    Attributes:
        name: the key of this grader's value in ``Score.components``.
        timeout_s: seconds a single grade may take; ``None`` for no limit.
        blocking: run ``score`` in a worker thread (the default); set False only for provably fast graders.
    """

    name: str = "grader"
    timeout_s: float | None = 30.0
    blocking: bool = True

    def score(self, sample: Sample) -> float | Score:
        """Grade ``sample`` synchronously; override this or ``ascore``."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score() nor ascore()")

    def runs_inline(self, sample: Sample) -> bool:
        """Whether ``score`` may run on the event loop for ``sample`` (only if provably fast); default: not ``blocking``."""
        return not self.blocking

    async def ascore(self, sample: Sample) -> float | Score:
        """Grade ``sample``; the default calls ``score`` in a worker thread (on the loop when ``runs_inline``)."""
        if self.runs_inline(sample):
            return self.score(sample)
        return await in_thread(self.score, sample)

    async def grade(self, sample: Sample) -> Score:
        """Grade ``sample``; failures and timeouts become ``Score.failed``, never exceptions."""
        try:
            async with asyncio.timeout(self.timeout_s):
                out = await self.ascore(sample)
        except TimeoutError:
            return Score.failed(f"grader {self.name!r} timed out after {self.timeout_s}s", name=self.name)
        except Exception as err:
            return Score.failed(f"grader {self.name!r} raised {type(err).__name__}: {err}", name=self.name)
        return _coerce(out, self.name)

    def __mul__(self, weight: float) -> Weighted:
        return Weighted([(self, float(weight))])

    __rmul__ = __mul__

    def __add__(self, other: Grader) -> Weighted:
        return Weighted([*_parts(self), *_parts(other)])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _parts(g: Grader) -> list[tuple[Grader, float]]:
    return list(g.parts) if isinstance(g, Weighted) and not g.name_given else [(g, 1.0)]


class Weighted(Grader):
    """A weighted combination of graders, graded concurrently.

    ``value = sum(w_i * v_i) / sum(w_i)`` when ``normalize`` (the default), the
    plain weighted sum otherwise. A part that fails counts 0, and the first
    failure is kept on the combined score, so a broken part is visible.
    """

    timeout_s = None  # each part has its own

    def __init__(self, parts: Sequence[tuple[Grader, float]], *, normalize: bool = True, name: str | None = None):
        if not parts:
            raise ValueError("Weighted needs at least one grader")
        self.parts = tuple(parts)
        self.normalize = normalize
        self.name_given = name is not None
        self.name = name or "weighted"
        self._keys = _unique([g.name for g, _ in self.parts])

    async def ascore(self, sample: Sample) -> Score:
        scores = await asyncio.gather(*(g.grade(sample) for g, _ in self.parts))
        total = sum(w * s.value for (_, w), s in zip(self.parts, scores, strict=True))
        weight = sum(w for _, w in self.parts)
        value = total / weight if self.normalize and weight else total
        components: dict[str, float] = {}
        for key, s in zip(self._keys, scores, strict=True):
            components[key] = s.value
        failure = next((s.failure for s in scores if s.failure is not None), None)
        details = {k: s.details for k, s in zip(self._keys, scores, strict=True) if s.details}
        return Score(value=value, components=components, failure=failure, details=details)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


class GroupGrader:
    """Scores all samples of one group together (a judge that ranks a group).

    Implement ``ascore_group``; ``grade_group`` never raises: a failure or a
    wrong number of scores fails every sample of the group with the error stored.
    """

    name: str = "group"
    timeout_s: float | None = 120.0

    async def ascore_group(self, samples: Sequence[Sample]) -> Sequence[float | Score]:
        """One value per sample, in order."""
        raise NotImplementedError

    async def grade_group(self, samples: Sequence[Sample]) -> list[Score]:
        """Grade ``samples``; never raises (see the class docstring)."""
        if not samples:
            return []
        try:
            async with asyncio.timeout(self.timeout_s):
                out = list(await self.ascore_group(samples))
        except TimeoutError:
            return [Score.failed(f"group grader {self.name!r} timed out after {self.timeout_s}s", name=self.name)] * len(samples)
        except Exception as err:
            msg = f"group grader {self.name!r} raised {type(err).__name__}: {err}"
            return [Score.failed(msg, name=self.name)] * len(samples)
        if len(out) != len(samples):
            msg = f"group grader {self.name!r} returned {len(out)} scores for {len(samples)} samples"
            return [Score.failed(msg, name=self.name)] * len(samples)
        return [_coerce(o, self.name) for o in out]


__all__ = ["Grader", "GroupGrader", "Sample", "Score", "Weighted", "in_thread"]

"""TRL reward functions, both ways: a teachloop grader for ``GRPOTrainer`` and a TRL function as a grader.

TRL calls ``reward_func(prompts=[...], completions=[...], completion_ids=[...],
**columns)`` with one entry per sample (``prompts``/``completions`` are strings,
or message lists in the conversational format) and every other dataset
column as an aligned list; it expects ``list[float | None]``.

- ``to_trl_reward(grader)`` returns such a function (sync, named after the
  grader, as TRL logs rewards by ``__name__``). Each sample becomes a
  ``Task`` whose answer is the ``answer_column`` and whose ``info`` holds the
  other columns. A failed grade returns ``on_failure`` (0.0 by default; ``None``
  makes TRL skip the sample).
- ``from_trl_reward(fn)`` wraps a TRL function as a ``Grader`` (one sample a
  call) that is also a ``GroupGrader`` (the whole group in one call). It
  passes the task's prompt, the completion, the last model turn's token ids
  when known, ``answer`` and the ``task.info`` fields as columns; a ``None``
  reward is recorded as a failed score.

TRL itself is never imported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from teachloop.core.chat import Message
from teachloop.core.rl import Task
from teachloop.envs.graders.base import Grader, GroupGrader, Sample, Score, in_thread

T = TypeVar("T")
TRLRewardFunc = Callable[..., list[float | None]]


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, even when an event loop is already running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _messages(value: Any, default_role: str) -> tuple[Message, ...]:
    if isinstance(value, str):
        return (Message(role=default_role, content=value),)  # type: ignore[arg-type]
    return tuple(Message(role=m["role"], content=str(m.get("content") or "")) for m in value)


def to_trl_reward(
    grader: Grader, *, answer_column: str = "answer", on_failure: float | None = 0.0, name: str | None = None
) -> TRLRewardFunc:
    """A TRL reward function that grades each completion with ``grader`` (see the module docstring)."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        columns.pop("completion_ids", None)
        for key in ("trainer_state", "log_extra", "log_metric", "environments"):
            columns.pop(key, None)
        samples = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            row = {k: v[i] for k, v in columns.items() if isinstance(v, list | tuple) and len(v) == len(prompts)}
            answer = row.pop(answer_column, None)
            task = Task(id=f"trl-{i}", prompt=_messages(prompt, "user"),
                        answer=None if answer is None else str(answer), info=row)
            samples.append(Sample(task, (*task.prompt, *_messages(completion, "assistant"))))

        async def grade_all() -> list[Score]:
            return list(await asyncio.gather(*(grader.grade(s) for s in samples)))

        return [on_failure if s.failure else s.value for s in _run_sync(grade_all())]

    reward.__name__ = reward.__qualname__ = name or grader.name
    return reward


class TRLReward(Grader, GroupGrader):
    """A TRL reward function as a teachloop grader and group grader (see the module docstring)."""

    def __init__(self, fn: TRLRewardFunc, *, name: str | None = None, conversational: bool = True,
                 timeout_s: float | None = 60.0):
        self.fn, self.conversational, self.timeout_s = fn, conversational, timeout_s
        self.name = name or str(getattr(fn, "__name__", "trl_reward"))
        params = inspect.signature(fn).parameters
        self._accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self._params = set(params)

    def _call_args(self, samples: Sequence[Sample]) -> dict[str, Any]:
        if self.conversational:
            prompts: list[Any] = [[m.to_openai() for m in s.task.prompt] for s in samples]
            completions: list[Any] = [[{"role": "assistant", "content": s.completion}] for s in samples]
        else:
            prompts = [next((m.content for m in reversed(s.task.prompt) if m.role == "user"), "") for s in samples]
            completions = [s.completion for s in samples]
        args: dict[str, Any] = {
            "prompts": prompts,
            "completions": completions,
            "completion_ids": [list(s.turns[-1].tokens) if s.turns else None for s in samples],
            "answer": [s.task.answer for s in samples],
        }
        for key in {k for s in samples for k in s.task.info}:
            args.setdefault(key, [s.task.info.get(key) for s in samples])
        return args if self._accepts_all else {k: v for k, v in args.items() if k in self._params}

    async def _call(self, samples: Sequence[Sample]) -> list[float | None]:
        args = self._call_args(samples)
        out = self.fn(**args) if inspect.iscoroutinefunction(self.fn) else await in_thread(self.fn, **args)
        if inspect.isawaitable(out):
            out = await out
        values = list(out)
        if len(values) != len(samples):
            raise ValueError(f"reward function {self.name!r} returned {len(values)} values for {len(samples)} samples")
        return values

    @staticmethod
    def _score(value: float | None, name: str) -> Score:
        if value is None:
            return Score.failed(f"reward function {name!r} returned None (not applicable)", name=name)
        return Score(value=float(value))

    async def ascore(self, sample: Sample) -> Score:
        [value] = await self._call([sample])
        return self._score(value, self.name)

    async def ascore_group(self, samples: Sequence[Sample]) -> list[Score]:
        return [self._score(v, self.name) for v in await self._call(samples)]


def from_trl_reward(fn: TRLRewardFunc, *, name: str | None = None, conversational: bool = True) -> TRLReward:
    """A grader (and group grader) calling the TRL reward function ``fn``."""
    return TRLReward(fn, name=name, conversational=conversational)


__all__ = ["TRLReward", "TRLRewardFunc", "from_trl_reward", "to_trl_reward"]

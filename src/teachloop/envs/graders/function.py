"""A plain Python function as a grader; arguments are injected by parameter name.

``FunctionGrader(fn)`` (or the ``@grader`` decorator) calls ``fn`` with the
parameters it names, from: ``completion`` (last assistant text), ``answer``
(the task's reference), ``task``, ``info`` (``task.info``), ``messages`` (the
whole conversation), ``prompt`` (the task's prompt messages) and ``sample``.
It returns a number, a bool or a ``Score``; sync functions run in a worker
thread under ``timeout_s``, async ones on the loop. Unknown parameter names
are rejected when the grader is built, not at the first sample.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, overload

from teachloop.envs.graders.base import Grader, Sample, Score, in_thread

INJECTABLE = ("completion", "answer", "task", "info", "messages", "prompt", "sample")


def _arguments(sample: Sample) -> dict[str, Any]:
    return {
        "completion": sample.completion,
        "answer": sample.task.answer,
        "task": sample.task,
        "info": sample.task.info,
        "messages": sample.messages,
        "prompt": sample.task.prompt,
        "sample": sample,
    }


class FunctionGrader(Grader):
    """Wraps ``fn(**injected) -> float | bool | Score`` as a grader (see the module docstring)."""

    blocking = True

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, timeout_s: float | None = 30.0):
        params = inspect.signature(fn).parameters
        unknown = [p for p, v in params.items() if p not in INJECTABLE and v.default is inspect.Parameter.empty
                   and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
        if unknown:
            raise ValueError(f"grader function {fn.__name__}: cannot inject {unknown}; use any of {list(INJECTABLE)}")
        self.fn = fn
        self.wants_all = any(v.kind is v.VAR_KEYWORD for v in params.values())
        self.wanted = [p for p in params if p in INJECTABLE]
        self.name = name or str(getattr(fn, "__name__", "function"))
        self.timeout_s = timeout_s
        self.is_async = inspect.iscoroutinefunction(fn)

    def _kwargs(self, sample: Sample) -> dict[str, Any]:
        args = _arguments(sample)
        return args if self.wants_all else {k: args[k] for k in self.wanted}

    def score(self, sample: Sample) -> float | Score:
        out: float | Score = self.fn(**self._kwargs(sample))
        return out

    async def ascore(self, sample: Sample) -> float | Score:
        if self.is_async:
            out: float | Score = await self.fn(**self._kwargs(sample))
            return out
        return await in_thread(self.score, sample)


@overload
def grader(fn: Callable[..., Any], *, name: str | None = None, timeout_s: float | None = 30.0) -> FunctionGrader: ...
@overload
def grader(
    fn: None = None, *, name: str | None = None, timeout_s: float | None = 30.0
) -> Callable[[Callable[..., Any]], FunctionGrader]: ...
def grader(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, timeout_s: float | None = 30.0
) -> FunctionGrader | Callable[[Callable[..., Any]], FunctionGrader]:
    """Decorator: ``@grader`` or ``@grader(name=..., timeout_s=...)`` turns a function into a ``FunctionGrader``."""
    if fn is None:
        return lambda f: FunctionGrader(f, name=name, timeout_s=timeout_s)
    return FunctionGrader(fn, name=name, timeout_s=timeout_s)


__all__ = ["INJECTABLE", "FunctionGrader", "grader"]

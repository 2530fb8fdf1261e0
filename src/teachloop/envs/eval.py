"""Evaluation: run N tasks of an environment against a completer; mean reward with a 95% interval.

``evaluate`` takes the first ``n`` tasks for ``seed``, runs ``group_size``
episodes of each (``rollout``), and reports the mean reward over all
episodes with a 95% confidence interval, plus every failure by task.

Interval method: Student-t on per-task mean rewards. Episodes of one task are
correlated, so the task is the independent unit: with k tasks whose mean
rewards have sample standard deviation s, the interval is
``mean ± t(0.975, k-1) · s / sqrt(k)``, clipped to the environment's reward
range (a t-interval is symmetric; rewards are bounded). With one task there is no interval
(``ci_low``/``ci_high`` are ``None``). Failed episodes count as reward 0 in
the mean (a failure is a bad outcome, not a missing one) and are listed in
``failures``. This module knows nothing of the store: the CLI stores reports.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.rl import ChatCompleter, TrajectoryGroup
from teachloop.core.sampling import SamplingParams
from teachloop.envs.base import Environment
from teachloop.envs.rollout import rollout

CI_METHOD = "95% student-t over per-task mean rewards (tasks are the independent units), clipped to the reward range"
# two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table to 30, Cornish-Fisher beyond)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= 30:
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci95(values: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a t-interval; low/high are ``None`` for fewer than two values."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


class TaskFailure(BaseModel):
    """Failures of one task's episodes, grouped by kind and message."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    kind: str
    message: str
    count: int


class EvalReport(BaseModel):
    """The outcome of an evaluation; JSON-able for storage."""

    model_config = ConfigDict(frozen=True)

    env: str = Field(description="What was evaluated (reference or name).")
    model: str = Field(default="", description="The model or endpoint evaluated.")
    seed: int
    n_tasks: int
    group_size: int
    n_episodes: int
    mean: float
    ci_low: float | None
    ci_high: float | None
    ci_method: str = CI_METHOD
    failure_counts: dict[str, int] = Field(default_factory=dict, description="Failed episodes by kind.")
    failures: list[TaskFailure] = Field(default_factory=list)
    task_means: dict[str, float] = Field(default_factory=dict, description="Mean reward per task id.")
    seconds: float = 0.0
    metadata: dict[str, Any] = Field(default_factory=dict, description="Env digest, sampling params, ...")


def report_from_groups(groups: list[TrajectoryGroup], *, env: str, model: str = "", seed: int = 0,
                       seconds: float = 0.0, metadata: dict[str, Any] | None = None,
                       reward_range: tuple[float, float] | None = None) -> EvalReport:
    """Summarise rollout groups into an ``EvalReport`` (the interval clipped to ``reward_range`` if given)."""
    if not groups:
        raise ValueError("no episodes to summarise")
    task_means = {g.task.id: statistics.fmean(g.rewards) for g in groups}
    mean, lo, hi = mean_ci95(list(task_means.values()))
    if reward_range is not None and lo is not None and hi is not None:
        lo, hi = max(lo, reward_range[0]), min(hi, reward_range[1])
    grouped: Counter[tuple[str, str, str]] = Counter()
    for g in groups:
        for t in g.trajectories:
            if t.failure is not None:
                grouped[(g.task.id, t.failure.kind, t.failure.message[:500])] += 1
    kinds: Counter[str] = Counter()
    for (_, kind, _), c in grouped.items():
        kinds[kind] += c
    return EvalReport(
        env=env, model=model, seed=seed, n_tasks=len(groups), group_size=len(groups[0].trajectories),
        n_episodes=sum(len(g.trajectories) for g in groups), mean=mean, ci_low=lo, ci_high=hi,
        failure_counts=dict(kinds), task_means=task_means, seconds=round(seconds, 3), metadata=metadata or {},
        failures=[TaskFailure(task_id=t, kind=k, message=m, count=c) for (t, k, m), c in sorted(grouped.items())],
    )


async def evaluate(
    env: Environment,
    completer: ChatCompleter,
    *,
    n: int = 100,
    group_size: int = 1,
    seed: int = 0,
    params: SamplingParams | None = None,
    timeout_s: float | None = 300.0,
    max_concurrent_groups: int = 16,
    label: str | None = None,
    model: str = "",
) -> EvalReport:
    """Run ``n`` tasks x ``group_size`` episodes and summarise them (see the module docstring)."""
    tasks = env.take(n, seed)
    if not tasks:
        raise ValueError(f"{env.name} yielded no tasks for seed {seed}")
    started = time.perf_counter()
    groups = await rollout(env, tasks, completer, group_size=group_size, params=params, timeout_s=timeout_s,
                           max_concurrent_groups=max_concurrent_groups)
    params = params or env.sampling
    return report_from_groups(groups, env=label or env.name, model=model, seed=seed,
                              seconds=time.perf_counter() - started, reward_range=env.reward_range,
                              metadata={"sampling": params.model_dump(mode="json")})


__all__ = ["CI_METHOD", "EvalReport", "TaskFailure", "evaluate", "mean_ci95", "report_from_groups", "t975"]

"""Dynamic sampling (``rl.extra_draws``): more draws while too few groups vary, then the groups that vary first.

``pick_groups`` is checked as a property over any rewards; the GRPO step with the
tiny engine and an environment whose even tasks always score alike: the extra
draws happen only while they are needed, the step trains on ``prompts_per_step``
groups preferring those that vary, its tasks are a pure function of the step,
and without extra draws the step is the one before the feature.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.catalog.envref import ResolvedEnv
from teachloop.core.rl import Task
from teachloop.core.sampling import SamplingParams
from teachloop.core.training import LoraSpec
from teachloop.envs import Environment, FunctionGrader, user
from teachloop.train.advantages import has_variance, pick_groups
from teachloop.train.config import OptimSection, RLSection
from teachloop.train.grpo import GRPO

groups_st = st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=2, max_size=4), max_size=12)


@given(groups=groups_st, n=st.integers(0, 8))
@settings(max_examples=300, deadline=None)
def test_pick_groups_prefers_the_groups_that_vary_and_keeps_the_batch_size(groups: list[list[float]],
                                                                           n: int) -> None:
    picked = pick_groups(groups, n)
    varied = [i for i, g in enumerate(groups) if has_variance(g)]
    assert picked == sorted(set(picked)) and all(0 <= i < len(groups) for i in picked)
    assert len(picked) == min(n, len(groups))
    if len(varied) >= n:
        assert picked == varied[:n]  # only groups that vary, the first ones drawn
    else:
        assert set(varied) <= set(picked)  # none that varies is left out for one that does not
        flat = [i for i in picked if i not in varied]
        assert flat == [i for i, g in enumerate(groups) if not has_variance(g)][:len(flat)]


def test_pick_groups_refuses_a_negative_size() -> None:
    with pytest.raises(ValueError, match="n must be"):
        pick_groups([[0.0, 1.0]], -1)


class _HalfFlat(Environment):
    """Even tasks score 1 whatever the reply (all-equal groups); odd ones 0, 1, 0, 1, ... per task (they vary)."""

    name = "half-flat"
    sampling: ClassVar[SamplingParams] = SamplingParams(max_tokens=6, temperature=1.0)  # type: ignore[misc]

    def __init__(self, tasks: int = 1000, flat: bool = True) -> None:
        self.n, self.flat, self.calls = tasks, flat, Counter[int]()
        self.grader = FunctionGrader(self._score, name="half")

    def _score(self, completion: str, messages: Any, info: dict[str, Any]) -> float:
        if info["flat"]:
            return 1.0
        self.calls[info["i"]] += 1
        return float(self.calls[info["i"]] % 2)

    def tasks(self, seed: int = 0) -> Any:
        for i in range(self.n):
            yield Task(id=f"t{seed}-{i}", prompt=(user(f"say {i}"),), answer="",
                       info={"flat": self.flat and i % 2 == 0, "i": i})


def _grpo(engine: Any, renderer: Any, extra: int, env: Environment | None = None) -> GRPO:
    env = env or _HalfFlat()
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    rl = RLSection(env="half-flat", prompts_per_step=4, group_size=4, max_tokens=6, extra_draws=extra)
    return GRPO(rl=rl, optim=OptimSection(lr=1e-3), total_steps=10, seed=3,
                env=ResolvedEnv(env, "half-flat", "half-flat", None, "sha256:0"), engine=engine,
                renderer=renderer, adapter="a")


def test_extra_draws_fill_the_step_with_groups_that_vary(engine: Any, renderer: Any) -> None:
    algo = _grpo(engine, renderer, extra=3)
    drawn: list[int] = []
    real = algo.tasks_for

    def recorded(step: int, draw: int = 0) -> list[Task]:
        drawn.append(draw)
        return real(step, draw)

    algo.tasks_for = recorded  # type: ignore[method-assign]
    m = asyncio.run(algo.step(0))
    # each draw of 4 tasks has 2 that vary: two draws give the 4 the step trains on, and a third is not taken
    assert m["draws"] == 2 and drawn == [0, 1]
    assert m["groups_sampled"] == 8 and m["groups"] == 4 and m["groups_dropped"] == 0
    assert m["reward_mean"] == 0.75  # over every group sampled: 4 flat groups at 1, 4 alternating 0/1
    # the tasks of a step's draws are a pure function of (step, draw), laid out in extra + 1 slots per step
    assert [t.id for t in real(1, 2)] == [f"t0-{i}" for i in range(24, 28)]
    assert [t.id for t in real(0, 0)] == ["t0-0", "t0-1", "t0-2", "t0-3"]
    assert algo.params_for(0, 1).seed != algo.params_for(0, 0).seed


def test_no_extra_draw_is_taken_when_the_first_has_enough(engine: Any, renderer: Any) -> None:
    m = asyncio.run(_grpo(engine, renderer, extra=2, env=_HalfFlat(flat=False)).step(0))
    assert m["draws"] == 1 and m["groups_sampled"] == 4 and m["groups_dropped"] == 0


def test_a_finite_stream_ends_the_extra_draws_not_the_step(engine: Any, renderer: Any) -> None:
    m = asyncio.run(_grpo(engine, renderer, extra=5, env=_HalfFlat(tasks=6)).step(0))
    assert m["draws"] == 2 and m["groups_sampled"] == 6  # 4 tasks, then the 2 left; 3 groups vary
    assert m["groups"] == 4 and m["groups_dropped"] == 1  # the 3 that vary and the first flat one


def test_without_extra_draws_the_step_is_the_one_before(engine: Any, renderer: Any) -> None:
    algo = _grpo(engine, renderer, extra=0)
    assert [t.id for t in algo.tasks_for(2)] == ["t0-8", "t0-9", "t0-10", "t0-11"]
    assert algo.params_for(2).seed == (3 * 1_000_003 + 2) % 2**31
    m = asyncio.run(algo.step(0))
    assert "draws" not in m and m["groups"] == 4 and m["groups_dropped"] == 2

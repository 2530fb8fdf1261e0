"""Failures stay on their trajectory: contract breaches by environments, slow sync graders, wrong tool arguments."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import pytest

from teachloop.core.chat import Message, ToolCall
from teachloop.core.rl import Task
from teachloop.envs import Arithmetic, GuessNumber, Sample, Score, ScriptedCompleter, rollout, rollout_group
from teachloop.envs.graders.base import Grader, GroupGrader
from teachloop.envs.graders.text import ExactMatch, Numeric, Regex


class _Multi(Arithmetic):
    max_turns = 2

    def __init__(self, reply: Any) -> None:
        super().__init__(1, size=2)
        self.reply = reply

    async def env_response(self, task: Task, messages: list[Message], state: dict[str, Any]) -> Any:
        return self.reply if len(messages) < 4 else None


@pytest.mark.parametrize("reply", ["not a list", [{"role": "user", "content": "dict"}], ["str"], 42])
def test_env_response_of_the_wrong_shape_fails_that_trajectory_only(reply: Any) -> None:
    env = _Multi(reply)
    group = asyncio.run(rollout_group(env, env.take(1)[0], ScriptedCompleter(["answer: 1"]), size=3))
    assert len(group.trajectories) == 3
    for t in group.trajectories:
        assert t.failure is not None and t.failure.kind == "env" and "env_response returned" in t.failure.message
        assert t.reward == 0.0 and all(isinstance(m, Message) for m in t.messages)


class _Scored(Arithmetic):
    def __init__(self, value: Any) -> None:
        super().__init__(1, size=4)
        self.value = value

    async def score(self, sample: Sample) -> Any:
        return self.value(sample) if callable(self.value) else self.value


@pytest.mark.parametrize(("value", "needle"), [
    (1.0, "returned float; expected a Score"), (float("nan"), "returned float"), (None, "returned NoneType"),
    (Score(value=float("nan")), "non-finite"), (Score(value=float("inf")), "non-finite"),
])
def test_a_score_override_breaking_the_contract_is_a_failure_not_a_crash(value: Any, needle: str) -> None:
    env = _Scored(value)
    groups = asyncio.run(rollout(env, env.take(2), ScriptedCompleter(["answer: 0"]), group_size=2))
    for t in (t for g in groups for t in g.trajectories):
        assert t.failure is not None and needle in t.failure.message and t.reward == 0.0 and math.isfinite(t.reward)


def test_an_error_while_building_the_trajectory_is_recorded_on_it() -> None:
    class BadComponents(Arithmetic):
        async def score(self, sample: Sample) -> Score:
            return Score.model_construct(value=1.0, components={"x": "not a float"}, failure=None, details={})

    env = BadComponents(1, size=2)
    group = asyncio.run(rollout_group(env, env.take(1)[0], ScriptedCompleter(["answer: 0"]), size=2))
    for t in group.trajectories:
        assert t.failure is not None and t.failure.kind == "env" and "building the trajectory" in t.failure.message


def test_a_broken_group_grader_or_completer_never_cancels_the_group() -> None:
    class Ranker(GroupGrader):
        async def ascore_group(self, samples: Any) -> list[float]:
            return [float("nan")] * len(samples)

    env = Arithmetic(1, size=1)
    env.group_grader = Ranker()
    group = asyncio.run(rollout_group(env, env.take(1)[0], ScriptedCompleter(["answer: 0"]), size=3))
    assert all(t.failure is not None and "non-finite" in t.failure.message for t in group.trajectories)

    class Junk:
        async def complete(self, *a: Any, **k: Any) -> list[Any]:
            return ["a bare string"]

    env = Arithmetic(1, size=1)
    group = asyncio.run(rollout_group(env, env.take(1)[0], Junk(), size=2))  # type: ignore[arg-type]
    assert all(t.failure is not None and t.failure.kind == "model" for t in group.trajectories)


class _Sleepy(Grader):
    name = "sleepy"
    timeout_s = 0.5

    def score(self, sample: Sample) -> float:
        if sample.task.id.endswith("-0"):
            time.sleep(3)  # a sync grader that hangs on one task
        return 1.0


def test_a_slow_sync_grader_times_out_without_blocking_other_episodes() -> None:
    env = Arithmetic(1, size=4)
    env.grader = _Sleepy()
    started = time.perf_counter()
    groups = asyncio.run(rollout(env, env.take(4), ScriptedCompleter(["answer: 1"]), group_size=2))
    took = time.perf_counter() - started
    assert took < 1.5, f"the hung grader blocked the loop ({took:.1f}s)"
    assert all(t.failure is not None and "timed out after 0.5s" in t.failure.message
               for t in groups[0].trajectories)
    assert all(t.failure is None and t.reward == 1.0 for g in groups[1:] for t in g.trajectories)


def test_only_short_replies_with_builtin_extractors_are_graded_on_the_loop() -> None:
    task = Arithmetic(1).take(1)[0]
    assert Numeric().runs_inline(Sample.of(task, "answer: 3"))
    assert not Numeric().runs_inline(Sample.of(task, "x" * 100_000))
    assert not ExactMatch(extract=lambda s: s).runs_inline(Sample.of(task, "3"))
    assert not Regex("a+").runs_inline(Sample.of(task, "3"))  # a pattern can backtrack: always a thread


def test_a_tool_argument_of_the_wrong_type_goes_back_to_the_model() -> None:
    env = GuessNumber(high=16, size=1)
    task = env.take(1)[0]
    calls = iter([
        Message(role="assistant", content="", tool_calls=(ToolCall(id="c1", name="guess",
                                                                   arguments=json.dumps({"number": "eight"})),)),
        Message(role="assistant", content="", tool_calls=(ToolCall(id="c2", name="guess",
                                                                   arguments=json.dumps({"number": True})),)),
        Message(role="assistant", content=f"answer: {task.answer}"),
    ])
    group = asyncio.run(rollout_group(env, task, ScriptedCompleter(lambda m: next(calls)), size=1))
    [t] = group.trajectories
    assert t.failure is None and t.reward > 0
    tool_replies = [m.content for m in t.messages if m.role == "tool"]
    assert tool_replies == ["error: argument 'number' must be an integer, got \"eight\"",
                            "error: argument 'number' must be an integer, got true"]

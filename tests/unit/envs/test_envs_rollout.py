"""Rollouts: single and multi-turn episodes, tools, token records, group scoring, failures as data."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from teachloop.core.chat import Message, ToolCall, ToolSpec
from teachloop.core.rl import Completion, Task
from teachloop.core.sampling import SamplingParams
from teachloop.envs import (
    Arithmetic,
    Environment,
    GroupGrader,
    Numeric,
    Sample,
    ScriptedCompleter,
    ToolError,
    rollout,
    rollout_group,
    run_episode,
    tool,
    user,
)
from teachloop.envs.graders import FunctionGrader


def arith_task() -> Task:
    return Arithmetic(level=2).take(1, seed=7)[0]


def test_single_turn_keeps_messages_tokens_and_reward() -> None:
    env, task = Arithmetic(level=2), arith_task()
    completer = ScriptedCompleter([f"{task.info['expression']} = {task.answer}"], with_turns=True)
    t = asyncio.run(run_episode(env, task, completer))
    assert t.failure is None and t.reward == 1.0
    assert t.task_id == task.id and t.task_hash == task.hash
    assert [m.role for m in t.messages] == ["system", "user", "assistant"]
    assert len(t.turns) == 1 and t.turns[0].tokens == tuple(t.completion.encode())
    assert t.scores == {"numeric": 1.0} and t.metadata["stop"] == "done"


def test_group_shares_the_first_turn_request_and_scores_each_episode() -> None:
    env, task = Arithmetic(level=2), arith_task()
    replies = iter([f"answer: {task.answer}", "answer: 0", f"answer: {task.answer}", "answer: -1"])
    completer = ScriptedCompleter(lambda _m: next(replies), with_turns=True)
    group = asyncio.run(rollout_group(env, task, completer, size=4))
    assert group.rewards == [1.0, 0.0, 1.0, 0.0]
    assert [c[1] for c in completer.calls] == [4]  # one request with n=4, prompt prefilled once
    assert all(len(t.turns) == 1 for t in group.trajectories)


class Echo(Environment):
    """A two-turn env: asks for a confirmation after the first reply, then ends."""

    name = "echo"
    max_turns = 4
    grader = Numeric()

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        yield Task(id="e", prompt=(user("say 5"),), answer="5")

    async def env_response(self, task: Task, messages: list[Message], state: dict[str, Any]) -> list[Message] | None:
        state["turns"] = state.get("turns", 0) + 1
        return [user("are you sure?")] if state["turns"] == 1 else None


def test_multi_turn_env_answers_each_model_turn_and_keeps_every_token_turn() -> None:
    completer = ScriptedCompleter(["6", "answer: 5"], with_turns=True)
    t = asyncio.run(run_episode(Echo(), Echo().take(1)[0], completer))
    assert [m.content for m in t.messages] == ["say 5", "6", "are you sure?", "answer: 5"]
    assert len(t.turns) == 2 and t.reward == 1.0 and t.metadata["model_turns"] == 2


def test_max_turns_stops_a_chatty_episode() -> None:
    class Chatty(Echo):
        async def env_response(self, task: Task, messages: list[Message], state: dict[str, Any]) -> list[Message]:
            return [user("more")]

    t = asyncio.run(run_episode(Chatty(), Chatty().take(1)[0], ScriptedCompleter(["answer: 5"])))
    assert t.metadata["stop"] == "max_turns" and t.metadata["model_turns"] == 4 and t.reward == 1.0


@tool
def lookup(key: str, state: dict[str, Any]) -> str:
    """Look a key up.

    Args:
        key: the key to look up.
    """
    state["lookups"] = state.get("lookups", 0) + 1
    if key == "bad":
        raise ToolError("no such key")
    if key == "crash":
        raise KeyError("bug in the tool")
    return {"x": "5"}.get(key, "?")


class Lookup(Echo):
    tools = (lookup,)
    max_turns = 8

    async def env_response(self, task: Task, messages: list[Message], state: dict[str, Any]) -> None:
        return None


def call(name: str, args: str, cid: str = "c1") -> Message:
    return Message(role="assistant", tool_calls=(ToolCall(id=cid, name=name, arguments=args),))


def test_tool_schema_comes_from_the_signature_and_hides_injected_parameters() -> None:
    assert lookup.spec == ToolSpec(
        name="lookup", description="Look a key up.",
        parameters={"type": "object", "properties": {"key": {"type": "string", "description": "the key to look up."}},
                    "required": ["key"]},
    )


def test_tools_run_in_the_environment_and_model_mistakes_go_back_to_the_model() -> None:
    script = [call("lookup", '{"key": "x"}'), call("lookup", "{not json", "c2"), call("nope", "{}", "c3"),
              call("lookup", '{"key": "bad"}', "c4"), call("lookup", '{"wrong": 1}', "c5"), "answer: 5"]
    completer = ScriptedCompleter(script)
    t = asyncio.run(run_episode(Lookup(), Lookup().take(1)[0], completer))
    tool_msgs = [m for m in t.messages if m.role == "tool"]
    assert tool_msgs[0].content == "5" and tool_msgs[0].tool_call_id == "c1"
    assert tool_msgs[1].content.startswith("error: arguments are not valid JSON")
    assert "unknown tool 'nope'" in tool_msgs[2].content
    assert tool_msgs[3].content == "error: no such key"
    assert tool_msgs[4].content.startswith("error:")
    assert t.failure is None and t.reward == 1.0 and t.metadata["tool_calls"] == 5
    assert completer.calls[0][2] == [lookup.spec]  # tools offered to the model


class Flaky(Environment):
    """Fails in a chosen place depending on the task id."""

    name = "flaky"
    max_turns = 2
    tools = (lookup,)

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        for kind in ("ok", "env", "tool", "grader", "model", "timeout"):
            yield Task(id=kind, prompt=(user(kind),), answer="5")

    def initial_state(self, task: Task) -> dict[str, Any]:
        if task.id == "env":
            raise RuntimeError("env setup broke")
        return {}

    async def score(self, sample: Sample) -> Any:
        if sample.task.id == "grader":
            return await FunctionGrader(lambda completion: 1 / 0, name="div").grade(sample)
        return await Numeric().grade(sample)


def flaky_script(messages: list[Message]) -> Any:
    first = messages[0].content
    if first == "tool" and len(messages) == 1:
        return call("lookup", '{"key": "crash"}')
    if first == "model":
        raise ConnectionError("engine went away")
    if first == "timeout":
        return Completion(message=Message(role="assistant", content="never"))
    return "answer: 5"


class SlowOnTimeout(ScriptedCompleter):
    async def complete(self, messages: list[Message], params: SamplingParams, *, n: int = 1,
                       tools: list[ToolSpec] | None = None) -> list[Completion]:
        if messages[0].content == "timeout":
            await asyncio.sleep(5)
        return await super().complete(messages, params, n=n, tools=tools)


def test_each_failure_kind_is_recorded_on_its_trajectory_only() -> None:
    env = Flaky()
    groups = asyncio.run(rollout(env, env.take(6), SlowOnTimeout(flaky_script), group_size=2, timeout_s=0.3))
    by_id = {g.task.id: g for g in groups}
    assert by_id["ok"].rewards == [1.0, 1.0]
    for kind, needle in [("env", "env setup broke"), ("tool", "KeyError"), ("grader", "ZeroDivisionError"),
                         ("model", "engine went away"), ("timeout", "0.3s")]:
        for t in by_id[kind].trajectories:
            assert t.failure is not None and t.failure.kind == kind.replace("grader", "grader"), (kind, t.failure)
            assert needle in t.failure.message and t.reward == 0.0
    assert by_id["grader"].trajectories[0].messages[-1].content == "answer: 5"  # messages kept


def test_one_failing_episode_does_not_cancel_its_group() -> None:
    env, task = Arithmetic(level=2), arith_task()
    count = {"n": 0}

    def script(_m: list[Message]) -> str:
        count["n"] += 1
        if count["n"] == 2:
            raise RuntimeError("one bad sample")
        return f"answer: {task.answer}"

    group = asyncio.run(rollout_group(env, task, ScriptedCompleter(script), size=3, share_first_turn=False))
    assert group.rewards == [1.0, 0.0, 1.0]
    assert sum(t.failure is not None for t in group.trajectories) == 1


class Ranker(GroupGrader):
    name = "ranker"

    async def ascore_group(self, samples: Any) -> list[float]:
        return [1.0 - i / len(samples) for i, _ in enumerate(samples)]


def test_group_grader_replaces_rewards_and_keeps_the_independent_score() -> None:
    env = Arithmetic(level=2)
    env.group_grader = Ranker()
    task = arith_task()
    group = asyncio.run(rollout_group(env, task, ScriptedCompleter([f"answer: {task.answer}"]), size=2))
    assert group.rewards == [1.0, 0.5]
    assert group.trajectories[1].scores == {"numeric": 1.0, "independent": 1.0, "ranker": 0.5}


def test_sampling_params_default_to_the_environment_and_can_be_overridden() -> None:
    env, task = Arithmetic(level=2), arith_task()
    seen: list[SamplingParams] = []

    class Spy(ScriptedCompleter):
        async def complete(self, messages: list[Message], params: SamplingParams, **kw: Any) -> list[Completion]:
            seen.append(params)
            return await super().complete(messages, params, **kw)

    asyncio.run(run_episode(env, task, Spy(["answer: 1"])))
    asyncio.run(run_episode(env, task, Spy(["answer: 1"]), params=SamplingParams(max_tokens=7)))
    assert seen[0] == env.sampling and seen[1].max_tokens == 7
    with pytest.raises(ValueError):
        asyncio.run(rollout_group(env, task, Spy(["x"]), size=0))


def test_trajectory_metadata_is_json_serialisable() -> None:
    env, task = Arithmetic(level=2), arith_task()
    t = asyncio.run(run_episode(env, task, ScriptedCompleter(["answer: 3"])))
    json.dumps(t.model_dump(mode="json"))

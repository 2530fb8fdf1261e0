"""Built-in environments: deterministic tasks, reference scores top, wrong answers zero, the games play."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from teachloop.core.chat import Message, ToolCall
from teachloop.envs import (
    BUILTINS,
    Arithmetic,
    Countdown,
    Environment,
    GuessNumber,
    JsonExtract,
    Sample,
    ScriptedCompleter,
)
from teachloop.envs.builtin.countdown import evaluate
from teachloop.envs.builtin.guess_number import CORRECT
from teachloop.envs.rollout import run_episode


def score(env: Environment, task: Any, text: str) -> float:
    s = asyncio.run(env.score(Sample.of(task, text)))
    assert s.failure is None, s.failure
    return s.value


def _build(name: str) -> Environment:
    """Each builtin with its defaults; ``traffic`` re-poses another environment's prompts, so it gets some."""
    if name != "traffic":
        return BUILTINS[name]()
    inner = BUILTINS["arithmetic"]()
    rows = [{"messages": [m.model_dump() for m in t.prompt], "answer": t.answer} for t in inner.take(12, seed=0)]
    return BUILTINS["traffic"](rows=rows, inner=inner)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_same_seed_same_tasks_other_seed_other_tasks(name: str) -> None:
    env = _build(name)
    a, b, c = env.take(6, seed=1), env.take(6, seed=1), env.take(6, seed=2)
    assert [t.hash for t in a] == [t.hash for t in b]
    assert [t.hash for t in a] != [t.hash for t in c]
    assert len({t.id for t in a}) == 6
    assert (type(env).__doc__ or "").strip()


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_reference_scores_top_and_nonsense_scores_zero(name: str) -> None:
    env = _build(name)
    for task in env.take(5, seed=3):
        assert score(env, task, env.reference(task) or "") == 1.0
        assert score(env, task, "I don't know") == 0.0


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_arithmetic_levels_are_correct_and_integer(level: int) -> None:
    for task in Arithmetic(level).take(20, seed=level):
        expr = task.info["expression"]
        assert re.fullmatch(r"[\d\s()+\-*/]+", expr)
        assert eval(expr) == int(task.answer or "x")  # the expression is built from digits and operators only


def test_arithmetic_options_and_bad_options() -> None:
    env = Arithmetic(digits=3, operators="*", terms=2, size=3)
    tasks = list(env.tasks())
    assert len(tasks) == 3 and all("*" in t.info["expression"] for t in tasks)
    with pytest.raises(ValueError):
        Arithmetic(operators="%")
    with pytest.raises(ValueError):
        Arithmetic(level=9)


def test_countdown_accepts_other_solutions_and_rejects_reused_numbers() -> None:
    env = Countdown()
    task = env.take(1, seed=5)[0]
    nums, target = task.info["numbers"], task.info["target"]
    assert evaluate(task.answer or "")[0] == target
    assert score(env, task, f"answer: {task.answer} = {target}") == 1.0
    reuse = " + ".join([str(nums[0])] * 2)
    assert score(env, task, f"answer: {reuse}") == 0.0
    assert score(env, task, "answer: __import__('os')") == 0.0


def test_json_extract_partial_credit_and_schema_violations() -> None:
    env = JsonExtract()
    task = env.take(1, seed=2)[0]
    rec = dict(task.info["expected"])
    assert score(env, task, f"Here you go:\n```json\n{json.dumps(rec)}\n```") == 1.0
    rec["age"] += 1
    assert score(env, task, json.dumps(rec)) == 0.75
    rec["extra"] = 1
    assert score(env, task, json.dumps(rec)) == 0.0


def binary_search(high: int, use_tool: bool) -> ScriptedCompleter:
    def script(messages: list[Message]) -> Any:
        lo, hi, last = 1, high, None
        for m in messages:
            if m.role == "assistant":
                last = int(json.loads(m.tool_calls[0].arguments)["number"]) if m.tool_calls else int(m.content.split(":")[1])
            elif m.role in ("tool", "user") and last is not None:
                if m.content.startswith("correct"):
                    return f"answer: {last}"
                lo, hi = (last + 1, hi) if m.content == "higher" else (lo, last - 1)
        guess = (lo + hi) // 2
        if use_tool:
            call = ToolCall(id=f"c{len(messages)}", name="guess", arguments=json.dumps({"number": guess}))
            return Message(role="assistant", tool_calls=(call,))
        return f"guess: {guess}"

    return ScriptedCompleter(script)


@pytest.mark.parametrize("use_tool", [True, False])
def test_guess_number_is_won_by_binary_search_with_the_tool_or_in_text(use_tool: bool) -> None:
    env = GuessNumber(high=100)
    for task in env.take(3, seed=4):
        t = asyncio.run(run_episode(env, task, binary_search(100, use_tool)))
        assert t.failure is None and t.reward == 1.0, t.messages
        assert t.completion == f"answer: {task.answer}"
        assert (t.metadata.get("tool_calls", 0) > 0) == use_tool


def test_guess_number_penalises_wasted_guesses_and_wrong_answers() -> None:
    env = GuessNumber(high=100, penalty=0.1)
    task = env.take(1)[0]
    secret = int(task.answer or 0)
    wasted = [Message(role="assistant", content=f"guess: {secret + 1}") for _ in range(env.bound + 2)]
    sample = Sample(task, (*task.prompt, *wasted, Message(role="assistant", content=f"answer: {secret}")))
    assert asyncio.run(env.score(sample)).value == pytest.approx(0.8)
    assert score(env, task, f"answer: {secret + 1}") == 0.0


def scan(after_correct: str) -> ScriptedCompleter:
    """Guesses 1, 2, 3, ... ignoring 'higher'/'lower'; after 'correct' replies ``after_correct`` (formatted)."""
    def script(messages: list[Message]) -> str:
        said = [m.content for m in messages if m.role == "assistant"]
        if messages[-1].content.startswith("correct"):
            return after_correct.format(last=said[-1].split(":")[1].strip(), next=len(said) + 1)
        return f"guess: {len(said) + 1}"

    return ScriptedCompleter(script)


def test_guess_number_ends_the_game_on_the_reply_after_correct() -> None:
    """1.2.0: walking past 'correct' ends the game there and loses; answering then wins (a scan: below 1)."""
    env = GuessNumber(high=10, tool=False)
    task = next(t for t in env.take(20, seed=1) if int(t.answer or 0) >= 3)
    secret = int(task.answer or 0)
    walked = asyncio.run(run_episode(env, task, scan("guess: {next}")))
    assert walked.metadata["model_turns"] == secret + 1 and walked.metadata["stop"] == "done"
    assert walked.reward == 0.0 and walked.completion == f"guess: {secret + 1}"
    told = [m.content for m in walked.messages if m.role == "user"][1:]  # after the opening request
    assert told == ["higher"] * (secret - 1) + [CORRECT] and str(secret) not in CORRECT  # restates, never tells
    won = asyncio.run(run_episode(env, task, scan("answer: {last}")))
    assert won.metadata["model_turns"] == secret + 1 and won.completion == f"answer: {secret}"
    assert won.reward == max(0.5, 1.0 - env.penalty * max(0, secret - env.bound)) > 0


def test_guess_number_with_the_tool_ends_the_game_on_the_turn_after_correct() -> None:
    """1.3.0: a tool call after 'correct' is that game's final reply: it does not run, and it is no answer."""
    env = GuessNumber(high=10)
    task = next(t for t in env.take(20, seed=1) if int(t.answer or 0) >= 3)
    secret = int(task.answer or 0)

    def keep_calling(messages: list[Message]) -> Message:
        said = sum(m.role == "assistant" for m in messages)
        call = ToolCall(id=f"c{said}", name="guess", arguments=json.dumps({"number": said + 1}))
        return Message(role="assistant", tool_calls=(call,))  # guesses 1, 2, 3, ... and never answers

    t = asyncio.run(run_episode(env, task, ScriptedCompleter(keep_calling)))
    assert t.metadata["stop"] == "done" and t.metadata["model_turns"] == secret + 1 < env.max_turns
    assert t.metadata["tool_calls"] == secret  # the call after 'correct' ran no tool
    assert [m.content for m in t.messages if m.role == "tool"][-1] == CORRECT and t.messages[-1].tool_calls
    assert t.reward == 0.0


def test_an_environment_that_says_done_ends_the_episode_before_tools_and_env_response() -> None:
    """``is_done`` is asked after every model turn; an error in it is the trajectory's env failure."""

    class Once(GuessNumber):
        def is_done(self, task: Any, messages: Any, state: dict[str, Any]) -> bool:
            if messages[-1].content == "boom":
                raise RuntimeError("is_done broke")
            return True

    env = Once(high=10, tool=False)
    task = env.take(1)[0]
    t = asyncio.run(run_episode(env, task, ScriptedCompleter([f"guess: {task.answer}"])))
    assert t.metadata == {**t.metadata, "stop": "done", "model_turns": 1} and len(t.messages) == len(task.prompt) + 1
    broken = asyncio.run(run_episode(env, task, ScriptedCompleter(["boom"])))
    assert broken.failure is not None and broken.failure.kind == "env" and "is_done broke" in broken.failure.message


def test_guess_number_a_final_guess_is_not_an_answer() -> None:
    """1.2.0: a game cut off at max_turns on a guess of the secret earns 0; 'answer: N' is what is graded."""
    env = GuessNumber(high=10, tool=False)
    task = env.take(1, seed=3)[0]
    secret = int(task.answer or 0)
    guesses = [Message(role="assistant", content=f"guess: {secret}")]
    assert asyncio.run(env.score(Sample(task, (*task.prompt, *guesses)))).value == 0.0
    assert score(env, task, f"guess: {secret}") == 0.0
    assert score(env, task, f"answer: {secret}") == 1.0


def test_guess_number_text_mode_offers_no_tool_and_is_won_in_text() -> None:
    env = GuessNumber(high=10, tool=False)
    assert env.tools == () and GuessNumber(high=10).tools != ()
    task = env.take(1, seed=2)[0]
    assert task.tools == () and "# Tools" not in task.prompt[0].content and "guess: 5" in task.prompt[0].content
    t = asyncio.run(run_episode(env, task, binary_search(10, use_tool=False)))
    assert t.failure is None and t.reward == 1.0 and "tool_calls" not in t.metadata
    with pytest.raises(ValueError, match="tool must be true or false"):
        GuessNumber(high=10, tool="false")  # type: ignore[arg-type]

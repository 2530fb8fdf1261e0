"""Adapters: reasoning-gym by URI, TRL reward functions both ways, verifiers v1 tasksets (when installed)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.rl import ModelTurn, Task
from teachloop.envs import (
    Numeric,
    ReasoningGym,
    Sample,
    ScriptedCompleter,
    from_trl_reward,
    load,
    rollout_group,
    to_trl_reward,
)

has_rg = importlib.util.find_spec("reasoning_gym") is not None
has_vf = importlib.util.find_spec("verifiers") is not None and importlib.util.find_spec("verifiers.v1") is not None


def score(env: Any, task: Task, text: str) -> float:
    s = asyncio.run(env.score(Sample.of(task, text)))
    assert s.failure is None, s.failure
    return float(s.value)


@pytest.mark.skipif(not has_rg, reason="reasoning-gym not installed")
def test_reasoning_gym_by_uri_scores_with_its_own_score_answer_after_extraction() -> None:
    env = load("rg:basic_arithmetic?seed=1&size=5")
    assert isinstance(env, ReasoningGym)
    tasks = env.take(10)
    assert len(tasks) == 5 and tasks[0].info["rg"]["index"] == 0
    assert [t.hash for t in tasks] == [t.hash for t in load("rg:basic_arithmetic?seed=1&size=5").take(5)]
    t = tasks[0]
    assert t.prompt[0].role == "system" and "<answer>" in t.prompt[0].content
    assert score(env, t, f"Let me compute... <answer>{t.answer}</answer>") == 1.0
    assert score(env, t, f"The result is:\nanswer: {t.answer}") == 1.0  # falls back to final_answer
    assert score(env, t, f" {t.answer} ") == 1.0  # extracted, so no substring partial credit games
    assert score(env, t, "<answer>7919</answer>") == 0.0


@pytest.mark.skipif(not has_rg, reason="reasoning-gym not installed")
def test_reasoning_gym_config_options_and_alternative_solutions() -> None:
    env = load("rg:countdown?size=3&min_numbers=3&max_numbers=3")
    t = env.take(1, seed=4)[0]
    nums = t.info["rg"]["config"]
    assert nums["min_numbers"] == 3 and nums["seed"] == 4
    assert score(env, t, f"<answer>{t.answer}</answer>") == 1.0
    env = load("rg:basic_arithmetic?size=2&operators=%2B,-")
    assert env.take(1)[0].answer is not None
    with pytest.raises(NotFound):
        load("rg:no_such_dataset")
    with pytest.raises(InvalidInput, match="no config field"):
        load("rg:basic_arithmetic?bogus=1")


def test_teachloop_grader_as_a_trl_reward_function() -> None:
    reward = to_trl_reward(Numeric())
    assert reward.__name__ == "numeric"
    out = reward(prompts=["What is 2+2?", "What is 3+3?", "x"], completions=["2+2=4", "answer: 7", "oops"],
                 answer=["4", "6", None], completion_ids=[[1], [2], [3]], trainer_state=object())
    assert out == [1.0, 0.0, 0.0]  # the third has no answer: a failed grade -> on_failure
    skip = to_trl_reward(Numeric(), on_failure=None)
    assert skip(prompts=["q"], completions=["1"], answer=[None]) == [None]
    conv = reward(prompts=[[{"role": "user", "content": "2+2?"}]],
                  completions=[[{"role": "assistant", "content": "4"}]], answer=[4])
    assert conv == [1.0]


def test_trl_reward_works_inside_a_running_event_loop() -> None:
    reward = to_trl_reward(Numeric())

    async def inside() -> list[float | None]:
        return reward(prompts=["q"], completions=["answer: 5"], answer=["5"])

    assert asyncio.run(inside()) == [1.0]


def test_trl_reward_function_as_a_grader_and_group_grader() -> None:
    seen: dict[str, Any] = {}

    def length_penalty(prompts: list[Any], completions: list[Any], completion_ids: list[Any], **kw: Any) -> list[float]:
        seen.update(prompts=prompts, kw=kw, ids=completion_ids)
        return [1.0 if c[0]["content"] == kw["answer"][i] else 0.0 for i, c in enumerate(completions)]

    g = from_trl_reward(length_penalty)
    task = Task(id="t", prompt=(Message(role="user", content="q"),), answer="yes", info={"topic": "x"})
    turn = ModelTurn(prompt_tokens=(1,), tokens=(5, 6), logprobs=(-1.0, -1.0), stop_reason="stop")
    s = asyncio.run(g.grade(Sample(task, (*task.prompt, Message(role="assistant", content="yes")), (turn,))))
    assert s.value == 1.0 and s.components == {"length_penalty": 1.0}
    assert seen["prompts"] == [[{"role": "user", "content": "q"}]]
    assert seen["kw"]["topic"] == ["x"] and seen["ids"] == [[5, 6]]
    group = asyncio.run(g.grade_group([Sample.of(task, "yes"), Sample.of(task, "no")]))
    assert [x.value for x in group] == [1.0, 0.0]

    def plain(prompts: list[str], completions: list[str]) -> list[float | None]:
        return [None for _ in completions]

    s = asyncio.run(from_trl_reward(plain, conversational=False).grade(Sample.of(task, "x")))
    assert s.failure is not None and "None" in s.failure.message


def test_trl_reward_function_drives_a_rollout_group() -> None:
    from teachloop.envs import Arithmetic

    def exact(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [float(c.strip().endswith(a)) for c, a in zip(completions, answer, strict=True)]

    env = Arithmetic()
    env.grader = from_trl_reward(exact, conversational=False)
    task = env.take(1)[0]
    group = asyncio.run(rollout_group(env, task, ScriptedCompleter([f"= {task.answer}", "= no"]), size=2,
                                     share_first_turn=False))
    assert group.rewards == [1.0, 0.0]


TASKSET = '''
import verifiers.v1 as vf

class ToyData(vf.TaskData):
    answer: str

class ToyTask(vf.Task[ToyData, vf.State, vf.TaskConfig]):
    @vf.reward(weight=1.0)
    async def correct(self, task, trace) -> float:
        return float(trace.last_reply.strip() == task.answer)

    @vf.reward(weight=0.5)
    async def short(self, task, trace) -> float:
        return float(len(trace.last_reply) < 5)

class ToyTaskset(vf.Taskset[ToyTask, vf.TasksetConfig]):
    def load(self):
        for i in range(4):
            yield ToyTask(ToyData(prompt=f"What is {i} + {i}?", answer=str(2 * i), system_prompt="Be brief."),
                          self.config.task)

__all__ = ["ToyTaskset"]
'''


@pytest.mark.skipif(not has_vf, reason="the verifiers extra is not installed")
def test_verifiers_v1_taskset_scored_by_its_own_rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "toy_vf_taskset"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(TASKSET))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = load("vf:toy-vf-taskset")
    tasks = env.take(10)
    assert len(tasks) == 4 and [m.role for m in tasks[1].prompt] == ["system", "user"]
    assert tasks[1].answer == "2" and tasks[1].prompt[1].content == "What is 1 + 1?"
    s = asyncio.run(env.score(Sample.of(tasks[1], "2")))
    assert s.failure is None and s.value == pytest.approx(1.5) and s.components == {"correct": 1.0, "short": 1.0}
    assert asyncio.run(env.score(Sample.of(tasks[1], "three and more"))).value == 0.0
    assert [t.hash for t in env.take(4, seed=3)] == [t.hash for t in env.take(4, seed=3)]
    sys.modules.pop("toy_vf_taskset", None)


@pytest.mark.skipif(has_vf, reason="verifiers is installed")
def test_verifiers_missing_extra_is_a_clear_error() -> None:
    from teachloop.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="teachloop\\[verifiers\\]"):
        load("vf:anything")

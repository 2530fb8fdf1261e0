"""The reward-hack alarm reaches loop candidates (issue 16): a GRPO run of the loop evaluates held-out tasks
(``algorithm.eval_tasks``, from the first gate environment), so a candidate that games the grader -- training
reward up, held-out reward down -- raises the alarm, its iteration fails saying so, and nothing is published,
canaried or promoted. Without the held-out evaluation (``eval_tasks = 0``) the same run raises nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from teachloop.loop import LoopRunner, configure_loop, history
from teachloop.render import Renderer
from teachloop.store.repos.deployments import AdapterVersions, Deployments
from teachloop.train.runs import RunStore
from tests.unit.loop.conftest import DEPLOYMENT, Store, add_trace, deps_for, grpo_config
from tests.unit.loop.fakes import GamingEngine

TRAIN = {"steps": 10, "lora": {"rank": 4}, "eval": {"every": 2},
         "rl": {"prompts_per_step": 2, "group_size": 2, "max_tokens": 32}}


@pytest.fixture
def envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch tests' gameable environment ``padded`` and its honest twin ``in_words``, installed (entry points):
    a loop config may not name module:attr."""
    dist = tmp_path / "site" / "teachloop_test_padded-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: teachloop-test-padded\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[teachloop.environments]\npadded = tests.unit.train.conftest:Padded\n"
                                           "in_words = tests.unit.train.conftest:InWords\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def _loop(store: Store, renderer: Renderer, **algorithm: Any) -> tuple[Any, GamingEngine]:
    raw = grpo_config(sources=[{"kind": "grader", "env": "padded", "lookup_tasks": 50}],
                      algorithm={"kind": "grpo", "train": TRAIN, **algorithm},
                      gate={"max_tokens": 32, "environments": [{"env": "in_words", "tasks": 8}]})
    configure_loop(store.db, store.blobs, store.org_id, raw, cache=store.cache)
    for i in range(20):  # users ask the environment's questions (found by lookup), the base answers in words
        add_trace(store, f"Answer in one word {i % 7}", "seven", system=None)
    engine = GamingEngine(renderer)
    result = asyncio.run(LoopRunner(deps_for(store, engine, renderer), DEPLOYMENT).tick())
    assert result.iteration == 1, result
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    return it, engine


def test_a_candidate_whose_run_raised_the_alarm_is_never_promoted(store: Store, renderer: Renderer,
                                                                   envs: None) -> None:
    it, _ = _loop(store, renderer)
    assert it["status"] == "failed" and "RewardHackDetected" in it["reason"] and "reward-hack alarm" in it["reason"]
    assert not it["gate"] and it["candidate"] is None  # never gated nor published
    run = RunStore(store.db, store.blobs).get(store.org_id, it["run"]["id"])
    assert run.alarm is not None and run.stop_reason == "reward_hack_alarm" and run.step < 10
    assert run.alarm.heldout_after < run.alarm.heldout_before
    with store.db.session(write=False) as s:
        dep = Deployments(s).get(store.org_id, DEPLOYMENT)
        assert (dep.revision, dep.adapter_version_id, dep.canary_version_id) == (1, None, None)
        assert AdapterVersions(s).list(store.org_id) == []


def test_without_held_out_evaluation_the_same_run_raises_nothing(store: Store, renderer: Renderer,
                                                                  envs: None) -> None:
    it, _ = _loop(store, renderer, eval_tasks=0)
    run = RunStore(store.db, store.blobs).get(store.org_id, it["run"]["id"])
    assert run.alarm is None and run.step == 10  # the alarm had nothing to compare: the eval is what makes it fire
    assert it["status"] == "rejected" and it["gate"] is not None  # only the gate stands in its way here

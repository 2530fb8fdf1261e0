"""Authored tasks published as an environment version: every publish-time check passes, ``NAME@VERSION``
resolves through the hub, its reward works in an evaluation with a scripted completer, and the package
names the experts who wrote each task."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachloop.catalog.envref import resolve_env
from teachloop.cli.main import app
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.work import EnvPublish, ReviewBody, SubmitBody
from teachloop.envs import ScriptedCompleter, evaluate
from teachloop.store import BlobStore, Database
from teachloop.work import review, tasks
from teachloop.work.publish import LINEAGE_FILE, publish_environment, readable
from tests.unit.work.conftest import Org, make_project


def _author(db: Database, org: Org, user: str, project: str, value: dict, decision: str = "accept") -> str:
    with db.session() as s:
        lease = tasks.next_task(s, org.id, user, project)
        assert lease is not None
        answer = tasks.submit(s, org.id, user, lease.id, SubmitBody(value=value))
        review.review(s, org.id, answer.id, org.reviewer,
                      ReviewBody(decision=decision, reason="off topic" if decision == "reject" else ""), member=True)
        return answer.id


def _authored(db: Database, org: Org) -> str:
    p = make_project(db, org.id, "authoring", name="Arith", items=[{}, {}, {}, {}], quorum=1)
    six = {"prompt": "What is 3+3?", "answer": "6", "rubric": ["gives the number 6"]}
    _author(db, org, org.experts[0], p, six)
    _author(db, org, org.experts[1], p, {"prompt": "The capital of France?", "answer": "Paris", "rubric": []})
    _author(db, org, org.experts[2], p, {**six, "answer": "6 "})  # the same task again: both authors credited
    _author(db, org, org.experts[3], p, {"prompt": "x", "answer": "y", "rubric": []}, decision="reject")
    return p


def test_authored_tasks_publish_resolve_and_reward(db: Database, blobs: BlobStore, org: Org, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    p = _authored(db, org)
    out = asyncio.run(publish_environment(db, blobs, org.id, p, actor="owner"))
    assert (out.environment, out.created, out.tasks, out.skipped) == ("arith-tasks@1.0.0", True, 2, 1)
    assert out.contributors == {f"expert:{e}": 1 for e in org.experts[:3]}
    assert {"imports_offline", "reference_top_score", "adversarial", "concurrent_episodes"} <= set(out.checks)
    with db.session(write=False) as s:
        resolved = resolve_env(out.environment, trusted=False, session=s, blobs=blobs, org_id=org.id,
                               cache=tmp_path / "cache")
    assert (resolved.version, resolved.digest) == ("1.0.0", out.digest)
    env = resolved.env

    def reply(messages):  # type: ignore[no-untyped-def]
        return "Easy: <answer>six</answer>" if "3+3" in messages[-1].content else "answer: paris"

    report = asyncio.run(evaluate(env, ScriptedCompleter(reply), n=10, timeout_s=30))
    assert report.n_tasks == 2 and report.mean == pytest.approx(0.5), report
    assert report.task_means == {"task-1": 0.0, "task-2": 1.0}  # "six" is not 6; "paris" is Paris
    lineage = json.loads((Path(inspect.getfile(type(env))).parents[2] / LINEAGE_FILE).read_text())
    by_task = {t["task"]: t for t in lineage["tasks"]}
    assert lineage["project"] == p and lineage["contributors"] == out.contributors
    assert sorted(by_task["task-1"]["experts"]) == sorted([org.experts[0], org.experts[2]]) and len(by_task["task-1"]["answers"]) == 2
    # unchanged tasks published again (from the terminal): the same version, nothing stored
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", str(db.engine.url))
    monkeypatch.setenv("TEACHLOOP_BLOB_URL", str(tmp_path / "blobs"))
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(app, ["work", "publish", "Arith", "--org", "acme"])
    assert r.exit_code == 0 and "arith-tasks@1.0.0 (unchanged, already published): 2 tasks by 3 experts" in r.output, \
        r.output


def test_publishing_refuses_what_it_cannot_publish(db: Database, blobs: BlobStore, org: Org) -> None:
    demo = make_project(db, org.id, "demonstration", items=[{"prompt": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(InvalidInput) as wrong_type:
        asyncio.run(publish_environment(db, blobs, org.id, demo))
    assert wrong_type.value.param == "project"
    empty = make_project(db, org.id, "authoring", name="empty", items=[{}])
    with pytest.raises(NotFound, match="no accepted authored task"):
        asyncio.run(publish_environment(db, blobs, org.id, empty))
    with pytest.raises(NotFound):  # another organisation's project is a missing one
        asyncio.run(publish_environment(db, blobs, org.other_org, empty))
    with pytest.raises(InvalidInput):
        asyncio.run(publish_environment(db, blobs, org.id, empty, EnvPublish(version="one")))
    assert not readable("<answer>6</answer>") and readable("6") and not readable("  ")

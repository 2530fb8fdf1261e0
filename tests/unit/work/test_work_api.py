"""``/api/work`` over REST in process: one task of each kind from lease to pay, and the issue's bad-input list --
each refused with a precise 4xx, nothing written, nothing paid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from teachloop.app import AppDeps, create_app
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.store import ApiKeys, BlobStore, Database
from teachloop.store.schema import Base, LedgerEntry
from tests.unit.work.conftest import PROMPT, Org, pair_item


@pytest.fixture
def client(db: Database, blobs: BlobStore, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path / "home", model_cache=tmp_path / "models", database_url="sqlite://",
                        blob_url=str(tmp_path / "blobs"), max_body_bytes=256 * 1024)
    with TestClient(create_app(AppDeps(settings, db, blobs))) as c:
        yield c


@pytest.fixture
def keys(db: Database, org: Org) -> dict[str, dict[str, str]]:
    out = {}
    with db.session() as s:
        k = ApiKeys(s)
        for name, org_id, user, role in (("owner", org.id, org.owner, Role.OWNER),
                                         ("reviewer", org.id, org.reviewer, Role.MEMBER),
                                         ("e0", org.id, org.experts[0], Role.EXPERT),
                                         ("e1", org.id, org.experts[1], Role.EXPERT),
                                         ("outsider", org.other_org, org.outsider, Role.EXPERT)):
            out[name] = {"Authorization": f"Bearer {k.create_key(org_id, user, role, name).secret}"}
    return out


def _snapshot(db: Database) -> dict[str, int]:
    """Rows per work/ledger table: a refused call must leave every count as it was."""
    with db.session(write=False) as s:
        return {t.name: int(s.scalar(select(func.count()).select_from(t)) or 0) for t in Base.metadata.sorted_tables
                if t.name.startswith(("work_", "ledger_"))}


def _project(client: TestClient, keys: dict, task_type: str, items: list[dict[str, Any]], **settings: Any) -> str:
    template: dict[str, Any] = {"instructions": "<b>Be careful</b>"}
    if task_type == "rubric":
        template["criteria"] = [{"id": "correct", "description": "right?", "low": 1, "high": 5}]
    r = client.post("/api/work/projects", headers=keys["owner"], json={
        "name": f"{task_type}-p", "task_type": task_type, "template": template,
        "settings": {"gold_share": 0, "quorum": 1, "rate": 150, "review_window_s": 0, "min_confidence": 0,
                     **settings}})
    assert r.status_code == 201, r.text
    r2 = client.post(f"/api/work/projects/{task_type}-p/items", headers=keys["owner"], json={"items": items})
    assert r2.status_code == 201, r2.text
    return str(r.json()["id"])


def _next(client: TestClient, keys: dict, who: str, project: str) -> dict[str, Any]:
    r = client.post(f"/api/work/projects/{project}/next", headers=keys[who])
    assert r.status_code == 200, r.text
    task: dict[str, Any] = r.json()["task"]
    return task


def test_each_task_type_from_lease_to_payable_balance(client: TestClient, keys: dict, org: Org) -> None:
    cases = [("demonstration", {"prompt": PROMPT}, {"reply": "4"}),
             ("pairwise", pair_item(), {"choice": "a"}),
             ("ranked", pair_item(), {"order": ["b", "a"]}),
             ("rubric", {"prompt": PROMPT, "reply": "4"}, {"scores": {"correct": 5}}),
             ("correction", {"prompt": PROMPT, "reply": "5"}, {"reply": "4"}),
             ("authoring", {}, {"prompt": "3+3?", "answer": "6", "rubric": ["exact"]})]
    for n, (task_type, item, value) in enumerate(cases, start=1):
        p = _project(client, keys, task_type, [item])
        task = _next(client, keys, "e0", p)
        assert task["task_type"] == task_type and "gold" not in str(task)
        r = client.post(f"/api/work/tasks/{task['assignment_id']}/submit", headers=keys["e0"],
                        json={"value": value, "active_seconds": 30})
        assert r.status_code == 201, r.text
        answer = r.json()["id"]
        queue = client.get(f"/api/work/projects/{p}/review", headers=keys["reviewer"]).json()["data"]
        assert [a["id"] for a in queue] == [answer]
        before = client.get("/api/work/me", headers=keys["e0"]).json()["earnings"]
        r = client.post(f"/api/work/answers/{answer}/review", headers=keys["reviewer"], json={"decision": "accept"})
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
        assert client.post("/api/work/release", headers=keys["owner"]).json()["released"] == [answer]
        after = client.get("/api/work/me", headers=keys["e0"]).json()["earnings"]
        assert after["available"] - before["available"] == 150 and after["accepted_tasks"] == n
        r = client.post(f"/api/work/projects/{p}/dataset", headers=keys["owner"])
        assert r.status_code == 200 and r.json()["rows"] == 1, r.text


def test_bad_input_is_refused_with_a_precise_4xx_and_nothing_changes(client: TestClient, db: Database, keys: dict,
                                                                     org: Org) -> None:
    rubric = _project(client, keys, "rubric", [{"prompt": PROMPT, "reply": "4"}] * 3)
    demo = _project(client, keys, "demonstration", [{"prompt": PROMPT}] * 3, lease_seconds=30)
    corr = _project(client, keys, "correction", [{"prompt": PROMPT, "reply": "5"}])
    t_rubric = _next(client, keys, "e0", rubric)
    t_demo = _next(client, keys, "e0", demo)
    t_corr = _next(client, keys, "e0", corr)
    with db.session() as s:  # e1's lease on a demo item, already past its expiry
        from datetime import timedelta

        from teachloop.store.schema import WorkAssignment
        from teachloop.store.schema.base import utc_now
        from teachloop.work import tasks

        lease = tasks.next_task(s, org.id, org.experts[1], demo)
        assert lease is not None
        lease.expires_at = utc_now() - timedelta(seconds=1)
        expired = lease.id
        assert s.get(WorkAssignment, expired) is not None
    before = _snapshot(db)
    refused = [
        # a lease that expired, and a task that belongs to someone else
        ("e1", f"/api/work/tasks/{expired}/submit", {"value": {"reply": "4"}}, 409, "assignment_id"),
        ("e1", f"/api/work/tasks/{t_demo['assignment_id']}/submit", {"value": {"reply": "4"}}, 403, "assignment_id"),
        # a rubric score off its scale, an empty demonstration, a correction identical to the model's reply
        ("e0", f"/api/work/tasks/{t_rubric['assignment_id']}/submit", {"value": {"scores": {"correct": 9}}}, 400,
         "value.scores.correct"),
        ("e0", f"/api/work/tasks/{t_demo['assignment_id']}/submit", {"value": {"reply": ""}}, 400, "value.reply"),
        ("e0", f"/api/work/tasks/{t_corr['assignment_id']}/submit", {"value": {"reply": "5"}}, 400, "value.reply"),
        # an expert reaching another organisation's project, or gold answers
        ("outsider", f"/api/work/projects/{rubric}/next", None, 404, "project"),
        ("outsider", f"/api/work/tasks/{t_demo['assignment_id']}", None, 404, "assignment_id"),
        ("e0", f"/api/work/projects/{rubric}/items?gold=true", None, 403, None),
        # an expert cannot review, nor review their own work
        ("e0", "/api/work/experts", {"user_id": org.experts[0]}, 403, None),
    ]
    for who, url, body, status, param in refused:
        r = client.get(url, headers=keys[who]) if body is None and "/next" not in url else \
            client.post(url, headers=keys[who], json=body)
        assert r.status_code == status, (url, r.text)
        if param is not None:
            assert r.json()["error"]["param"] == param, (url, r.text)
        assert _snapshot(db) == before, url
    # a paused expert asking for work: refused with the reason, nothing changes
    with db.session() as s:
        from teachloop.work import workforce

        workforce.pause(s, workforce.get_expert(s, org.id, org.experts[1]), "accuracy below the bar")
    before = _snapshot(db)
    r = client.post(f"/api/work/projects/{demo}/next", headers=keys["e1"])
    assert r.status_code == 403 and "accuracy below the bar" in r.json()["error"]["message"], r.text
    assert _snapshot(db) == before
    assert client.get("/api/work/me", headers=keys["e1"]).json()["expert"]["pause_reason"] == "accuracy below the bar"
    # HTML in a text field is stored as given (and returned as JSON data, never markup)
    script = "<script>alert('x')</script>"
    r = client.post(f"/api/work/tasks/{t_demo['assignment_id']}/submit", headers=keys["e0"],
                    json={"value": {"reply": script}})
    assert r.status_code == 201, r.text
    answers = client.get(f"/api/work/projects/{demo}/answers", headers=keys["owner"]).json()["data"]
    assert answers[0]["value"]["reply"] == script
    with db.session(write=False) as s:
        assert not s.scalar(select(func.count()).select_from(LedgerEntry))  # nothing paid before review

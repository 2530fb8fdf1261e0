"""Model suggestions from a deployment over REST, in process: the echo engine of ``tests/unit/serve`` behind a
real ``Serving`` answers each item without a suggestion (no model loads); the expert sees the suggestion only
when the project shows them; an unknown deployment, a task type without free-text answers and another
organisation's project are refused with nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from teachloop.app import AppDeps, create_app
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.render import Renderer
from teachloop.serve import Serving, ServingConfig
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy
from teachloop.store.schema import Trace, WorkItem
from teachloop.work import tasks
from tests._tiny import tiny_tokenizer
from tests.unit.serve.fakes import EchoEngine
from tests.unit.work.conftest import Org, make_project, pair_item

BASE = "tiny-base"


@pytest.fixture
def client(db: Database, blobs: BlobStore, tmp_path: Path) -> Iterator[TestClient]:
    tokenizer = tiny_tokenizer()
    serving = Serving(db, blobs, engine=EchoEngine(tokenizer), renderer=Renderer(tokenizer), base_model=BASE,
                      config=ServingConfig(sync_interval_s=0.05, max_rows=8, max_queue=16))
    serving.start()
    settings = Settings(home=tmp_path / "home", model_cache=tmp_path / "models", database_url="sqlite://",
                        blob_url=str(tmp_path / "blobs"), max_body_bytes=256 * 1024)
    try:
        with TestClient(create_app(AppDeps(settings, db, blobs, serving=serving))) as c:
            yield c
    finally:
        serving.close()


def _key(db: Database, org_id: str, user: str) -> dict[str, str]:
    with db.session() as s:
        return {"Authorization": f"Bearer {ApiKeys(s).create_key(org_id, user, Role.OWNER, 'owner').secret}"}


def _suggestions(db: Database, project: str) -> list[Any]:
    with db.session(write=False) as s:
        return [i.payload.get("suggestion") for i in s.scalars(select(WorkItem).where(WorkItem.project_id == project)
                                                                .order_by(WorkItem.created_at, WorkItem.id))]


def test_a_deployment_fills_the_missing_suggestions(client: TestClient, db: Database, org: Org) -> None:
    items = [{"prompt": [{"role": "user", "content": "Say hello"}]},
             {"prompt": [{"role": "user", "content": "Count to three"}]},
             {"prompt": [{"role": "user", "content": "Kept"}], "suggestion": {"reply": "the owner's own"}}]
    p = make_project(db, org.id, "demonstration", items=items, quorum=1, show_suggestions=True)
    owner = _key(db, org.id, org.owner)
    r = client.post(f"/api/work/projects/{p}/suggestions", headers=owner, json={"deployment": BASE, "limit": 1})
    assert r.status_code == 200, r.text
    assert (r.json()["filled"], r.json()["remaining"], r.json()["model"]) == (1, 1, BASE)
    r = client.post(f"/api/work/projects/{p}/suggestions", headers=owner, json={"deployment": BASE})
    assert (r.json()["filled"], r.json()["remaining"]) == (1, 0), r.text
    assert _suggestions(db, p) == [{"reply": "Say hello"}, {"reply": "Count to three"}, {"reply": "the owner's own"}]
    with db.session(write=False) as s:  # each reply is a traced completion of the organisation
        traced = list(s.scalars(select(Trace).where(Trace.org_id == org.id)))
        assert len(traced) == 2 and all(t.request_metadata.get("work_project") == p for t in traced)
    with db.session() as s:  # the expert sees it, as the project shows suggestions
        lease = tasks.next_task(s, org.id, org.experts[0], p)
        assert lease is not None
        assert tasks.task_out(s, lease).payload["suggestion"] == {"reply": "Say hello"}


def test_suggestions_refuse_bad_requests_and_write_nothing(client: TestClient, db: Database, org: Org) -> None:
    p = make_project(db, org.id, "correction", items=[{"prompt": [{"role": "user", "content": "2+2?"}],
                                                       "reply": "5"}])
    pair = make_project(db, org.id, "pairwise", items=[pair_item()])
    owner = _key(db, org.id, org.owner)
    r = client.post(f"/api/work/projects/{p}/suggestions", headers=owner, json={"deployment": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model", r.text
    r = client.post(f"/api/work/projects/{pair}/suggestions", headers=owner, json={"deployment": BASE})
    assert r.status_code == 400 and r.json()["error"]["param"] == "project", r.text
    r = client.post(f"/api/work/projects/{p}/suggestions", headers=owner, json={"deployment": BASE, "limit": 0})
    assert r.status_code == 400, r.text
    with db.session() as s:
        boss = Tenancy(s).create_user("boss@globex.test")
        Tenancy(s).add_member(org.other_org, boss.id, Role.OWNER)
    r = client.post(f"/api/work/projects/{p}/suggestions", headers=_key(db, org.other_org, boss.id),
                    json={"deployment": BASE})  # another organisation's project: a missing one
    assert r.status_code == 404 and r.json()["error"]["param"] == "project", r.text
    assert _suggestions(db, p) == [None] and _suggestions(db, pair) == [None]
    with db.session(write=False) as s:
        assert s.scalars(select(Trace)).first() is None

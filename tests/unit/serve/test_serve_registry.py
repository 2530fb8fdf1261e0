"""The serving registry in the store (SQLite and PostgreSQL): adapter versions, deployments, traces, feedback."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from teachloop.catalog.adapters import folder_digest, publish_adapter
from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.core.ids import new_id
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.store.repos.deployments import AdapterVersions, Deployments, DeploymentState
from teachloop.store.repos.traces import TraceFilter, Traces
from teachloop.store.schema.traces import Trace
from tests.unit.serve.fakes import adapter_folder

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def db(db_url: str, open_database: Callable[[str], Database]) -> Database:
    return open_database(db_url)  # SQLite and PostgreSQL (shared by the session: emptied around the test)


@pytest.fixture
def orgs(db: Database) -> tuple[str, str]:
    with db.session() as s:
        return Tenancy(s).create_org("acme").id, Tenancy(s).create_org("globex").id


def _version(db: Database, org: str, name: str = "bot", digest: str = DIGEST, base: str = "m") -> Any:
    with db.session() as s:
        return AdapterVersions(s).publish(org, name=name, digest=digest, blob_key="k", base_model=base)


def test_adapter_versions_are_numbered_idempotent_and_resolved(db: Database, orgs: tuple[str, str]) -> None:
    acme, globex = orgs
    v1, created = _version(db, acme)
    again, created_again = _version(db, acme)
    v2, _ = _version(db, acme, digest="sha256:" + "cd" * 32)
    assert (v1.version, created, again.id, created_again, v2.version) == (1, True, v1.id, False, 2)
    with db.session(write=False) as s:
        repo = AdapterVersions(s)
        assert repo.resolve(acme, "bot").id == v2.id
        assert repo.resolve(acme, "bot@1").id == v1.id
        assert repo.resolve(acme, v1.id).id == v1.id
        for ref in ("bot@3", "other", v1.id):
            with pytest.raises(NotFound):
                repo.resolve(globex if ref == v1.id else acme, ref)
        with pytest.raises(InvalidInput):
            repo.resolve(acme, "bot@latest")
    with pytest.raises(Conflict):
        _version(db, acme, base="other-model")
    with pytest.raises(InvalidInput):
        _version(db, acme, digest="md5:x")


def test_deployment_history_and_rollback_walk_back(db: Database, orgs: tuple[str, str]) -> None:
    acme, globex = orgs
    a, _ = _version(db, acme, digest="sha256:" + "01" * 32)
    b, _ = _version(db, acme, digest="sha256:" + "02" * 32)
    c, _ = _version(db, acme, digest="sha256:" + "03" * 32)
    with db.session() as s:
        repo = Deployments(s)
        repo.create(acme, "support", DeploymentState("m", a.id))
        repo.update(acme, "support", DeploymentState("m", b.id))
        repo.update(acme, "support", DeploymentState("m", c.id, b.id, 10))
        row, changed = repo.update(acme, "support", DeploymentState("m", c.id, b.id, 10))
        assert not changed and row.revision == 3
        assert repo.rollback(acme, "support").adapter_version_id == b.id
        assert repo.rollback(acme, "support").adapter_version_id == a.id
        with pytest.raises(Conflict):
            repo.rollback(acme, "support")
        restored = repo.rollback(acme, "support", to_revision=3)
        assert (restored.adapter_version_id, restored.canary_version_id, restored.canary_percent) == (c.id, b.id, 10)
        assert [h.revision for h in repo.history(acme, "support")] == [6, 5, 4, 3, 2, 1]
        with pytest.raises(NotFound):
            repo.get(globex, "support")
        with pytest.raises(NotFound):
            repo.update(globex, "support", DeploymentState("m"))
        with pytest.raises(NotFound):  # globex cannot point at acme's version
            repo.create(globex, "mine", DeploymentState("m", a.id))
        assert [v.id for v in repo.served_versions("m")] and not repo.served_versions("other")


@pytest.mark.parametrize(
    ("state", "param"),
    [
        (DeploymentState("m", canary_percent=5), "canary_percent"),
        (DeploymentState("m", None, None, 101), "canary_percent"),
        (DeploymentState(""), "base_model"),
    ],
)
def test_bad_deployment_states_are_refused(db: Database, orgs: tuple[str, str], state: DeploymentState, param: str) -> None:
    with pytest.raises(InvalidInput) as err, db.session() as s:
        Deployments(s).create(orgs[0], "support", state)
    assert err.value.param == param
    with db.session(write=False) as s:
        assert Deployments(s).list(orgs[0]) == []


def test_an_adapter_of_another_base_model_is_refused(db: Database, orgs: tuple[str, str]) -> None:
    v, _ = _version(db, orgs[0], base="other")
    with pytest.raises(InvalidInput) as err, db.session() as s:
        Deployments(s).create(orgs[0], "support", DeploymentState("m", v.id))
    assert err.value.param == "adapter"


def _trace(org: str, **over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": new_id("tr"), "org_id": org, "key_id": None, "model": "support", "base_model": "m",
        "messages": [{"role": "user", "content": "hi"}], "choices": [{"index": 0, "message": {"role": "assistant",
        "content": "hello"}, "finish_reason": "stop", "completion_tokens": 2}], "params": {}, "finish_reason": "stop",
        "prompt_tokens": 5, "completion_tokens": 2, "latency_ms": 10.0, "request_metadata": {},
        "created_at": datetime.now(UTC),
    }
    values.update(over)
    return values


def test_trace_filters_and_feedback(db: Database, orgs: tuple[str, str]) -> None:
    acme, globex = orgs
    now = datetime.now(UTC)
    rows = [
        _trace(acme, created_at=now - timedelta(hours=3), request_metadata={"app": "web"}, user="u1"),
        _trace(acme, created_at=now - timedelta(hours=2), request_metadata={"app": "ios"}, model="other"),
        _trace(acme, created_at=now - timedelta(hours=1), request_metadata={"app": "web", "tier": "pro"}),
        _trace(globex, created_at=now),
    ]
    with db.session() as s:
        Traces(s).add_many(Trace(**r) for r in rows)
        repo = Traces(s)
        repo.add_feedback(acme, rows[0]["id"], score=0.9, label="good")
        repo.add_feedback(acme, f"chatcmpl-{rows[2]['id']}", score=0.1,
                          corrected_output={"role": "assistant", "content": "better"})
        with pytest.raises(NotFound):
            repo.add_feedback(acme, rows[3]["id"], score=1.0)
        with pytest.raises(InvalidInput):
            repo.add_feedback(acme, rows[0]["id"])
        with pytest.raises(InvalidInput):
            repo.add_feedback(acme, rows[0]["id"], score=1.0, choice_index=3)
        with pytest.raises(InvalidInput):
            repo.add_feedback(acme, rows[0]["id"], score=float("nan"))

    def ids(**kw: Any) -> list[str]:
        with db.session(write=False) as s:
            return [t.id for t in Traces(s).list(acme, TraceFilter(**kw))]

    a, b, c = (r["id"] for r in rows[:3])
    assert ids() == [c, b, a]
    assert ids(model="support") == [c, a]
    assert ids(has_feedback=True) == [c, a] and ids(has_feedback=False) == [b]
    assert ids(min_score=0.5) == [a] and ids(max_score=0.5) == [c] and ids(min_score=0.0, max_score=1.0) == [c, a]
    assert ids(label="good") == [a] and ids(has_correction=True) == [c]
    assert ids(metadata={"app": "web"}) == [c, a] and ids(metadata={"app": "web", "tier": "pro"}) == [c]
    assert ids(since=now - timedelta(minutes=150)) == [c, b] and ids(until=now - timedelta(minutes=150)) == [a]
    assert ids(user="u1") == [a]
    assert ids(limit=1) == [c] and ids(limit=2, before=b) == [a]
    with db.session(write=False) as s:
        assert Traces(s).count(acme, TraceFilter(has_feedback=True)) == 2
        assert Traces(s).list(globex, TraceFilter(has_feedback=True)) == []
    for bad, param in ((TraceFilter(limit=0), "limit"), (TraceFilter(min_score=2, max_score=1), "min_score"),
                       (TraceFilter(since=datetime(2026, 1, 1)), "since"), (TraceFilter(arm="x"), "arm")):
        with pytest.raises(InvalidInput) as err, db.session(write=False) as s:
            Traces(s).list(acme, bad)
        assert err.value.param == param


def test_traces_and_feedback_cannot_be_changed(db: Database, orgs: tuple[str, str]) -> None:
    values = _trace(orgs[0])
    with db.session() as s:
        Traces(s).add_many([Trace(**values)])
    with pytest.raises(PermissionError), db.session() as s:
        Traces(s).get(orgs[0], values["id"]).model = "changed"


def test_publish_adapter_stores_the_folder_by_content(db: Database, orgs: tuple[str, str], tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    folder = adapter_folder(tmp_path, "x")
    with db.session() as s:
        v, created = publish_adapter(s, blobs, orgs[0], name="bot", folder=folder, base_model="m")
        again, created_again = publish_adapter(s, blobs, orgs[0], name="bot", folder=folder, base_model="m")
    assert created and not created_again and again.id == v.id and v.digest == folder_digest(folder)
    assert blobs.exists(v.blob_key) and v.blob_key.startswith(f"orgs/{orgs[0]}/adapters/")
    with pytest.raises(InvalidInput), db.session() as s:
        publish_adapter(s, blobs, orgs[0], name="bot", folder=tmp_path / "nope", base_model="m")

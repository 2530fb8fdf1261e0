"""Deployments over REST (echo engine): adapters, canaries, hot swaps without failures, rollback, tenancy."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from teachloop.serve import Serving, canary_bucket, engine_name, publish_adapter
from teachloop.store import BlobStore, Database
from teachloop.store.repos.traces import Traces
from tests.unit.serve.conftest import BASE, Tenants, auth
from tests.unit.serve.fakes import EchoEngine, adapter_folder

CHAT = "/v1/chat/completions"


def _publish(database: Database, blobs: BlobStore, org_id: str, tmp: Path, prefix: str, name: str = "bot") -> Any:
    with database.session() as s:
        version, _ = publish_adapter(s, blobs, org_id, name=name, folder=adapter_folder(tmp, prefix), base_model=BASE)
        return version


def _ask(client: TestClient, key: str, model: str = "support", **extra: Any) -> Any:
    r = client.post(CHAT, json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra},
                    headers=auth(key))
    return r


def test_create_update_and_rollback_switch_what_serves_the_name(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path, engine: EchoEngine
) -> None:
    acme = tenants.acme
    v1 = _publish(database, blobs, acme.org_id, tmp_path, "v1: ")
    v2 = _publish(database, blobs, acme.org_id, tmp_path, "v2: ")
    assert (v1.version, v2.version) == (1, 2)
    r = client.post("/api/deployments", json={"name": "support", "adapter": "bot@1"}, headers=auth(acme.member))
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["adapter"]["ref"] == "bot@1" and dep["revision"] == 1 and dep["base_model"] == BASE
    reply = _ask(client, acme.member).json()
    assert reply["choices"][0]["message"]["content"] == "v1: hi"
    assert reply["system_fingerprint"] == "tl-" + v1.digest[7:19]

    r = client.patch("/api/deployments/support", json={"adapter": "bot"}, headers=auth(acme.member))
    assert r.status_code == 200 and r.json()["adapter"]["ref"] == "bot@2" and r.json()["revision"] == 2
    assert _ask(client, acme.member).json()["choices"][0]["message"]["content"] == "v2: hi"
    # the old version is unloaded once nothing serves or holds it
    deadline = time.monotonic() + 5
    while engine_name(v1.digest) in engine.adapters and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine_name(v1.digest) not in engine.adapters and engine_name(v2.digest) in engine.adapters

    r = client.patch("/api/deployments/support", json={"adapter": None}, headers=auth(acme.member))
    assert r.json()["adapter"] is None
    assert _ask(client, acme.member).json()["choices"][0]["message"]["content"] == "hi"

    back = client.post("/api/deployments/support/rollback", headers=auth(acme.member)).json()
    assert back["adapter"]["ref"] == "bot@2" and back["revision"] == 4
    back = client.post("/api/deployments/support/rollback", headers=auth(acme.member)).json()
    assert back["adapter"]["ref"] == "bot@1"
    none_left = client.post("/api/deployments/support/rollback", headers=auth(acme.member))
    assert none_left.status_code == 409
    again = client.post("/api/deployments/support/rollback", json={"to_revision": 3}, headers=auth(acme.member)).json()
    assert again["adapter"] is None
    history = client.get("/api/deployments/support/history", headers=auth(acme.viewer)).json()["data"]
    assert [(h["revision"], h["action"], h["restored_from"]) for h in history] == [
        (6, "rollback", 3), (5, "rollback", 1), (4, "rollback", 2), (3, "update", None), (2, "update", None),
        (1, "create", None),
    ]
    with database.session(write=False) as s:
        traces = Traces(s).list(acme.org_id)
    assert {t.adapter_version_id for t in traces} == {v1.id, v2.id, None}
    assert all(t.deployment_id == dep["id"] and t.model == "support" for t in traces)


def test_canary_is_sticky_per_user_and_split_by_percentage(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path
) -> None:
    acme = tenants.acme
    _publish(database, blobs, acme.org_id, tmp_path, "stable: ")
    _publish(database, blobs, acme.org_id, tmp_path, "canary: ")
    r = client.post("/api/deployments", json={"name": "support", "adapter": "bot@1",
                                               "canary": {"adapter": "bot@2", "percent": 30}}, headers=auth(acme.member))
    assert r.status_code == 201 and r.json()["canary"]["percent"] == 30
    dep_id = r.json()["id"]
    arms: Counter[str] = Counter()
    for i in range(40):
        user = f"user-{i}"
        first = _ask(client, acme.member, user=user).json()["choices"][0]["message"]["content"]
        second = _ask(client, acme.member, user=user).json()["choices"][0]["message"]["content"]
        assert first == second  # sticky
        expected = "canary: hi" if canary_bucket(dep_id, user) < 30 else "stable: hi"
        assert first == expected
        arms[first] += 1
    assert 0 < arms["canary: hi"] < 40
    with database.session(write=False) as s:
        traces = Traces(s).list(acme.org_id, None)
    assert {t.arm for t in traces} == {"primary", "canary"}
    r = client.patch("/api/deployments/support", json={"canary": None}, headers=auth(acme.member)).json()
    assert r["canary"] is None


def test_a_swap_under_load_fails_no_request(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path, engine: EchoEngine
) -> None:
    acme = tenants.acme
    engine.step_delay = 0.01
    _publish(database, blobs, acme.org_id, tmp_path, "old ")
    _publish(database, blobs, acme.org_id, tmp_path, "new ")
    client.post("/api/deployments", json={"name": "support", "adapter": "bot@1"}, headers=auth(acme.member))
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = _ask(client, acme.member, stream=bool(len(results) % 2))
            results.append((r.status_code, r.text))

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    for ref in ("bot@2", "bot@1", "bot@2"):
        assert client.patch("/api/deployments/support", json={"adapter": ref}, headers=auth(acme.member)).status_code == 200
        time.sleep(0.2)
    stop.set()
    for w in workers:
        w.join()
    assert results and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    texts = " ".join(text for _, text in results)
    assert "old" in texts and "new" in texts


def test_bad_deployment_changes_change_nothing(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path
) -> None:
    acme = tenants.acme
    _publish(database, blobs, acme.org_id, tmp_path, "v1: ")
    h = auth(acme.member)
    assert client.post("/api/deployments", json={"name": "support", "adapter": "bot@1"}, headers=h).status_code == 201
    cases = [
        ("post", "/api/deployments", {"name": "support"}, 409, "name"),
        ("post", "/api/deployments", {"name": "bad name!"}, 400, "name"),
        ("post", "/api/deployments", {"name": "x", "adapter": "bot@9"}, 404, "adapter"),
        ("post", "/api/deployments", {"name": "x", "canary": {"adapter": "bot@1", "percent": 101}}, 400, "canary.percent"),
        ("patch", "/api/deployments/support", {}, 400, "adapter"),
        ("patch", "/api/deployments/support", {"adapter": "nope"}, 404, "adapter"),
        ("patch", "/api/deployments/support", {"adapter": 3}, 400, "adapter"),
        ("patch", "/api/deployments/missing", {"adapter": None}, 404, "model"),
        ("post", "/api/deployments/support/rollback", {"to_revision": 7}, 404, "to_revision"),
    ]
    for method, url, body, status, param in cases:
        r = getattr(client, method)(url, json=body, headers=h)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), (url, body, r.text)
    assert client.get("/api/deployments/support", headers=h).json()["revision"] == 1
    assert [d["name"] for d in client.get("/api/deployments", headers=h).json()["data"]] == ["support"]
    viewer = client.patch("/api/deployments/support", json={"adapter": "bot@1"}, headers=auth(acme.viewer))
    assert viewer.status_code == 403


def test_unloadable_adapter_is_refused_before_the_change(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path, serving: Serving
) -> None:
    acme = tenants.acme
    _publish(database, blobs, acme.org_id, tmp_path, "v1: ")
    version = _publish(database, blobs, acme.org_id, tmp_path, "v2: ")
    client.post("/api/deployments", json={"name": "support", "adapter": "bot@1"}, headers=auth(acme.member))
    blobs.delete(version.blob_key)  # the blob is gone: loading must fail
    r = client.patch("/api/deployments/support", json={"adapter": "bot@2"}, headers=auth(acme.member))
    assert r.status_code == 500 and r.json()["error"]["code"] == "model_error"
    assert client.get("/api/deployments/support", headers=auth(acme.member)).json()["adapter"]["ref"] == "bot@1"
    assert _ask(client, acme.member).json()["choices"][0]["message"]["content"] == "v1: hi"


def test_models_lists_deployments_of_the_callers_organisation_only(
    client: TestClient, tenants: Tenants
) -> None:
    client.post("/api/deployments", json={"name": "support"}, headers=auth(tenants.acme.member))
    client.post("/api/deployments", json={"name": "secret"}, headers=auth(tenants.globex.member))
    ids = [m["id"] for m in client.get("/v1/models", headers=auth(tenants.acme.member)).json()["data"]]
    assert ids == ["support", BASE]


def test_no_route_reveals_another_organisations_deployments_adapters_or_traces(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path
) -> None:
    acme, globex = tenants.acme, tenants.globex
    _publish(database, blobs, globex.org_id, tmp_path, "g: ", name="gbot")
    assert client.post("/api/deployments", json={"name": "secret", "adapter": "gbot@1"},
                       headers=auth(globex.member)).status_code == 201
    trace_id = _ask(client, globex.member, model="secret").headers["x-teachloop-trace-id"]
    client.post(f"/api/traces/{trace_id}/feedback", json={"score": 1}, headers=auth(globex.member))

    def same_as_missing(method: str, url: str, missing_url: str, body: Any = None) -> None:
        a = getattr(client, method)(url, headers=auth(acme.owner), **({"json": body} if body is not None else {}))
        b = getattr(client, method)(missing_url, headers=auth(acme.owner), **({"json": body} if body is not None else {}))
        assert a.status_code == b.status_code == 404, (url, a.text)
        assert a.json()["error"]["code"] == b.json()["error"]["code"]

    missing_trace = "tr_01m88q503wzm0efj62e8rttgag"
    a = _ask(client, acme.owner, model="secret")
    b = _ask(client, acme.owner, model="never-existed")
    assert a.status_code == b.status_code == 404 and a.json()["error"]["code"] == b.json()["error"]["code"]
    assert a.json()["error"]["message"].replace("secret", "X") == b.json()["error"]["message"].replace("never-existed", "X")
    same_as_missing("get", "/v1/models/secret", "/v1/models/never-existed")
    same_as_missing("get", "/api/deployments/secret", "/api/deployments/never-existed")
    same_as_missing("patch", "/api/deployments/secret", "/api/deployments/never-existed", {"adapter": None})
    same_as_missing("post", "/api/deployments/secret/rollback", "/api/deployments/never-existed/rollback", {})
    same_as_missing("get", "/api/deployments/secret/history", "/api/deployments/never-existed/history")
    same_as_missing("get", f"/api/traces/{trace_id}", f"/api/traces/{missing_trace}")
    same_as_missing("get", f"/api/traces/chatcmpl-{trace_id}", f"/api/traces/chatcmpl-{missing_trace}")
    same_as_missing("get", f"/api/traces/{trace_id}/feedback", f"/api/traces/{missing_trace}/feedback")
    same_as_missing("post", f"/api/traces/{trace_id}/feedback", f"/api/traces/{missing_trace}/feedback", {"score": 0})
    # adapters: acme cannot reference globex's versions (same answer as a missing one)
    r1 = client.post("/api/deployments", json={"name": "x", "adapter": "gbot@1"}, headers=auth(acme.owner))
    r2 = client.post("/api/deployments", json={"name": "x", "adapter": "nobot@1"}, headers=auth(acme.owner))
    assert r1.status_code == r2.status_code == 404
    # listings are empty, not filtered after the fact
    assert client.get("/api/deployments", headers=auth(acme.owner)).json()["data"] == []
    assert client.get("/api/adapters", headers=auth(acme.owner)).json()["data"] == []
    assert client.get("/api/traces", headers=auth(acme.owner)).json()["data"] == []
    assert "secret" not in str(client.get("/v1/models", headers=auth(acme.owner)).json())
    stats = client.get("/api/serving/stats", headers=auth(acme.owner)).json()
    assert "gbot" not in str(stats) and "secret" not in str(stats)
    # names are per organisation: acme may create its own "secret" (no 409 that would reveal globex's)
    assert client.post("/api/deployments", json={"name": "secret"}, headers=auth(acme.owner)).status_code == 201
    assert _ask(client, acme.owner, model="secret").json()["choices"][0]["message"]["content"] == "hi"
    # and globex still sees its own
    assert len(client.get("/api/traces", headers=auth(globex.owner)).json()["data"]) == 1


def test_a_run_dropped_without_close_still_lets_go_of_its_adapter_and_job(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path, serving: Serving,
    engine: EchoEngine,
) -> None:
    """A stream the client abandons before it starts is never iterated; the run's finalizer cleans up."""
    import asyncio
    import gc

    from teachloop.core.chat import Message
    from teachloop.core.tenancy import Principal, Role
    from teachloop.serve import ChatInput

    acme = tenants.acme
    _publish(database, blobs, acme.org_id, tmp_path, "v1: ")
    client.post("/api/deployments", json={"name": "support", "adapter": "bot@1"}, headers=auth(acme.member))
    engine.step_delay = 0.02
    principal = Principal(acme.org_id, None, "key_x", Role.MEMBER)
    chat = ChatInput(model="support", messages=[Message(role="user", content="word " * 80)], stream=True)
    assert serving.pool is not None and serving.scheduler is not None

    async def open_and_drop() -> None:
        run = await serving.open_chat(principal, chat)
        assert [a.refs for a in serving.pool.loaded()] == [1]  # type: ignore[union-attr]
        del run

    asyncio.run(open_and_drop())
    gc.collect()
    assert [a.refs for a in serving.pool.loaded()] == [0]
    deadline = time.monotonic() + 5
    while serving.scheduler.stats().active_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert serving.scheduler.stats().active_rows == 0 and serving.scheduler.stats().requests_cancelled == 1

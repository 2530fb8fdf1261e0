"""The request guard: 401 for a bad key on every route whatever the body, then 413 for an oversized body."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from teachloop.app import AppDeps, create_app, require_principal
from teachloop.core.errors import ConfigurationError
from teachloop.core.settings import SETTINGS, Settings
from teachloop.store import ApiKeys, BlobStore, Database, bootstrap
from teachloop.store.schema.deployments import Deployment
from teachloop.store.schema.jobs import JobRow
from teachloop.store.schema.traces import Trace
from tests.unit.app.conftest import auth as _auth
from tests.unit.app.conftest import error_of as _error
from tests.unit.app.routelist import app_routes

LIMIT = 2048


class Item(BaseModel):
    name: str
    max_tokens: int


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[AppDeps]:
    database = Database("sqlite://")
    database.migrate()
    settings = Settings(home=tmp_path, model_cache=tmp_path / "models", database_url="sqlite://",
                        blob_url=str(tmp_path / "b"), max_body_bytes=LIMIT)
    yield AppDeps(settings, database, BlobStore(tmp_path / "blobs"))
    database.close()


@pytest.fixture
def keys(deps: AppDeps) -> dict[str, str]:
    with deps.database.session() as s:
        first = bootstrap(s, "acme", "ada@acme.test")
        assert first.key is not None
        revoked = ApiKeys(s).create_key(first.org.id, None, first.key.key.role, "old")
        ApiKeys(s).revoke(first.org.id, revoked.key.id)
    return {"owner": first.key.secret, "revoked": revoked.secret}


@pytest.fixture
def calls() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def app(deps: AppDeps, calls: list[dict[str, Any]]) -> FastAPI:
    app = create_app(deps)
    router = APIRouter(prefix="/api/test")

    @router.post("/items")
    def create_item(item: Item) -> dict[str, Any]:
        calls.append(item.model_dump())
        return item.model_dump()

    app.include_router(router, dependencies=[Depends(require_principal)])
    return app


def _chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * 512
        sent += 512


JSON = {"Content-Type": "application/json"}
BODIES: dict[str, dict[str, Any]] = {
    "no body": {},
    "malformed JSON": {"content": b'{"model": "x", ', "headers": JSON},
    "wrong types": {"content": json.dumps({"model": 1, "messages": "hi", "n": "two"}).encode(), "headers": JSON},
    "a JSON array": {"content": b"[1, 2, 3]", "headers": JSON},
    "wrong content type": {"content": b"model=x&n=2", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    "plain text": {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
    "oversized": {"content": b"{" + b" " * (LIMIT * 10) + b"}", "headers": JSON},
    "oversized, chunked": {"content": _chunks(LIMIT * 10), "headers": JSON},
}
BAD_KEYS: dict[str, dict[str, str]] = {
    "no header": {},
    "empty bearer": {"Authorization": "Bearer "},
    "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
    "not our format": {"Authorization": "Bearer sk-not-ours"},
    "unknown key": {"Authorization": "Bearer tl_aaaaaaaaaaaa_" + "a" * 52},
}


def _count(database: Database, table: Any) -> int:
    with database.session(write=False) as s:
        return int(s.query(table).count())


def test_every_route_answers_401_to_a_bad_key_whatever_the_body(
    app: FastAPI, client: TestClient, keys: dict[str, str], deps: AppDeps, calls: list[dict[str, Any]]
) -> None:
    routes = [(m, p) for m, p in app_routes(app) if p != "/healthz"]
    assert ("POST", "/v1/chat/completions") in routes and ("PUT", "/api/loops/{deployment}") in routes
    revoked = {"Authorization": f"Bearer {keys['revoked']}"}
    failures = []
    for method, path in routes:
        url = re.sub(r"\{[^}]+\}", "x", path)
        cases = [(name, {}, body) for name, body in BODIES.items()]
        cases += [(f"{name} + malformed JSON", headers, BODIES["malformed JSON"]) for name, headers in BAD_KEYS.items()]
        cases += [("revoked key + oversized", revoked, BODIES["oversized"])]
        for name, key_headers, body in cases:
            kwargs = dict(body)
            if "content" in kwargs and not isinstance(kwargs["content"], bytes):
                kwargs["content"] = _chunks(LIMIT * 10)  # a fresh iterator per request
            kwargs["headers"] = {**body.get("headers", {}), **key_headers}
            r = client.request(method, url, **kwargs)
            if r.status_code != 401 or r.json()["error"]["code"] != "invalid_api_key":
                failures.append(f"{method} {path} ({name}): {r.status_code} {r.text[:120]}")
            elif r.headers.get("www-authenticate") != "Bearer":
                failures.append(f"{method} {path} ({name}): no WWW-Authenticate header")
    assert not failures, "\n".join(failures)
    assert calls == []
    for table in (Deployment, Trace, JobRow):
        assert _count(deps.database, table) == 0, table


def test_a_body_over_the_limit_is_413_and_the_route_never_runs(
    client: TestClient, keys: dict[str, str], calls: list[dict[str, Any]]
) -> None:
    headers = {**_auth(keys["owner"]), **JSON}
    big = json.dumps({"name": "x" * (LIMIT * 3), "max_tokens": 1}).encode()
    error = _error(client.post("/api/test/items", content=big, headers=headers), 413)
    assert error["code"] == error["type"] == "request_too_large" and error["param"] is None
    assert f"is {len(big)} bytes" in error["message"] and f"at most {LIMIT} bytes" in error["message"]
    assert "TEACHLOOP_MAX_BODY_BYTES" in error["message"]
    # without a Content-Length (chunked), the guard stops reading once the limit is passed
    chunked = client.post("/api/test/items", content=iter([big[:1000], big[1000:2000], big[2000:]]), headers=headers)
    error = _error(chunked, 413)
    assert f"more than {LIMIT} bytes" in error["message"]
    assert calls == []
    # the server keeps serving, and a body of exactly the limit is read and handed on intact
    exact = {"name": "", "max_tokens": 1}
    exact["name"] = "y" * (LIMIT - len(json.dumps(exact).encode()))
    data = json.dumps(exact).encode()
    assert len(data) == LIMIT
    r = client.post("/api/test/items", content=data, headers=headers)
    assert r.status_code == 200, r.text
    chunked = client.post("/api/test/items", content=iter([data[:100], data[100:]]), headers=headers)
    assert chunked.status_code == 200, chunked.text
    assert calls == [exact, exact]


def test_with_a_valid_key_bad_bodies_are_400_naming_what_is_wrong(client: TestClient, keys: dict[str, str]) -> None:
    headers = _auth(keys["owner"])
    error = _error(client.post("/api/test/items", content=b'{"name": ', headers={**headers, **JSON}), 400)
    assert error["message"].startswith("malformed JSON body") and "character 9" in error["message"]
    error = _error(client.post("/api/test/items", content=b"name=x", headers={
        **headers, "Content-Type": "application/x-www-form-urlencoded"}), 400)
    assert "request body" in error["message"]
    error = _error(client.post("/api/test/items", json=[1, 2], headers=headers), 400)
    assert "request body" in error["message"]


def test_unknown_paths_are_401_without_a_key_and_404_with_one(client: TestClient, keys: dict[str, str]) -> None:
    assert _error(client.get("/api/nothing-here"), 401)["code"] == "invalid_api_key"
    assert _error(client.get("/api/nothing-here", headers=_auth(keys["owner"])), 404)["code"] == "not_found"
    assert client.get("/healthz").status_code == 200


def test_the_limit_is_read_from_teachloop_max_body_bytes() -> None:
    assert SETTINGS["TEACHLOOP_MAX_BODY_BYTES"][0] == str(4 * 1024 * 1024)
    assert Settings.from_env({}).max_body_bytes == 4 * 1024 * 1024
    assert Settings.from_env({"TEACHLOOP_MAX_BODY_BYTES": "65536"}).max_body_bytes == 65536
    for bad in ("0", "-1", "lots", "1.5"):
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_env({"TEACHLOOP_MAX_BODY_BYTES": bad})
        assert caught.value.param == "TEACHLOOP_MAX_BODY_BYTES" and repr(bad) in str(caught.value)

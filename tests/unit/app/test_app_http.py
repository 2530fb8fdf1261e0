"""The HTTP app in process: health, authentication, whoami and the error shape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from teachloop.app import AppDeps, create_app, require_principal
from teachloop.core.errors import Conflict
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.store import ApiKeys, BlobStore, Database, bootstrap, head_revision
from tests.unit.app.conftest import auth as _auth
from tests.unit.app.conftest import error_of as _error


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        home=tmp_path, model_cache=tmp_path / "models", database_url=url, blob_url=str(tmp_path / "b")
    )


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[AppDeps]:
    database = Database("sqlite://")
    database.migrate()
    yield AppDeps(_settings(tmp_path, "sqlite://"), database, BlobStore(tmp_path / "blobs"))
    database.close()


@pytest.fixture
def owner_key(deps: AppDeps) -> str:
    with deps.database.session() as s:
        first = bootstrap(s, "acme", "ada@acme.test")
    assert first.key is not None
    return first.key.secret


class Item(BaseModel):
    name: str
    max_tokens: int = Field(ge=1)
    stop: str | list[str] | None = None
    labels: dict[str, str] | None = None


def _test_routes() -> APIRouter:
    """Routes that exist only to exercise the error rendering."""
    router = APIRouter(prefix="/api/test")

    @router.post("/items")
    def create_item(item: Item) -> dict[str, Any]:
        return item.model_dump()

    @router.get("/items")
    def list_items(limit: int = 10) -> dict[str, int]:
        return {"limit": limit}

    @router.get("/conflict")
    def conflict() -> None:
        raise Conflict("version 3 already exists with other content", param="version")

    @router.get("/crash")
    def crash() -> None:
        raise RuntimeError("password=hunter2 in a stack frame")

    return router


@pytest.fixture
def app(deps: AppDeps) -> FastAPI:
    app = create_app(deps)
    app.include_router(_test_routes(), dependencies=[Depends(require_principal)])
    return app


def test_healthz_needs_no_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["database"] == "ok"


def test_healthz_reports_an_unusable_database(tmp_path: Path) -> None:
    database = Database("sqlite://")  # never migrated
    app = create_app(AppDeps(_settings(tmp_path, "sqlite://"), database, BlobStore(tmp_path / "b")))
    with TestClient(app) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert f"expected {head_revision()}" in response.json()["database"]


def test_whoami(client: TestClient, owner_key: str, deps: AppDeps) -> None:
    body = client.get("/api/whoami", headers=_auth(owner_key)).json()
    assert body["org"]["name"] == "acme" and body["user"]["email"] == "ada@acme.test"
    assert body["role"] == "owner" and body["key_id"].startswith("key_")
    with deps.database.session() as s:
        service = ApiKeys(s).create_key(body["org"]["id"], None, Role.VIEWER, "dashboard")
    body = client.get("/api/whoami", headers=_auth(service.secret)).json()
    assert (body["user"], body["role"], body["key_id"]) == (None, "viewer", service.key.id)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer "}, "missing API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "must read `Bearer <API key>`"),
        ({"Authorization": "Bearer sk-not-ours"}, "malformed API key"),
        ({"Authorization": "Bearer tl_aaaaaaaaaaaa_" + "a" * 52}, "unknown API key"),
    ],
)
def test_bad_credentials_are_401(client: TestClient, headers: dict[str, str], message: str) -> None:
    response = client.get("/api/whoami", headers=headers)
    error = _error(response, 401)
    assert message in error["message"]
    assert error["type"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401(client: TestClient, owner_key: str, deps: AppDeps) -> None:
    with deps.database.session() as s:
        principal = ApiKeys(s).authenticate(owner_key)
        ApiKeys(s).revoke(principal.org_id, principal.key_id)
    error = _error(client.get("/api/whoami", headers=_auth(owner_key)), 401)
    assert error["message"] == "API key revoked; create one with `teachloop admin keys create`"


def test_every_route_but_healthz_requires_a_key(app: FastAPI, client: TestClient) -> None:
    paths = app.openapi()["paths"]
    assert "/api/whoami" in paths and "/api/test/items" in paths
    for path, operations in paths.items():
        for method, operation in operations.items():
            secured = any("HTTPBearer" in scheme for scheme in operation.get("security", []))
            assert secured == (path != "/healthz"), f"{method} {path}"
            if secured:
                url = re.sub(r"\{[^}]+\}", "x", path)
                _error(client.request(method.upper(), url), 401)


def test_openapi_document_is_served_to_key_holders(client: TestClient, owner_key: str) -> None:
    _error(client.get("/api/openapi.json"), 401)
    document = client.get("/api/openapi.json", headers=_auth(owner_key)).json()
    assert "/api/whoami" in document["paths"] and "/healthz" in document["paths"]


def test_unknown_route_and_wrong_method(client: TestClient, owner_key: str) -> None:
    error = _error(client.get("/nope", headers=_auth(owner_key)), 404)
    assert (error["message"], error["type"]) == ("no route GET /nope", "not_found")
    error = _error(client.delete("/api/whoami", headers=_auth(owner_key)), 405)
    assert error["message"] == "method DELETE is not allowed on /api/whoami"
    # without a key neither says whether the route exists
    assert _error(client.get("/nope"), 401) == _error(client.delete("/api/whoami"), 401)


def test_validation_errors_are_400_naming_the_parameter(client: TestClient, owner_key: str) -> None:
    error = _error(
        client.post("/api/test/items", json={"name": "x", "max_tokens": 0}, headers=_auth(owner_key)), 400
    )
    assert error["param"] == "max_tokens" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("max_tokens: ")
    error = _error(client.post("/api/test/items", json={}, headers=_auth(owner_key)), 400)
    assert error["param"] in ("name", "max_tokens") and "and 1 more problem" in error["message"]
    error = _error(client.get("/api/test/items?limit=many", headers=_auth(owner_key)), 400)
    assert error["param"] == "limit"


def test_a_value_no_alternative_of_a_union_accepts_names_the_field(client: TestClient, owner_key: str) -> None:
    body = {"name": "x", "max_tokens": 1, "stop": 5}
    error = _error(client.post("/api/test/items", json=body, headers=_auth(owner_key)), 400)
    assert (error["param"], error["message"]) == ("stop", "stop: must be str or list[str]")
    error = _error(client.post("/api/test/items", json={**body, "max_tokens": 0}, headers=_auth(owner_key)), 400)
    assert error["param"] == "max_tokens" and error["message"].endswith("(and 2 more problems)")
    # a dict key is part of the name, even one that looks like a type
    for key in ("Str", "str"):
        body = {"name": "x", "max_tokens": 1, "labels": {key: 1}}
        error = _error(client.post("/api/test/items", json=body, headers=_auth(owner_key)), 400)
        assert error["param"] == f"labels.{key}", error


def test_malformed_json_is_400(client: TestClient, owner_key: str) -> None:
    headers = {**_auth(owner_key), "Content-Type": "application/json"}
    error = _error(client.post("/api/test/items", content=b'{"name": "x", ', headers=headers), 400)
    assert error["message"].startswith("malformed JSON body")
    assert error["param"] is None


def test_authentication_runs_before_validation(client: TestClient) -> None:
    _error(client.post("/api/test/items", json={"name": 1}), 401)


def test_teachloop_errors_keep_their_status_and_param(client: TestClient, owner_key: str) -> None:
    error = _error(client.get("/api/test/conflict", headers=_auth(owner_key)), 409)
    assert error == {
        "message": "version 3 already exists with other content",
        "type": "conflict",
        "param": "version",
        "code": "conflict",
    }


def test_unexpected_errors_are_500_without_internals(client: TestClient, owner_key: str) -> None:
    response = client.get("/api/test/crash", headers=_auth(owner_key))
    error = _error(response, 500)
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    assert error["type"] == "internal_error"


def test_requests_record_when_a_key_was_last_used(client: TestClient, owner_key: str, deps: AppDeps) -> None:
    with deps.database.session(write=False) as s:
        principal = ApiKeys(s).authenticate(owner_key, touch=False)
        assert ApiKeys(s).get(principal.org_id, principal.key_id).last_used_at is None
    assert client.get("/api/whoami", headers=_auth(owner_key)).status_code == 200
    with deps.database.session(write=False) as s:
        assert ApiKeys(s).get(principal.org_id, principal.key_id).last_used_at is not None

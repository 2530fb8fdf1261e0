"""Schemathesis against ``/api/openapi.json``: no 5xx, and every response is what the document says.

The app runs in process on a migrated SQLite file with the echo engine (the
serving fakes of ``tests/unit/serve``), so every route answers for real: chat
and legacy completions generate, responses are stored, deployments and
datasets are written. The schema is loaded from the app's own authenticated
``/api/openapi.json``; every operation in it becomes one test (none is
skipped: a count check below fails if the document loses operations) that
sends a bounded number of generated requests -- valid ones and, in
schemathesis's negative mode, invalid ones -- with an owner key and checks
that none answers 5xx and that each status, content type and body conforms
to the document (the error body of every 4xx/5xx included). Derandomized, no
shrinking: the same examples every run, about a minute in all.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")  # a dev dependency: CI installs it (pyproject `dev` extra)

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from teachloop.app import AppDeps, create_app  # noqa: E402
from teachloop.core.settings import Settings  # noqa: E402
from teachloop.core.tenancy import Role  # noqa: E402
from teachloop.render import Renderer  # noqa: E402
from teachloop.serve import Serving, ServingConfig  # noqa: E402
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy  # noqa: E402
from tests._tiny import tiny_tokenizer  # noqa: E402
from tests.unit.serve.fakes import EchoEngine  # noqa: E402

BASE = "tiny-base"
#: Operations the document must hold at least (a router dropped from the app fails the count test).
MIN_OPERATIONS = 50
#: Routes only a platform operator key may call.
OPERATOR_PATHS = frozenset({"/metrics", "/api/operator/stats", "/api/billing/prices",
                            "/api/billing/orgs/{org_id}/invoices", "/api/billing/orgs/{org_id}/quotas"})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class _World:
    def __init__(self, tmp: Path) -> None:
        self.database = Database(f"sqlite:///{tmp / 'teachloop.db'}")
        self.database.migrate()
        self.blobs = BlobStore(tmp / "blobs")
        with self.database.session() as s:
            tenancy = Tenancy(s)
            org = tenancy.create_org("acme")
            user = tenancy.create_user("owner@acme.test")
            tenancy.add_member(org.id, user.id, Role.OWNER)
            self.key = ApiKeys(s).create_key(org.id, user.id, Role.OWNER, "owner").secret
            self.operator_key = ApiKeys(s).create_operator_key(org.id, "operator").secret
        tokenizer = tiny_tokenizer()
        self.serving = Serving(self.database, self.blobs, engine=EchoEngine(tokenizer), renderer=Renderer(tokenizer),
                               base_model=BASE, config=ServingConfig(sync_interval_s=0.1, max_rows=8, max_queue=64))
        self.serving.start()
        settings_ = Settings(home=tmp, model_cache=tmp / "models", database_url="sqlite://", blob_url=str(tmp),
                             max_body_bytes=256 * 1024)
        self.app = create_app(AppDeps(settings_, self.database, self.blobs, serving=self.serving))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def headers_for(self, path: str) -> dict[str, str]:
        """The operator key for the platform operator's routes (an owner gets 403 there), else the owner key."""
        key = self.operator_key if path in OPERATOR_PATHS else self.key
        return {"Authorization": f"Bearer {key}"}

    def close(self) -> None:
        self.serving.close()
        self.database.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_World]:
    w = _World(tmp_path_factory.mktemp("schemathesis"))
    # something to find: a deployment, a trace with feedback, a dataset
    from fastapi.testclient import TestClient

    with TestClient(w.app) as client:
        r = client.post("/api/deployments", json={"name": "tiny"}, headers=w.headers)
        assert r.status_code == 201, r.text
        r = client.post("/v1/chat/completions", headers=w.headers,
                        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        r = client.post(f"/api/traces/{r.json()['id']}/feedback", json={"score": 1}, headers=w.headers)
        assert r.status_code == 201, r.text
        rows = [{"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]}]
        r = client.post("/api/datasets", json={"name": "calc", "license": "MIT", "rows": rows}, headers=w.headers)
        assert r.status_code == 201, r.text
    yield w
    w.close()


def _document() -> dict[str, Any]:
    """The OpenAPI document of an app over an unmigrated in-memory database (building the document reads nothing).

    Parametrizing needs the operations at collection time; schemathesis's lazy ``from_fixture`` loader does
    not run under pytest 9, so the tests are generated from this document and
    ``test_the_served_document_is_the_one_tested`` checks it equals what ``/api/openapi.json`` serves.
    """
    tmp = Path(tempfile.mkdtemp(prefix="teachloop-openapi-"))
    try:
        database = Database("sqlite://")
        settings_ = Settings(home=tmp, model_cache=tmp / "models", database_url="sqlite://", blob_url=str(tmp))
        deps = AppDeps(settings_, database, BlobStore(tmp / "blobs"))
        document: dict[str, Any] = create_app(deps).openapi()
        deps.close()
        return document
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_served_document_is_the_one_tested(world: _World) -> None:
    from fastapi.testclient import TestClient

    with TestClient(world.app) as client:
        r = client.get("/api/openapi.json", headers=world.headers)
        assert client.get("/api/openapi.json").status_code == 401
    assert r.status_code == 200
    assert r.json() == DOCUMENT


def test_the_document_describes_every_body() -> None:
    """No operation answers an undocumented ``dict[str, Any]``: every JSON 2xx body names a schema with properties."""
    doc = DOCUMENT
    operations = [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    assert len(operations) >= MIN_OPERATIONS, len(operations)
    components = doc["components"]["schemas"]
    assert "HTTPValidationError" not in components  # errors are documented once, in the app's own shape
    assert set(OPERATOR_PATHS) <= set(doc["paths"]), "an operator route moved: update OPERATOR_PATHS"
    bare = []
    for method, path, op in operations:
        assert "4XX" in op["responses"] and "5XX" in op["responses"], (method, path)
        for status, response in op["responses"].items():
            if not status.startswith("2"):
                continue
            json_schema = response.get("content", {}).get("application/json", {}).get("schema")
            if json_schema is None:
                continue
            ref = json_schema.get("$ref", "")
            target = components.get(ref.rsplit("/", 1)[-1], {}) if ref else json_schema
            if "properties" not in target:
                bare.append((method, path, status))
    assert not bare, f"responses without a documented body: {bare}"


@schema.parametrize()
@settings(max_examples=12, derandomize=True, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_document(case: Any, world: _World) -> None:
    case.call_and_validate(app=world.app, headers=world.headers_for(case.operation.path), checks=CHECKS)

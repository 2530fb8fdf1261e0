"""Serving fixtures: a migrated database, two organisations with keys, the echo engine, the app in process."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, _ROOT)

from teachloop.core.settings import Settings  # noqa: E402
from teachloop.core.tenancy import Role  # noqa: E402
from teachloop.render import Renderer  # noqa: E402
from teachloop.serve import Serving, ServingConfig  # noqa: E402
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy  # noqa: E402
from tests._tiny import tiny_tokenizer  # noqa: E402
from tests.unit.serve.fakes import EchoEngine  # noqa: E402

BASE = "tiny-base"


@dataclass(frozen=True)
class Tenant:
    org_id: str
    owner: str
    member: str
    viewer: str


@dataclass(frozen=True)
class Tenants:
    acme: Tenant
    globex: Tenant


@pytest.fixture(scope="session")
def tokenizer():  # type: ignore[no-untyped-def]
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def renderer(tokenizer) -> Renderer:  # type: ignore[no-untyped-def]
    return Renderer(tokenizer)


@pytest.fixture
def database(migrated_sqlite: Callable[[Path], str], tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite file database (copied from the session's template)."""
    db = Database(migrated_sqlite(tmp_path / "teachloop.db"))
    yield db
    db.close()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _tenant(db: Database, name: str) -> Tenant:
    with db.session() as s:
        tenancy = Tenancy(s)
        org = tenancy.create_org(name)
        user = tenancy.create_user(f"owner@{name}.test")
        tenancy.add_member(org.id, user.id, Role.OWNER)
        keys = ApiKeys(s)
        owner = keys.create_key(org.id, user.id, Role.OWNER, "owner").secret
        member = keys.create_key(org.id, None, Role.MEMBER, "product").secret
        viewer = keys.create_key(org.id, user.id, Role.VIEWER, "viewer").secret
        return Tenant(org.id, owner, member, viewer)


@pytest.fixture
def tenants(database: Database) -> Tenants:
    return Tenants(_tenant(database, "acme"), _tenant(database, "globex"))


@pytest.fixture
def engine(tokenizer) -> EchoEngine:  # type: ignore[no-untyped-def]
    return EchoEngine(tokenizer)


@pytest.fixture
def serving(database: Database, blobs: BlobStore, engine: EchoEngine, renderer: Renderer) -> Iterator[Serving]:
    s = Serving(database, blobs, engine=engine, renderer=renderer, base_model=BASE,
                config=ServingConfig(sync_interval_s=0.1, max_rows=8, max_queue=4))
    s.start()
    yield s
    s.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, model_cache=tmp_path / "models", database_url="sqlite://", blob_url=str(tmp_path),
                    max_body_bytes=256 * 1024)


@pytest.fixture
def client(serving: Serving, database: Database, blobs: BlobStore, settings: Settings, tenants: Tenants):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from teachloop.app import AppDeps, create_app

    deps = AppDeps(settings, database, blobs, serving=serving)
    with TestClient(create_app(deps)) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}

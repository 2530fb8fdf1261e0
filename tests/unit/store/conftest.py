"""Store fixtures: every ``db`` test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from teachloop.core.tenancy import Role
from teachloop.store import Database, Tenancy
from teachloop.store.schema import Membership


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL: a fresh SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(db_url: str, migrated_sqlite: Callable[[Path], str], open_database: Callable[[str], Database]) -> Database:
    """A migrated database, emptied around the test (PostgreSQL is shared by the session; a SQLite file is a copy
    of the session's migrated template, so ``migrate`` here is the no-op it is on an up-to-date database)."""
    if db_url.startswith("sqlite:///"):
        migrated_sqlite(Path(db_url.removeprefix("sqlite:///")))
    return open_database(db_url)


def _make_tenant(db: Database, name: str) -> Membership:
    with db.session() as s:
        tenancy = Tenancy(s)
        org = tenancy.create_org(name)
        user = tenancy.create_user(f"owner@{name}.test")
        return tenancy.add_member(org.id, user.id, Role.OWNER)


@pytest.fixture
def tenant(db: Database) -> Membership:
    """The owner's membership of organisation ``acme`` (user ``owner@acme.test``)."""
    return _make_tenant(db, "acme")


@pytest.fixture
def other_tenant(db: Database) -> Membership:
    """The owner's membership of organisation ``globex`` (user ``owner@globex.test``)."""
    return _make_tenant(db, "globex")

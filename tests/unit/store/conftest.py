"""Store fixtures: every ``db`` test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from teachloop.core.tenancy import Role
from teachloop.store import Database, Tenancy
from teachloop.store.schema import Membership


@pytest.fixture
def db(db_url: str, open_database: Callable[[str], Database]) -> Database:
    """A migrated database, emptied around the test (``db_url``: SQLite and PostgreSQL)."""
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

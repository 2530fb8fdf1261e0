"""Database: URLs, connection errors, SQLite pragmas, sessions, migrations and schema drift."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import ForeignKey, select

from teachloop.core.errors import ConfigurationError, Conflict, ServiceUnavailable
from teachloop.store import Database, Tenancy, head_revision, mask_url
from teachloop.store.db import normalise_url
from teachloop.store.schema import Base, Organisation


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_postgres_urls_are_rewritten_to_psycopg() -> None:
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:///x.db").drivername == "sqlite"


def test_password_is_masked() -> None:
    assert mask_url("postgresql://u:hunter2@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert "hunter2" not in mask_url("not a url://u:hunter2@h")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "database URL is empty"),
        ("nonsense", "cannot parse database URL"),
        ("mysql://u@h/db", "unsupported database URL"),
        ("postgresql+psycopg2://u@h/db", "unsupported database URL"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        Database(url)
    assert info.value.param == "TEACHLOOP_DATABASE_URL"


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` raise ImportError
    with pytest.raises(ConfigurationError) as info:
        Database("postgresql://u@127.0.0.1/db")
    assert str(info.value) == "PostgreSQL needs the 'postgres' extra: pip install 'teachloop[postgres]'"


def test_unreachable_postgres_is_service_unavailable_with_masked_url() -> None:
    url = f"postgresql://someone:hunter2@127.0.0.1:{_closed_port()}/db"
    with pytest.raises(ServiceUnavailable) as info:
        Database.connect(url)
    message = str(info.value)
    assert "hunter2" not in message
    assert "someone:***@127.0.0.1" in message
    assert "\n" not in message


def test_sqlite_file_gets_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    db = Database.connect(f"sqlite:///{tmp_path / 'nested' / 'folder' / 't.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    db.close()


def test_unmigrated_database_says_what_to_run(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 't.db'}")
    assert db.current_revision() is None
    with pytest.raises(ConfigurationError, match="teachloop up"):
        db.require_migrated()
    with pytest.raises(ConfigurationError, match="not migrated"), db.session() as s:
        Tenancy(s).list_orgs()
    db.close()


def test_migrate_is_idempotent(db: Database) -> None:
    assert db.migrate() == head_revision()
    assert db.migrate() == head_revision()
    assert db.is_migrated()
    db.require_migrated()


def test_orm_metadata_matches_migrated_schema(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_every_table_is_global_or_owned_by_an_organisation() -> None:
    for table in Base.metadata.sorted_tables:
        if table.info.get("global"):
            continue
        assert "org_id" in table.c, f"{table.name} has no org_id: inherit OrgOwned or mark it GLOBAL_TABLE"
        column = table.c.org_id
        assert not column.nullable, table.name
        assert any(
            isinstance(fk, ForeignKey) and fk.target_fullname == "organisations.id"
            for fk in column.foreign_keys
        )


def test_session_rolls_back_everything_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        Tenancy(s).create_org("half-done")
        raise RuntimeError("boom")
    with db.session(write=False) as s:
        assert s.scalars(select(Organisation)).all() == []


def test_read_session_never_persists(db: Database) -> None:
    with db.session(write=False) as s:
        Tenancy(s).create_org("ghost")
    with db.session(write=False) as s:
        assert Tenancy(s).list_orgs() == []


def test_rows_read_stay_readable_after_the_session(db: Database) -> None:
    with db.session() as s:
        Tenancy(s).create_org("kept")
    for write in (True, False):
        with db.session(write=write) as s:
            [org] = Tenancy(s).list_orgs()
        assert org.name == "kept" and org.created_at is not None


def test_integrity_errors_become_conflicts(db: Database) -> None:
    with db.session() as s:
        s.add(Organisation(name="twice"))
    with pytest.raises(Conflict), db.session() as s:
        s.add(Organisation(name="twice"))
    with db.session(write=False) as s:
        assert [o.name for o in Tenancy(s).list_orgs()] == ["twice"]


def test_timestamps_are_aware_utc(db: Database) -> None:
    with db.session() as s:
        org_id = Tenancy(s).create_org("clock").id
    with db.session(write=False) as s:
        org = Tenancy(s).get_org(org_id)
        assert org.created_at.utcoffset() is not None
        assert org.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_core_connection_commits_reads_roll_back_and_errors_are_translated(db: Database) -> None:
    """``Database.connection`` is ``session`` without the ORM: same transaction rules, same errors."""
    table = Organisation.__table__
    with db.connection() as conn:
        conn.execute(table.insert(), {"id": "org_kept", "name": "kept"})
    with db.connection(write=False) as conn:
        conn.execute(table.insert(), {"id": "org_ghost", "name": "ghost"})
    with pytest.raises(RuntimeError), db.connection() as conn:
        conn.execute(table.insert(), {"id": "org_half", "name": "half-done"})
        raise RuntimeError("boom")
    with pytest.raises(Conflict), db.connection() as conn:
        conn.execute(table.insert(), {"id": "org_twice", "name": "kept"})
    with db.connection(write=False) as conn:
        assert [r.name for r in conn.execute(select(Organisation.name))] == ["kept"]


@pytest.mark.parametrize("core", [True, False])
def test_a_write_that_cannot_get_the_sqlite_lock_is_busy_not_a_driver_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, core: bool
) -> None:
    """``BEGIN IMMEDIATE`` goes straight to the driver; when the lock stays taken it is ``ServiceUnavailable``."""
    import sqlite3

    from teachloop.store import db as db_module

    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 50)
    database = Database(f"sqlite:///{tmp_path / 'locked.db'}")
    database.migrate()
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ServiceUnavailable, match="busy"), database.connection() if core else database.session():
            pass
        with database.connection(write=False) as conn:  # a read never waits for the lock
            assert conn.execute(select(Organisation.id)).all() == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        database.close()
    with database.connection() if core else database.session():
        pass  # the lock is free again: the pooled connection still works

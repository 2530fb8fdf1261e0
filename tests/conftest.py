"""Fixtures shared by every test package.

- ``postgres_url``: a throwaway PostgreSQL database for the test session, created
  on the server at ``TEACHLOOP_TEST_POSTGRES_URL`` (default: trust auth on
  127.0.0.1:5432 as ``postgres``, then ``root``) and dropped at the end. If the
  server is unreachable the tests that need it FAIL, so CI cannot pass by
  skipping them; set ``TEACHLOOP_SKIP_POSTGRES=1`` to skip them locally.
- ``teachloop_home``: an empty ``TEACHLOOP_HOME`` for the test, with the other
  location and key variables cleared so the developer's own setup never leaks in.
- ``open_database``: ``open(url) -> Database``, migrated, closed after the test. A PostgreSQL one is
  emptied before and after: the session's database is shared by every test of an xdist worker, and a row
  one test leaves behind (a queued job, say) must not reach the next, whatever order the worker runs them in.
- ``db_url`` (parametrized: every test that takes it runs on both): a migrated SQLite file (a copy of the
  template below), or the session's PostgreSQL database; open it with ``open_database``.
- ``migrated_sqlite``: ``make(path) -> url``, a migrated SQLite file at ``path``. The
  migrations run once per session, on a template that each call copies (0.04 s, where
  running them costs ~0.4 s a test). The SQLite migration path itself is tested in
  ``tests/unit/store/test_store_db.py``, which migrates its own files.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under ``pytest -n N`` each worker gets one core's worth of threads: N processes with torch's default
    # team (one thread per core) oversubscribe the cores, and OpenMP's spinning teams then slow every model
    # test by an order of magnitude. Set before torch is imported (servers a test starts inherit it).
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

_DEFAULT_SERVERS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")
_ISOLATED_VARS = (
    "TEACHLOOP_DATABASE_URL",
    "TEACHLOOP_BLOB_URL",
    "TEACHLOOP_MODEL_CACHE",
    "TEACHLOOP_API_KEY",
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database that lives for the test session."""
    if os.environ.get("TEACHLOOP_SKIP_POSTGRES") == "1":
        pytest.skip("TEACHLOOP_SKIP_POSTGRES=1")
    try:
        import psycopg
    except ImportError:
        pytest.fail("PostgreSQL tests need psycopg: pip install -e '.[dev,postgres]'")
    configured = os.environ.get("TEACHLOOP_TEST_POSTGRES_URL")
    servers = (configured,) if configured else _DEFAULT_SERVERS
    errors: list[str] = []
    for server in servers:
        try:
            admin = psycopg.connect(server, autocommit=True, connect_timeout=5)
        except psycopg.Error as err:
            errors.append(f"{server}: {str(err).strip().splitlines()[0]}")
            continue
        break
    else:
        pytest.fail(
            "PostgreSQL is unreachable ("
            + "; ".join(errors)
            + "); start it, point TEACHLOOP_TEST_POSTGRES_URL "
            "at a server, or set TEACHLOOP_SKIP_POSTGRES=1 to skip these tests locally"
        )
    name = f"teachloop_t_{secrets.token_hex(5)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _empty(database: Any) -> None:
    from teachloop.store.schema import Base

    with database.engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(t.name for t in Base.metadata.sorted_tables)} CASCADE")


@pytest.fixture
def open_database() -> Iterator[Callable[[str], Any]]:
    """``open(url)``: a migrated ``Database`` at ``url``, closed after the test; PostgreSQL emptied before and after."""
    from teachloop.store import Database

    opened: list[Database] = []

    def open_(url: str) -> Database:
        database = Database(url)
        database.migrate()  # a no-op on a copy of the migrated SQLite template
        opened.append(database)
        if database.dialect == "postgresql":
            _empty(database)
        return database

    yield open_
    for database in opened:
        try:
            if database.dialect == "postgresql":
                _empty(database)
        finally:
            database.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> str:
    """A migrated SQLite file of this test, or the session's PostgreSQL database (``open_database`` empties it)."""
    if request.param == "sqlite":
        return migrated_sqlite(tmp_path / "test.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a test's in-process ``teachloop serve``/``up`` did to the root logger (handlers, level)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def teachloop_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TEACHLOOP_HOME for this test (other location variables unset)."""
    home = tmp_path / "home"
    monkeypatch.setenv("TEACHLOOP_HOME", str(home))
    for var in _ISOLATED_VARS:
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], str]:
    """``make(path)``: copy the session's migrated SQLite template to ``path``; return its URL."""
    from teachloop.store import Database

    template = tmp_path_factory.mktemp("migrated-sqlite") / "teachloop.db"
    db = Database(f"sqlite:///{template}")
    db.migrate()
    db.close()

    def make(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, path)
        return f"sqlite:///{path}"

    return make

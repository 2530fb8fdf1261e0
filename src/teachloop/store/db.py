"""The database handle: engine, sessions, migrations and one-line errors.

``Database(url)`` builds an engine for one of two backends:

- SQLite (``sqlite:///path``, the embedded default): WAL journal, ``foreign_keys=ON``,
  a 5 s ``busy_timeout``. A write session (the default) opens with ``BEGIN IMMEDIATE``,
  so writers queue for the lock up front instead of failing half-way when two
  deferred transactions both try to upgrade. ``sqlite://`` / ``:memory:`` is one
  shared in-memory connection, for tests.
- PostgreSQL (``postgresql://`` or ``postgres://``, rewritten to ``postgresql+psycopg://``)
  through psycopg 3 (the ``postgres`` extra), with pre-ping and a 5 s connect timeout.

``session()`` commits on success and rolls back on any exception, so a failed
operation leaves nothing behind. Driver errors never escape raw: unreachable
servers, locked files and unmigrated schemas become ``ServiceUnavailable`` or
``ConfigurationError`` naming the URL with its password masked.

``connection()`` is ``session()`` without the ORM: a Core ``Connection`` in one transaction (the same
``BEGIN IMMEDIATE``, commit or rollback, and error translation), for the statements every request runs
(the key check, the deployment read, the trace writer's inserts), where an ORM ``Session``'s own
bookkeeping costs more CPU than the statement (about 60 us of ~100 us per read on SQLite).

``run_read(fn, *args)`` runs a short blocking read for a coroutine: on SQLite in the calling thread
(``reads_inline``: a WAL read transaction never waits for the write lock, and the work holds the GIL
for all but the C step, so a worker thread would only add two hops, ~0.25 ms, to every request);
on PostgreSQL in a worker thread, since a read waits on the network. Writes never go through it.

``migrate()`` runs the Alembic migrations shipped in ``store/migrations`` up to
head. This module knows nothing about the tables themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from teachloop.core.errors import ConfigurationError, Conflict, ServiceUnavailable, TeachloopError
from teachloop.core.settings import Settings

_P = ParamSpec("_P")
_T = TypeVar("_T")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 5000
POSTGRES_CONNECT_TIMEOUT_S = 5
_PARAM = "TEACHLOOP_DATABASE_URL"
_BEGIN_OPTION = "teachloop_sqlite_begin"
_BEGIN_STATEMENTS = {"": "BEGIN", "IMMEDIATE": "BEGIN IMMEDIATE"}
_MIGRATE_LOCK = 0x7E4C_4F4F  # pg_advisory_xact_lock key serialising concurrent migrate() calls

Dialect = Literal["sqlite", "postgresql"]


def mask_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        head, sep, tail = url.partition("://")
        if sep and "@" in tail:
            creds, _, rest = tail.rpartition("@")
            user = creds.split(":", 1)[0]
            return f"{head}://{user}:***@{rest}" if ":" in creds else url
        return url


def normalise_url(url: str) -> URL:
    """Parse and check a database URL; ``postgresql://`` becomes ``postgresql+psycopg://``.

    Raises ``ConfigurationError`` for an unparseable URL, an unsupported backend,
    or a PostgreSQL URL without psycopg installed.
    """
    text = url.strip()
    if not text:
        raise ConfigurationError(
            "database URL is empty; use sqlite:///<path> or postgresql://...", param=_PARAM
        )
    try:
        parsed = make_url(text)
    except exc.ArgumentError:
        raise ConfigurationError(
            f"cannot parse database URL {mask_url(text)!r}; use sqlite:///<path> or postgresql://user@host/db",
            param=_PARAM,
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return parsed
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        try:
            importlib.import_module("psycopg")
        except ImportError:
            raise ConfigurationError(
                "PostgreSQL needs the 'postgres' extra: pip install 'teachloop[postgres]'", param=_PARAM
            ) from None
        return parsed.set(drivername="postgresql+psycopg")
    raise ConfigurationError(
        f"unsupported database URL {mask_url(parsed)!r}; teachloop runs on sqlite:///<path> "
        "or postgresql://user@host/db (psycopg 3)",
        param=_PARAM,
    )


def translate_error(err: exc.DBAPIError, url: str) -> TeachloopError:
    """A one-line teachloop error for a driver error met while using the database at ``url``."""
    detail = (str(err.orig).strip().splitlines() or [type(err.orig).__name__])[0]
    lowered = detail.lower()
    if isinstance(err, exc.IntegrityError):
        return Conflict(f"the write conflicts with existing data: {detail}")
    if (
        "no such table" in lowered
        or "undefinedtable" in type(err.orig).__name__.lower()
        or ("relation" in lowered and "does not exist" in lowered)
    ):
        return ConfigurationError(
            f"database {url} is not migrated ({detail}); run `teachloop admin init` or `teachloop up`",
            param=_PARAM,
        )
    if "database is locked" in lowered:
        return ServiceUnavailable(f"database {url} is busy: another writer held the lock for over 5 s; retry")
    return ServiceUnavailable(
        f"cannot use database {url}: {detail}; check {_PARAM} and that the database server is running"
    )


@functools.cache
def head_revision() -> str:
    """The newest migration shipped with this version of teachloop."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise ConfigurationError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


class Database:
    """One database: an engine plus sessions, migrations and error translation.

    ``Database(url)`` is lazy (nothing connects until first use);
    ``Database.connect(url)`` also checks that the server answers.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url: URL = normalise_url(url)
        self.display_url: str = mask_url(self.url)
        self.dialect: Dialect = "sqlite" if self.url.get_backend_name() == "sqlite" else "postgresql"
        self.engine: Engine = self._build_engine(echo)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def connect(cls, url: str, *, echo: bool = False) -> Database:
        """A database whose server has answered ``SELECT 1``; raises ``ServiceUnavailable`` otherwise."""
        db = cls(url, echo=echo)
        try:
            db.ping()
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """``Database.connect(settings.database_url)``."""
        return cls.connect(settings.database_url)

    @property
    def is_memory(self) -> bool:
        """Whether this is an in-memory SQLite database (one shared connection)."""
        return self.dialect == "sqlite" and self.url.database in (None, "", ":memory:")

    @property
    def reads_inline(self) -> bool:
        """Whether ``run_read`` runs reads in the calling thread (SQLite) rather than a worker (PostgreSQL)."""
        return self.dialect == "sqlite"

    async def run_read(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)``, a short read, from a coroutine: inline on SQLite, in a worker thread on
        PostgreSQL (see the module docstring). ``fn`` must not write: a write may wait for SQLite's lock."""
        if self.reads_inline:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _build_engine(self, echo: bool) -> Engine:
        if self.dialect == "postgresql":
            return create_engine(
                self.url,
                echo=echo,
                pool_pre_ping=True,
                connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
            )
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if self.is_memory:
            engine = create_engine(self.url, echo=echo, connect_args=connect_args, poolclass=StaticPool)
        else:
            path = Path(str(self.url.database)).expanduser()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigurationError(
                    f"cannot create the folder for the SQLite database {path}: {err.strerror}", param=_PARAM
                ) from None
            engine = create_engine(self.url, echo=echo, connect_args=connect_args)
        memory = self.is_memory

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
            cursor = dbapi_connection.cursor()
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # straight on the driver's connection: through ``exec_driver_sql`` this one statement cost as much
            # CPU as the read it opens (every request opens several); errors are wrapped as SQLAlchemy's would be
            statement = _BEGIN_STATEMENTS[conn.get_execution_options().get(_BEGIN_OPTION, "")]
            try:
                conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
            except sqlite3.Error as err:
                raise exc.DBAPIError.instance(statement, (), err, sqlite3.Error) from err

        return engine

    @contextlib.contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """A session in one transaction: committed if the block succeeds, rolled back if it raises.

        ``write=False`` opens a read transaction (SQLite: deferred, not holding the
        write lock) and always rolls back, so nothing it does persists; the objects
        it loaded stay readable afterwards (detached), as after a commit.
        """
        session = self._sessions()
        try:
            if write and self.dialect == "sqlite":
                session.connection(execution_options={_BEGIN_OPTION: "IMMEDIATE"})
            yield session
            if write:
                session.commit()
            else:  # detach first, so the rows read stay readable after the rollback
                session.expunge_all()
                session.rollback()
        except exc.DBAPIError as err:
            _quiet_rollback(session)
            raise translate_error(err, self.display_url) from err
        except BaseException:
            _quiet_rollback(session)
            raise
        finally:
            session.close()

    @contextlib.contextmanager
    def connection(self, *, write: bool = True) -> Iterator[Connection]:
        """``session()`` as a Core ``Connection``: one transaction, committed if the block succeeds (``write``)
        or always rolled back (``write=False``: a read, SQLite's deferred ``BEGIN``), rolled back if it raises;
        driver errors translated as in ``session()``. No ORM objects: execute Core statements on it."""
        try:
            with self.engine.connect() as conn:
                if write and self.dialect == "sqlite":
                    conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
                conn.begin()
                try:
                    yield conn
                except BaseException:
                    with contextlib.suppress(exc.DBAPIError):
                        conn.rollback()
                    raise
                if write:
                    conn.commit()
                else:
                    conn.rollback()
        except exc.DBAPIError as err:
            raise translate_error(err, self.display_url) from err

    def ping(self) -> None:
        """Run ``SELECT 1``; raise ``ServiceUnavailable`` naming the URL if the database does not answer."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
                conn.rollback()
        except exc.DBAPIError as err:
            raise translate_error(err, self.display_url) from err

    # -- migrations -------------------------------------------------------------------------

    def alembic_config(self) -> Any:
        """An Alembic ``Config`` for this database and the shipped migrations (for ``alembic.command``)."""
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option(
            "sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%")
        )
        return cfg

    def current_revision(self) -> str | None:
        """The migration the database is at (None for an empty database)."""
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as conn:
                revision = MigrationContext.configure(conn).get_current_revision()
                conn.rollback()
                return revision
        except exc.DBAPIError as err:
            raise translate_error(err, self.display_url) from err

    def is_migrated(self) -> bool:
        """Whether the database is at the newest shipped migration."""
        return self.current_revision() == head_revision()

    def require_migrated(self) -> None:
        """Raise ``ConfigurationError`` (saying what to run) unless the schema is at head."""
        current, head = self.current_revision(), head_revision()
        if current != head:
            state = "empty" if current is None else f"at migration {current}"
            raise ConfigurationError(
                f"database {self.display_url} is {state}, this teachloop needs {head}; "
                "run `teachloop up` or `teachloop admin init` to migrate it",
                param=_PARAM,
            )

    def migrate(self) -> str:
        """Upgrade the schema to head (idempotent, safe to run concurrently on PostgreSQL); return head."""
        from alembic import command

        cfg = self.alembic_config()
        try:
            with self.engine.connect() as conn:
                raw = conn.connection.driver_connection
                if self.dialect == "sqlite":  # table rebuilds in batch migrations need FKs off
                    raw.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
                try:
                    with conn.begin():
                        if self.dialect == "postgresql":
                            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK})")
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, "head")
                        if self.dialect == "sqlite":
                            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                            if broken:
                                raise ConfigurationError(f"migration left broken foreign keys: {broken[:5]}")
                finally:
                    if self.dialect == "sqlite":
                        raw.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
        except exc.DBAPIError as err:
            raise translate_error(err, self.display_url) from err
        return head_revision()

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"


def _quiet_rollback(session: Session) -> None:
    with contextlib.suppress(exc.DBAPIError):
        session.rollback()


__all__ = ["MIGRATIONS_DIR", "Database", "head_revision", "mask_url", "normalise_url", "translate_error"]

"""Shared CLI plumbing: the rich console, settings, and one-line error handling.

Every command body runs inside ``handle_errors()``: a ``TeachloopError`` (or a
``KeyboardInterrupt``) becomes one red line on stderr and a non-zero exit,
never a traceback. Heavy imports stay inside command bodies so ``--help`` is fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from teachloop.core.errors import TeachloopError
from teachloop.core.settings import Settings

console = Console()
err_console = Console(stderr=True)


def settings() -> Settings:
    """Settings from the environment, errors rendered as CLI errors."""
    with handle_errors():
        return Settings.from_env()
    raise AssertionError("unreachable")  # pragma: no cover


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error line and return an Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn teachloop errors into one-line CLI errors with exit status 1 (2 for bad input)."""
    try:
        yield
    except TeachloopError as err:
        code = 2 if 400 <= err.status < 500 else 1
        raise fail(str(err), code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def is_tty() -> bool:
    """Whether stdout is a terminal (progress bars and live views only then)."""
    return sys.stdout.isatty()


__all__ = ["console", "err_console", "fail", "handle_errors", "is_tty", "settings"]


def pick_org(tenancy: Any, ref: str | None) -> Any:
    """The organisation named ``ref`` (name or id), or the only one; one-line errors otherwise."""
    from teachloop.core.errors import ConfigurationError, InvalidInput

    if ref:
        return tenancy.find_org(ref)
    orgs = tenancy.list_orgs()
    if not orgs:
        raise ConfigurationError("there is no organisation yet; run `teachloop admin init`")
    if len(orgs) > 1:
        names = ", ".join(o.name for o in orgs[:5]) + (", ..." if len(orgs) > 5 else "")
        raise InvalidInput(f"there are {len(orgs)} organisations ({names}); pass --org", param="org")
    return orgs[0]


def connect_database() -> Any:
    """The configured database, checked to be migrated (closed again if it is not); the caller closes it."""
    from teachloop.store import Database

    database = Database.connect(settings().database_url)
    try:
        database.require_migrated()
    except BaseException:
        database.close()
        raise
    return database


@contextlib.contextmanager
def open_database() -> Iterator[Any]:
    """``connect_database()`` for a ``with`` block (for commands that span organisations; else ``StoreContext``)."""
    database = connect_database()
    try:
        yield database
    finally:
        database.close()


class StoreContext:
    """The configured database (migrated), blob store and chosen organisation, for one command.

    Use as a context manager; the database connections are closed on exit.
    """

    def __init__(self, org: str | None = None) -> None:
        from teachloop.store import BlobStore, Tenancy

        self.settings = settings()
        self.database = connect_database()
        try:
            with self.database.session(write=False) as session:
                chosen = pick_org(Tenancy(session), org)
                self.org_id: str = chosen.id
                self.org_name: str = chosen.name
        except BaseException:
            self.database.close()
            raise
        self.blobs = BlobStore(self.settings.blob_url)

    def __enter__(self) -> StoreContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.database.close()


#: The shared ``--remote URL`` option: run the command against a teachloop server instead of the local store.
REMOTE_HELP = ("Run against the teachloop server at this URL (e.g. http://127.0.0.1:8000) with $TEACHLOOP_API_KEY, "
               "instead of the local database.")


def remote_option() -> Any:
    """``--remote URL`` (or ``$TEACHLOOP_URL``), the same in every command that can run against a server."""
    return typer.Option(None, "--remote", envvar="TEACHLOOP_URL", help=REMOTE_HELP, show_default=False)


def remote_client(url: str) -> Any:
    """A ``teachloop.Client`` of ``url`` (the key from ``$TEACHLOOP_API_KEY``)."""
    from teachloop.client import Client

    return Client(url)


__all__ += ["REMOTE_HELP", "StoreContext", "pick_org", "remote_client", "remote_option"]

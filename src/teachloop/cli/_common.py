"""Shared CLI plumbing: the rich console, settings, and one-line error handling.

Every command body runs inside ``handle_errors()``: a ``TeachloopError`` (or a
``KeyboardInterrupt``) becomes one red line on stderr and a non-zero exit,
never a traceback. Heavy imports stay inside command bodies so ``--help`` is fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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

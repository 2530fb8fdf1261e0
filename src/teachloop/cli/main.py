"""The ``teachloop`` command: one typer app with a sub-app per command group.

Groups live in sibling modules (``models.py``, ``admin.py``, ``server.py``, ...),
imported and registered here; each keeps heavy imports inside its command bodies.
"""

from __future__ import annotations

import typer

from teachloop import __version__
from teachloop.cli import admin, data, demo, deploy, env, loop, market, models, server, traces, train, work

app = typer.Typer(
    name="teachloop",
    help="Serve, reward, train and redeploy LoRA-adapted language models in one loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: (typer app, group name or None for top-level commands): real imports, so the import-linter sees them
_GROUPS: list[tuple[typer.Typer, str | None]] = [
    (server.app, None),  # up, serve, worker
    (models.app, "models"),
    (admin.app, "admin"),
    (env.app, "env"),
    (train.app, None),  # train
    (train.runs_app, "runs"),
    (deploy.app, "deploy"),
    (traces.app, "traces"),
    (loop.app, "loop"),
    (data.app, "data"),
    (market.app, "market"),
    (work.app, "work"),
    (demo.app, None),  # demo
]


def _register() -> None:
    for sub, group in _GROUPS:
        if group is None:
            for command in sub.registered_commands:
                app.registered_commands.append(command)
        else:
            app.add_typer(sub, name=group)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"teachloop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Serve, reward, train and redeploy LoRA-adapted language models in one loop."""


_register()


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]

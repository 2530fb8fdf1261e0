"""The ``teachloop`` command: one typer app with a sub-app per command group.

Groups live in sibling modules (``models.py``, ``admin.py``, ``server.py``, ...)
and are registered here; each keeps heavy imports inside its command bodies.
"""

from __future__ import annotations

import importlib

import typer

from teachloop import __version__

app = typer.Typer(
    name="teachloop",
    help="Serve, reward, train and redeploy LoRA-adapted language models in one loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: (module, group name or None for top-level commands)
_GROUPS: list[tuple[str, str | None]] = [
    ("teachloop.cli.server", None),  # up, serve, worker
    ("teachloop.cli.models", "models"),
    ("teachloop.cli.admin", "admin"),
    ("teachloop.cli.env", "env"),
    ("teachloop.cli.train", None),  # train
    ("teachloop.cli.train:runs_app", "runs"),
    ("teachloop.cli.deploy", "deploy"),
    ("teachloop.cli.traces", "traces"),
    ("teachloop.cli.loop", "loop"),
    ("teachloop.cli.data", "data"),
    ("teachloop.cli.demo", None),  # demo
]


def _register() -> None:
    for module_name, group in _GROUPS:
        module_name, _, attr = module_name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a group whose module is not written yet
            if err.name == module_name:
                continue
            raise
        sub = getattr(module, attr or "app")
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

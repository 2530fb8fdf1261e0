"""``teachloop models``: pull, add, list, verify and remove models in the local model cache.

A thin layer over ``teachloop.engine.models`` (imported inside each command so
``--help`` stays fast): it draws progress and tables, and turns errors into one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from teachloop.cli._common import console, err_console, handle_errors, remote_client, remote_option, settings

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from teachloop.engine.models import ModelInfo, PullProgress

app = typer.Typer(
    help="Manage the local model cache (converted base models).",
    no_args_is_help=True,
    add_completion=False,
)

_STAGE_LABEL = {"download": "download", "convert": "convert (dequantise)", "write": "write + hash"}


@app.command("pull")
def pull(
    name: str = typer.Argument(
        "smollm2-135m-instruct", help="A known model name or a Hugging Face hub id org/name."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Replace a cached copy, even a corrupt one."),
) -> None:
    """Download and convert a model into the cache (the default model unless NAME is given)."""
    with handle_errors():
        from teachloop.engine.models import pull_model

        cfg = settings()
        with _ProgressView() as view:
            path = pull_model(cfg, name, force=force, progress=view.update)
        console.print(f"[green]ok[/] {name}: {path}", highlight=False)


@app.command("add")
def add(
    name: str = typer.Argument(..., help="Name to cache it under: letters, digits, '.', '_', '-' (not a known model name)."),
    folder: Path = typer.Argument(..., help="A local Hugging Face model folder: config.json, weights and a tokenizer."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace a cached model of the same name."),
) -> None:
    """Copy a local model folder into the cache, so TEACHLOOP_MODEL (or --model) can name it."""
    with handle_errors():
        from teachloop.core.errors import Conflict, InvalidInput
        from teachloop.engine.models import add_model, list_models

        cfg = settings()
        src = folder.expanduser()
        if not src.is_dir():
            raise InvalidInput(f"no folder at {src}", param="folder")
        problem = _model_folder_problem(src)
        if problem:
            raise InvalidInput(f"{src} is not a model folder: {problem}", param="folder")
        if not force and any(m.name == name or m.path.name == name for m in list_models(cfg)):
            raise Conflict(f"model {name!r} is already in the cache; pass --force to replace it")
        with _ProgressView({"download": "copy", "write": "hash"}) as view:
            path = add_model(cfg, name, src, force=force, progress=view.update)
        console.print(f"[green]ok[/] {name}: {path}", highlight=False, soft_wrap=True)


def _model_folder_problem(folder: Path) -> str | None:
    """What a Hugging Face model folder lacks for teachloop to load it, or ``None``."""
    if not (folder / "config.json").is_file():
        return "it has no config.json"
    weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")]
    if not weights:
        return "it has no weights (*.safetensors or pytorch_model*.bin)"
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return "it has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)"
    return None


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    remote: str | None = remote_option(),
) -> None:
    """List the models in the cache with their size and status (with --remote: the server's cache)."""
    with handle_errors():
        from teachloop.engine.models import list_models

        if remote:
            with remote_client(remote) as client:
                listed = client.list_models()
            for m in listed.data:
                line = {"name": m.name, "size": m.size_bytes, "status": m.status, "source": m.source,
                        "serving": m.serving}
                typer.echo(json.dumps(line) if as_json else f"{m.name}\t{m.size_bytes}\t{m.status}"
                           f"{'  (serving)' if m.serving else ''}")
            return

        cfg = settings()
        models = list_models(cfg)
        if as_json:
            for m in models:
                typer.echo(json.dumps(_info_dict(m)))
            return
        if not models:
            console.print(f"no models in {cfg.model_cache}; run `teachloop models pull`", highlight=False)
            return
        from rich.table import Table

        table = Table(title=f"models in {cfg.model_cache}", title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("status", overflow="fold")
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("source", overflow="fold")
        table.add_column("created (UTC)", no_wrap=True)
        for m in models:
            status = "[green]ok[/]" if m.status == "ok" else f"[red]corrupt[/]: {m.problem}"
            table.add_row(m.name, status, _human(m.size), m.source, m.created_at[:16].replace("T", " "))
        console.print(table)


@app.command("verify")
def verify(name: str = typer.Argument(..., help="A cached model name.")) -> None:
    """Check every file of a cached model against the sizes and sha256 in its manifest."""
    with handle_errors():
        from teachloop.engine.models import verify_model

        with _ProgressView({"write": "hash"}) as view:
            info = verify_model(settings(), name, progress=view.update)
        console.print(f"[green]ok[/] {info.name}: {_human(info.size)}, every file matches its sha256", highlight=False)


@app.command("rm")
def rm(name: str = typer.Argument(..., help="A cached model name.")) -> None:
    """Delete a model from the cache (pull it again to get it back)."""
    with handle_errors():
        from teachloop.engine.models import remove_model

        path = remove_model(settings(), name)
        console.print(f"removed {name} ({path})", highlight=False)


class _ProgressView:
    """Rich progress bars on a terminal, one plain line per stage otherwise (both on stderr)."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self._labels = {**_STAGE_LABEL, **(labels or {})}
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._said: set[str] = set()

    def __enter__(self) -> _ProgressView:
        if err_console.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                SpinnerColumn,
                Task,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.text import Text

            class SizeColumn(DownloadColumn):
                def render(self, task: Task) -> Text:
                    return super().render(task) if task.fields.get("bytes", True) else Text("")

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<22}"),
                BarColumn(),
                SizeColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            for stage, task in self._tasks.items():
                if exc[0] is None and stage != "write":
                    self._progress.update(task, completed=self._progress.tasks[task].total or 1)
            self._progress.stop()

    def update(self, event: PullProgress) -> None:
        if self._progress is None:
            if event.message and event.stage not in self._said:
                self._said.add(event.stage)
                err_console.print(f"{self._labels[event.stage]}: {event.message}", highlight=False)
            return
        task = self._tasks.get(event.stage)
        if task is None:
            for other in self._tasks.values():  # a new stage means the earlier ones are done
                self._progress.update(other, completed=self._progress.tasks[other].total or 1)
            task = self._progress.add_task(
                self._labels[event.stage], total=event.total, bytes=event.stage != "convert"
            )
            self._tasks[event.stage] = task
        if event.total is not None:
            self._progress.update(task, total=event.total, completed=event.done or 0)


def _info_dict(m: ModelInfo) -> dict[str, Any]:
    return {
        "name": m.name,
        "path": str(m.path),
        "size": m.size,
        "status": m.status,
        "source": m.source,
        "created_at": m.created_at,
        "problem": m.problem,
    }


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


__all__ = ["app"]

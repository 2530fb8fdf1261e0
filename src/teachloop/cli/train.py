"""``teachloop train`` and ``teachloop runs``: start, resume and inspect training runs.

``train CONFIG.toml [--section.field VALUE ...]`` validates the config, pins
its inputs (environment digests, dataset digests, skipped-row counts) before
loading the model, then runs with a live progress line per step. ``--resume
RUN`` continues a run from its last checkpoint. ``runs list`` and ``runs show
RUN`` print the record, the metric table, a reward (or loss) curve in the
terminal, and write an SVG plot with ``--plot FILE.svg`` (also with
``--json``), printing the absolute path written. Every check (config,
environments, datasets, context length from the model's ``config.json``)
runs before ``_build_engine`` loads the weights.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from teachloop.cli._common import (
    StoreContext,
    console,
    err_console,
    handle_errors,
    remote_client,
    remote_option,
)
from teachloop.core.errors import InvalidInput

app = typer.Typer(no_args_is_help=False)
runs_app = typer.Typer(help="List and inspect training runs.", no_args_is_help=True)

#: The metric columns of ``runs show`` (``kl``: runs recorded before kl_ref / kl_sampler were split).
_KEYS = ("reward_mean", "loss", "kl_ref", "kl_sampler", "entropy", "clip_frac", "tokens_per_s", "step_seconds")


class _TrainCommand(TyperCommand):
    """``train``'s command: --help also lists every config field (built when asked, not at import)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super().format_help(ctx, formatter)
        from rich.console import Console

        from teachloop.train.config import field_reference

        table = Table(title="Config fields: set in CONFIG.toml, or as --section.field VALUE / --section.field=VALUE "
                      "(before or after CONFIG)", title_justify="left", box=None, show_header=False)
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(style="yellow")
        table.add_column()
        for flag, kind, desc in field_reference():
            table.add_row(Text(flag), Text(kind), Text(desc))
        Console(highlight=False).print(table)


@app.command(
    "train",
    cls=_TrainCommand,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Train an adapter (grpo | sft | dpo) from a TOML config; any field can be overridden with "
    "--section.field VALUE, before or after CONFIG (e.g. --steps 20 --rl.group_size 8 --optim.lr 2e-4). "
    "Everything (config, environments, datasets, context length) is checked before the model's weights load.",
)
def train(
    ctx: typer.Context,
    config: Path = typer.Argument(None, help="The run's TOML config (omit with --resume; optional when flags "
                                  "give every required field)."),
    resume: str = typer.Option(None, "--resume", help="Continue run RUN from its last checkpoint."),
    org: str = typer.Option(None, "--org", help="Organisation (name or id); default: the only one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config and pin its inputs, then stop."),
    remote: str = remote_option(),
) -> None:
    """Run or resume a training run (with --remote: queue it on the server's worker)."""
    from teachloop.train.config import load_config, parse_command_line, validate_config
    from teachloop.train.runs import RunStore

    with handle_errors():
        # click binds the first extra token to CONFIG ("--steps" in "--steps 3 cfg.toml"); re-split them all
        tokens = ([str(config)] if config is not None else []) + list(ctx.args)
        positional, overrides = parse_command_line(tokens)
        if len(positional) > 1:
            raise InvalidInput(f"unexpected argument {positional[1]!r}; give one CONFIG.toml, and overrides as "
                               "--section.field VALUE", param=positional[1])
        config_path = Path(positional[0]) if positional else None
        if resume is None and config_path is None and not overrides:
            raise InvalidInput("give a CONFIG.toml (and/or --section.field flags) or --resume RUN", param="config")
        if resume is not None and (config_path is not None or overrides):
            raise InvalidInput("--resume takes no CONFIG and no overrides: a run keeps its config", param="resume")
        if remote:
            _submit_remote(remote, config_path, overrides, resume, dry_run)
            return
        with StoreContext(org) as store:
            run = None
            if resume is None:
                cfg = load_config(config_path, overrides)
            else:
                run = RunStore(store.database, store.blobs).get(store.org_id, resume)
                cfg = validate_config(run.config)
            from contextlib import nullcontext

            from teachloop.envs.registry import untrusted_references

            # a stored config is untrusted: its environments may not be paths or module:attr (they run code)
            with untrusted_references() if run is not None else nullcontext():
                _run(cfg, store, run, dry_run)


def _submit_remote(url: str, config_path: Path | None, overrides: dict[str, Any], resume: str | None,
                   dry_run: bool) -> None:
    """Queue the run (or its resume) on the server at ``url``; its worker trains it."""
    import tomllib

    from teachloop.train.config import _merge

    if dry_run:
        raise InvalidInput("--dry-run checks inputs on this machine; drop --remote", param="dry_run")
    with remote_client(url) as client:
        if resume is not None:
            run = client.resume_run(resume)
        else:
            raw: dict[str, Any] = {}
            if config_path is not None:
                try:
                    raw = tomllib.loads(config_path.read_text())
                except (OSError, tomllib.TOMLDecodeError) as err:
                    raise InvalidInput(f"cannot read {config_path}: {err}", param="config") from None
            run = client.create_run(_merge(raw, overrides))
    console.print(f"queued run [bold]{run.id}[/] ({run.name}, {run.algorithm}, {run.total_steps} steps) on {url}")
    console.print(f"follow: teachloop runs show {run.id} --remote {url}", highlight=False)


def model_context_length(path: Path) -> int:
    """The context length of the model folder ``path`` from its ``config.json`` (no weights are read).

    The same figure the torch engine reports: ``max_position_embeddings``, 2048 when absent.
    """
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise InvalidInput(f"model folder {path} has no readable config.json: {err}", param="model") from None
    value = cfg.get("max_position_embeddings", 2048) if isinstance(cfg, dict) else 2048
    return int(value) if isinstance(value, int) and value > 0 else 2048


def _build_engine(path: Path, settings: Any, cfg: Any) -> Any:
    """The engine holding the base model (loads the weights: only after every check passed)."""
    from teachloop.engine.factory import load_engine

    # low_memory: one copy of the weights (oneDNN reads the dense ones) instead of a prepacked second copy
    return load_engine(settings, str(path), pull=False, pack="dense" if cfg.low_memory else None)


def _run(cfg: Any, store: StoreContext, run: Any, dry_run: bool) -> None:
    from teachloop.engine.factory import model_path
    from teachloop.render import Renderer
    from teachloop.train.trainer import Trainer, TrainerDeps, prepare_inputs, verify_pinned

    settings = store.settings
    console.print(f"[bold]{'resuming' if run else 'training'}[/] {cfg.name} ({cfg.algorithm}, {cfg.steps} steps) "
                  f"in {store.org_name}")
    path = model_path(settings, cfg.model, progress=True)
    renderer = Renderer.from_pretrained(path)
    prepared = prepare_inputs(cfg, renderer=renderer, database=store.database, blobs=store.blobs,
                              org_id=store.org_id, env_cache=settings.home / "envs",
                              context_length=model_context_length(path))
    if run is not None:
        verify_pinned(run, prepared)
    if dry_run:
        console.print_json(json.dumps(prepared.inputs(), default=str))
        return
    engine = _build_engine(path, settings, cfg)
    deps = TrainerDeps(engine=engine, renderer=renderer, database=store.database, blobs=store.blobs,
                       org_id=store.org_id, env_cache=settings.home / "envs")
    trainer = Trainer(cfg, deps, listener=_printer(cfg.steps), prepared=prepared)
    done = asyncio.run(trainer.run(resume=run.id if run is not None else None))
    console.print(f"[green]completed[/] run {done.id}; adapter at blob {done.final_adapter_key}")
    console.print(f"inspect: teachloop runs show {done.id} --plot {done.id}.svg")


def _fmt(values: dict[str, Any]) -> str:
    parts = []
    for k in (*_KEYS, "heldout_nll", "accuracy", "reward_ci_low", "reward_ci_high"):
        v = values.get(k)
        if isinstance(v, int | float):
            parts.append(f"{k}={v:.4g}")
    return "  ".join(parts)


def _printer(total: int) -> Any:
    def listen(event: str, payload: dict[str, Any]) -> None:
        if event == "run":
            console.print(f"run [bold]{payload['run'].id}[/] (from step {payload['start']})")
        elif event == "step":
            console.print(f"step {payload['step']:>5}/{total}  {_fmt(payload['values'])}", highlight=False)
        elif event == "eval":
            console.print(f"[cyan]eval @ {payload['step']}[/]  {_fmt(payload['values'])}", highlight=False)
        elif event == "checkpoint":
            console.print(f"[dim]checkpoint @ {payload['step']}[/]")
        elif event == "alarm":
            console.print(f"[bold red]ALARM[/] {payload['alarm'].summary()}", highlight=False)
        elif event == "stopped":
            console.print(f"[yellow]stopped at step {payload['step']}[/]: {payload['reason']}", highlight=False)

    return listen


@runs_app.command("list")
def runs_list(
    org: str = typer.Option(None, "--org", help="Organisation (name or id)."),
    limit: int = typer.Option(20, "--limit", min=1, help="Newest runs to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run."),
    remote: str = remote_option(),
) -> None:
    """Training runs, newest first."""

    with handle_errors(), _source(org, remote) as store:
        runs = store.list_runs(limit)
        if as_json:
            for r in runs:
                typer.echo(json.dumps(r.__dict__, default=_json_default))
            return
        table = Table(title=f"runs in {store.org_name}", title_justify="left")
        for col in ("id", "name", "algorithm", "status", "step", "created"):
            table.add_column(col)
        for r in runs:
            table.add_row(r.id, r.name, r.algorithm, r.status, f"{r.step}/{r.total_steps}",
                          r.created_at.strftime("%Y-%m-%d %H:%M"))
        console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., help="The run id."),
    org: str = typer.Option(None, "--org", help="Organisation (name or id)."),
    plot: Path = typer.Option(None, "--plot", help="Write an SVG plot of the metrics to this .svg file "
                              "(also with --json); prints where it was written."),
    as_json: bool = typer.Option(False, "--json", help="Print the record and metrics as JSON."),
    remote: str = remote_option(),
) -> None:
    """A run's record, metrics table, terminal curve and (with --plot) an SVG plot."""
    from teachloop.train.plot import sparkline

    with handle_errors():
        if plot is not None and plot.suffix.lower() != ".svg":
            raise InvalidInput(f"--plot writes SVG; give a path ending in .svg, not {plot.name!r}", param="plot")
        with _source(org, remote) as store:
            run = store.get(run_id)
            rows = store.metrics(run_id)
            train = [(s, v) for s, p, v in rows if p == "train"]
            evals = [(s, v) for s, p, v in rows if p == "eval"]
            if as_json:
                typer.echo(json.dumps({"run": run.__dict__, "metrics": [
                    {"step": s, "phase": p, "values": v} for s, p, v in rows]}, default=_json_default))
                if plot is not None:
                    err_console.print(f"wrote {_write_plot(run, train, evals, plot)}")
                return
            console.print(f"[bold]{run.id}[/] {run.name}  {run.algorithm}  [bold]{run.status}[/]  "
                          f"step {run.step}/{run.total_steps}  base {run.base_model}")
            for k, v in run.inputs.items():
                console.print(f"  {k}: {json.dumps(v, default=str)}", highlight=False)
            if run.error:
                err_console.print(f"  error: {run.error}")
            _print_watch(run)
            table = Table(title="metrics", title_justify="left")
            keys = [k for k in _KEYS if any(k in v for _, v in train)]
            table.add_column("step", justify="right")
            for k in keys:
                table.add_column(k, justify="right")
            for s, v in train:
                table.add_row(str(s), *(f"{v[k]:.4g}" if isinstance(v.get(k), int | float) else "" for k in keys))
            console.print(table)
            for s, v in evals:
                console.print(f"[cyan]eval @ {s}[/]  {_fmt(v)}", highlight=False)
            curve_key = _first_key(train, ("reward_mean", "loss"))
            curve = [v[curve_key] for _, v in train if isinstance(v.get(curve_key), int | float)]
            if curve:
                console.print(f"{curve_key}: {sparkline(curve)}")
            if plot is not None:
                console.print(f"wrote {_write_plot(run, train, evals, plot)}")


Rows = list[tuple[int, dict[str, Any]]]


def _json_default(value: Any) -> Any:
    """JSON for what ``json`` cannot write: pydantic models (the alarm) as objects, the rest as text."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else str(value)


def _print_watch(run: Any) -> None:
    """The watch's verdicts on a run: its best held-out step, why it stopped, its reward-hack alarm."""
    if getattr(run, "best_step", None) is not None:
        console.print(f"  best held-out: step {run.best_step} (score {run.best_score:.4g})", highlight=False)
    if getattr(run, "stop_reason", None):
        console.print(f"  stopped at step {run.step}: {run.stop_reason}", highlight=False)
    if getattr(run, "alarm", None) is not None:
        console.print(f"[bold red]  ALARM[/] {run.alarm.summary()}; the loop never promotes this run",
                      highlight=False)


class _Runs:
    """Runs read from the local store or, with ``--remote``, from a server (the same records either way)."""

    def __init__(self, org: str | None, remote: str | None) -> None:
        self.remote = remote
        self._client: Any = None
        self._store: Any = None
        if remote:
            self._client = remote_client(remote)
            self.org_name = remote
        else:
            self._store = StoreContext(org)
            self.org_name = self._store.org_name

    def __enter__(self) -> _Runs:
        return self

    def __exit__(self, *exc: object) -> None:
        (self._client or self._store).__exit__(*exc)

    def _local(self) -> Any:
        from teachloop.train.runs import RunStore

        return RunStore(self._store.database, self._store.blobs)

    def list_runs(self, limit: int) -> list[Any]:
        if self._client is not None:
            return [_record(r) for r in self._client.list_runs(limit).data]
        return list(self._local().list_runs(self._store.org_id, limit))

    def get(self, run_id: str) -> Any:
        if self._client is not None:
            return _record(self._client.get_run(run_id))
        return self._local().get(self._store.org_id, run_id)

    def metrics(self, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
        if self._client is not None:
            return [(m.step, m.phase, dict(m.values)) for m in self._client.run_metrics(run_id).data]
        return list(self._local().metrics(self._store.org_id, run_id))


def _record(run: Any) -> Any:
    """A ``RunInfo`` from the API's ``Run``."""
    from teachloop.train.runs import RunInfo

    return RunInfo(run.id, "", run.name, run.algorithm, run.status, run.base_model, run.config, run.inputs, run.step,
                   run.total_steps, run.last_checkpoint_step, None, "(on the server)" if run.has_adapter else None,
                   run.error, run.created_at, run.finished_at, run.best_step, run.best_score, None, run.stop_reason,
                   run.alarm)


def _source(org: str | None, remote: str | None) -> _Runs:
    return _Runs(org, remote)


def _first_key(rows: Rows, keys: Sequence[str]) -> str:
    """The first of ``keys`` any row has (else the last key)."""
    return next((k for k in keys if any(k in v for _, v in rows)), keys[-1])


def _write_plot(run: Any, train: Rows, evals: Rows, path: Path) -> Path:
    """Write the SVG plot of a run (train curve, eval points) to ``path``; returns its absolute path."""
    from teachloop.train.plot import svg_plot

    curve_key = _first_key(train, ("reward_mean", "loss"))
    eval_key = _first_key(evals, ("reward_mean", "heldout_nll", "heldout_dpo_loss"))

    def xy(rows: Rows, key: str) -> Sequence[tuple[float, float]]:
        return [(float(s), float(v[key])) for s, v in rows if isinstance(v.get(key), int | float)]

    svg = svg_plot({f"train {curve_key}": xy(train, curve_key)}, points={f"eval {eval_key}": xy(evals, eval_key)},
                   title=f"{run.name} ({run.id})", y_label=curve_key)
    path = path.expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg)
    except OSError as err:
        raise InvalidInput(f"--plot: cannot write {path}: {err.strerror or err}", param="plot") from None
    return path


__all__ = ["app", "runs_app"]

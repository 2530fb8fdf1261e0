"""``teachloop train`` and ``teachloop runs``: start, resume and inspect training runs.

``train CONFIG.toml [--section.field VALUE ...]`` validates the config, pins
its inputs (environment digests, dataset digests, skipped-row counts) before
loading the model, then runs with a live progress line per step. ``--resume
RUN`` continues a run from its last checkpoint. ``runs list`` and ``runs show
RUN`` print the record, the metric table, a reward (or loss) curve in the
terminal, and write an SVG plot with ``--plot``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from teachloop.cli._common import StoreContext, console, err_console, handle_errors

app = typer.Typer(no_args_is_help=False)
runs_app = typer.Typer(help="List and inspect training runs.", no_args_is_help=True)

_KEYS = ("reward_mean", "loss", "kl", "entropy", "clip_frac", "tokens_per_s", "step_seconds")


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Train an adapter (grpo | sft | dpo) from a TOML config; any field can be overridden with "
    "--section.field VALUE (e.g. --steps 20 --rl.group_size 8 --optim.lr 2e-4).",
)
def train(
    ctx: typer.Context,
    config: Path = typer.Argument(None, help="The run's TOML config (omit with --resume)."),
    resume: str = typer.Option(None, "--resume", help="Continue run RUN from its last checkpoint."),
    org: str = typer.Option(None, "--org", help="Organisation (name or id); default: the only one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config and pin its inputs, then stop."),
) -> None:
    """Run or resume a training run."""
    from teachloop.train.config import load_config, parse_overrides

    with handle_errors():
        if resume is None and config is None:
            raise typer.BadParameter("give a CONFIG.toml or --resume RUN")
        overrides = parse_overrides(list(ctx.args))
        with StoreContext(org) as store:
            cfg = None
            if resume is None:
                cfg = load_config(config, overrides)
            else:
                from teachloop.train.config import validate_config
                from teachloop.train.runs import RunStore

                if overrides:
                    raise typer.BadParameter("--resume takes no overrides: a run keeps its config")
                cfg = validate_config(RunStore(store.database, store.blobs).get(store.org_id, resume).config)
            _run(cfg, store, resume, dry_run)


def _run(cfg: Any, store: StoreContext, resume: str | None, dry_run: bool) -> None:
    from teachloop.core.settings import DEFAULT_MODEL
    from teachloop.engine.models import ensure_default_model, resolve_model
    from teachloop.render import Renderer
    from teachloop.train.trainer import Trainer, TrainerDeps

    settings = store.settings
    console.print(f"[bold]{'resuming' if resume else 'training'}[/] {cfg.name} ({cfg.algorithm}, {cfg.steps} steps) "
                  f"in {store.org_name}")
    path = ensure_default_model(settings, progress=True) if cfg.model == DEFAULT_MODEL else \
        resolve_model(settings, cfg.model)
    renderer = Renderer.from_pretrained(path)
    if dry_run:
        deps = TrainerDeps(engine=_NoEngine(), renderer=renderer, database=store.database,  # type: ignore[arg-type]
                           blobs=store.blobs, org_id=store.org_id, env_cache=settings.home / "envs")
        prepared = Trainer(cfg, deps).prepare()
        console.print_json(json.dumps(prepared.inputs(), default=str))
        return
    from teachloop.engine.torch_engine import TorchEngine

    engine = TorchEngine(path, device=settings.device, pack="lm_head" if cfg.low_memory else None)
    deps = TrainerDeps(engine=engine, renderer=renderer, database=store.database, blobs=store.blobs,
                       org_id=store.org_id, env_cache=settings.home / "envs")
    trainer = Trainer(cfg, deps, listener=_printer(cfg.steps))
    run = asyncio.run(trainer.run(resume=resume))
    console.print(f"[green]completed[/] run {run.id}; adapter at blob {run.final_adapter_key}")
    console.print(f"inspect: teachloop runs show {run.id} --plot {run.id}.svg")


class _NoEngine:
    """Stands in for the engine in --dry-run (only the context length is read)."""

    context_length = 1 << 30


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

    return listen


@runs_app.command("list")
def runs_list(
    org: str = typer.Option(None, "--org", help="Organisation (name or id)."),
    limit: int = typer.Option(20, "--limit", min=1, help="Newest runs to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run."),
) -> None:
    """Training runs, newest first."""
    from teachloop.train.runs import RunStore

    with handle_errors(), StoreContext(org) as store:
        runs = RunStore(store.database, store.blobs).list_runs(store.org_id, limit)
        if as_json:
            for r in runs:
                typer.echo(json.dumps(r.__dict__, default=str))
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
    plot: Path = typer.Option(None, "--plot", help="Write an SVG plot of the metrics here."),
    as_json: bool = typer.Option(False, "--json", help="Print the record and metrics as JSON."),
) -> None:
    """A run's record, metrics table, terminal curve and (optionally) an SVG plot."""
    from teachloop.train.plot import sparkline, svg_plot
    from teachloop.train.runs import RunStore

    with handle_errors(), StoreContext(org) as store:
        rs = RunStore(store.database, store.blobs)
        run = rs.get(store.org_id, run_id)
        rows = rs.metrics(store.org_id, run_id)
        if as_json:
            typer.echo(json.dumps({"run": run.__dict__, "metrics": [
                {"step": s, "phase": p, "values": v} for s, p, v in rows]}, default=str))
            return
        console.print(f"[bold]{run.id}[/] {run.name}  {run.algorithm}  [bold]{run.status}[/]  "
                      f"step {run.step}/{run.total_steps}  base {run.base_model}")
        for k, v in run.inputs.items():
            console.print(f"  {k}: {json.dumps(v, default=str)}", highlight=False)
        if run.error:
            err_console.print(f"  error: {run.error}")
        train = [(s, v) for s, p, v in rows if p == "train"]
        evals = [(s, v) for s, p, v in rows if p == "eval"]
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
        curve_key = "reward_mean" if any("reward_mean" in v for _, v in train) else "loss"
        curve = [v.get(curve_key) for _, v in train]
        if curve:
            console.print(f"{curve_key}: {sparkline([c for c in curve if c is not None])}")
        if plot is not None:
            series: dict[str, Sequence[tuple[float, float]]] = {f"train {curve_key}": [(float(s), float(v[curve_key])) for s, v in train if curve_key in v]}
            eval_key = "reward_mean" if any("reward_mean" in v for _, v in evals) else "heldout_nll"
            points: dict[str, Sequence[tuple[float, float]]] = {f"eval {eval_key}": [(float(s), float(v[eval_key])) for s, v in evals if eval_key in v]}
            plot.write_text(svg_plot(series, points=points, title=f"{run.name} ({run.id})", y_label=curve_key))
            console.print(f"wrote {plot}")


__all__ = ["app", "runs_app"]

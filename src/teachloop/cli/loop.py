"""``teachloop loop``: configure, run and inspect the loop of a deployment.

- ``set CONFIG.toml`` stores the loop config (validated; a config naming a
  missing deployment, environment or dataset, or an impossible trigger, is
  refused with the field named and nothing changes); ``show`` prints it.
- ``run DEPLOYMENT`` runs the loop in the foreground with a live status view
  (Ctrl+C stops it between steps; ``--once`` ticks once), loading the
  deployment's base model here; ``--background`` queues it as a worker job
  instead (``teachloop up`` or ``teachloop worker`` runs it).
- ``status`` and ``history`` show every iteration: the data used (dataset
  and digest, counts), the run, the eval figures (with each environment
  suite's slice of the task stream: fresh or fixed, offset, tasks, repeated
  prompts), the decision and its reason, all stored text escaped.
- ``pause`` / ``resume``.

Talks to the database and blob store directly, like ``teachloop deploy``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from teachloop.cli._common import StoreContext, console, is_tty
from teachloop.cli.admin import errors
from teachloop.core.loop import GateSample

app = typer.Typer(help="The loop of a deployment: traffic -> data -> training -> gate -> canary -> promotion.",
                  no_args_is_help=True)

_ORG_HELP = "Organisation name or id (default: the only organisation)."
ACTOR = "cli"


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) else "-"


def _suite_line(suite: dict[str, Any]) -> str:
    """One gate suite: its means, size and (an environment's) task slice, e.g. ``(fresh slice: offset 64, ...)``."""
    sample = GateSample.of(suite.get("sample"))
    return (f"{suite.get('name')} {_fmt(suite.get('baseline_mean'))}->{_fmt(suite.get('candidate_mean'))} "
            f"n={suite.get('n')}" + (f" ({sample.describe()})" if sample else ""))


def _gate_line(gate: dict[str, Any]) -> str:
    if not gate:
        return ""
    suites = ", ".join(_suite_line(s) for s in gate.get("suites", []) if isinstance(s, dict))
    test = gate.get("test") or {}
    return f"{suites}; p={_fmt(test.get('p_value'))}" if test else suites


def history_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The iterations as a table (every stored text escaped: a reason or suite name is never rich markup)."""
    table = Table(title=escape(title), title_justify="left", show_lines=False)
    for col in ("#", "status", "data", "run", "baseline -> candidate", "eval (baseline->candidate)", "reason"):
        table.add_column(col, overflow="fold")
    for it in rows:
        ds = it.get("dataset") or {}
        counts = it.get("counts") or {}
        data = f"{ds.get('ref') or '-'} {str(ds.get('digest') or '')[7:19]}\n{counts.get('train', 0)} train / " \
               f"{counts.get('holdout', 0)} holdout" if ds else f"{counts.get('train', '-')} rows"
        run = it.get("run") or {}
        cells = (str(it["number"]), it["status"], data, f"{run.get('id', '-')}\n{run.get('status') or ''}",
                 f"{it['baseline']} -> {it.get('candidate') or '-'}", _gate_line(it.get("gate") or {}),
                 it.get("reason") or "")
        table.add_row(*(escape(str(c)) for c in cells))
    return table


@app.command("set")
def set_loop(
    config: Path = typer.Argument(..., help="The loop config (TOML); see docs/loop.md."),
    deployment: str = typer.Option(None, "--deployment", help="Override the config's deployment."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
) -> None:
    """Create or replace a deployment's loop (validated against the store first)."""
    import tomllib

    from teachloop.core.errors import InvalidInput
    from teachloop.loop import configure_loop

    with errors(), StoreContext(org) as ctx:
        try:
            raw = tomllib.loads(config.read_text())
        except FileNotFoundError:
            raise InvalidInput(f"loop config {config} does not exist", param="config") from None
        except tomllib.TOMLDecodeError as err:
            raise InvalidInput(f"{config} is not valid TOML: {err}", param="config") from None
        if deployment:
            raw["deployment"] = deployment
        out, created = configure_loop(ctx.database, ctx.blobs, ctx.org_id, raw, cache=ctx.settings.home / "envs",
                                      actor=ACTOR)
        console.print(f"{'created' if created else 'updated'} the loop of {out['deployment']!r} "
                      f"(config {out['config_digest'][:19]}…, {'enabled' if out['enabled'] else 'paused'})",
                      highlight=False)


@app.command("show")
def show(deployment: str = typer.Argument(...), org: str = typer.Option(None, "--org", help=_ORG_HELP)) -> None:
    """Print a loop's config as JSON."""
    from teachloop.loop.service import find_loop

    with errors(), StoreContext(org) as ctx, ctx.database.session(write=False) as s:
        typer.echo(json.dumps(find_loop(s, ctx.org_id, deployment).config, indent=2))


@app.command("status")
def status_cmd(
    deployment: str = typer.Argument(...),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Phase, what the deployment serves, online figures of the last 24 h, and the latest iteration."""
    from teachloop.loop import status

    with errors(), StoreContext(org) as ctx:
        st = status(ctx.database, ctx.org_id, deployment)
        if as_json:
            typer.echo(json.dumps(st, default=str))
            return
        serving = st["serving"]
        canary = f" + canary {serving['canary']} @ {serving['canary_percent']}%" if serving["canary"] else ""
        online = st["online_24h"]
        console.print(f"[bold]{deployment}[/]: loop {'enabled' if st['enabled'] else 'paused'}, phase "
                      f"[bold]{st['phase']}[/]; serving {serving['adapter']}{canary} (revision {serving['revision']})",
                      highlight=False)
        console.print(f"  online (24 h, primary): {online['requests']} requests, grader {_fmt(online['grader_mean'])} "
                      f"(n={online['graded']}), feedback {_fmt(online['feedback_mean'])} (n={online['feedback']})",
                      highlight=False)
        if st["note"]:
            console.print(f"  note: {st['note']}", highlight=False)
        if st["latest_iteration"]:
            console.print(history_table([st["latest_iteration"]], "latest iteration"))


@app.command("history")
def history_cmd(
    deployment: str = typer.Argument(...),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
    limit: int = typer.Option(50, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per iteration."),
) -> None:
    """Every iteration, newest first: data, run, eval figures, decision and reason."""
    from teachloop.loop import history

    with errors(), StoreContext(org) as ctx:
        rows = history(ctx.database, ctx.org_id, deployment, limit=limit)
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row, default=str))
            return
        console.print(history_table(rows, f"loop of {deployment}"))


@app.command("pause")
def pause(deployment: str = typer.Argument(...), org: str = typer.Option(None, "--org", help=_ORG_HELP)) -> None:
    """Stop starting iterations."""
    from teachloop.loop import set_enabled

    with errors(), StoreContext(org) as ctx:
        set_enabled(ctx.database, ctx.org_id, deployment, False)
        console.print(f"paused the loop of {deployment!r}", highlight=False)


@app.command("resume")
def resume(deployment: str = typer.Argument(...), org: str = typer.Option(None, "--org", help=_ORG_HELP)) -> None:
    """Start iterations again."""
    from teachloop.loop import set_enabled

    with errors(), StoreContext(org) as ctx:
        set_enabled(ctx.database, ctx.org_id, deployment, True)
        console.print(f"resumed the loop of {deployment!r}", highlight=False)


class LiveView:
    """The foreground run's status: the loop's phase, what it is doing, and recent events."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.state: dict[str, Any] = {"phase": "starting", "doing": "", "scored": 0, "new": 0, "due": None}
        self.events: list[str] = []
        self.started = time.monotonic()

    def listen(self, event: str, p: dict[str, Any]) -> None:
        s = self.state
        if event == "tick":
            s.update(phase=p["phase"], new=p["new_examples"], due=p["due"], doing="waiting for the trigger")
        elif event == "scored":
            s["scored"] += p["count"]
        elif event == "iteration":
            s["doing"] = f"iteration {p['number']}: building the dataset"
            self._log(f"iteration {p['number']} starts: {p['trigger']}")
        elif event == "stage":
            s["doing"] = f"iteration {p['number']}: {p['stage']}"
            if p["stage"] == "train":
                self._log(f"  data {p['dataset']}: {p['counts']['train']} train / {p['counts']['holdout']} holdout")
        elif event == "train_step":
            v = p["values"]
            key = "reward_mean" if "reward_mean" in v else "loss"
            s["doing"] = f"iteration {p['number']}: training step {p['step']} ({key} {_fmt(v.get(key))})"
        elif event == "gate":
            d = p["decision"]
            self._log(f"  gate {'passed' if d['passed'] else 'refused'}: {d['reason']}")
        elif event in ("canary", "promoted", "rolled_back", "superseded", "outcome", "failed", "paused"):
            self._log(f"  {event}: {p.get('reason') or p.get('error') or p.get('version') or ''}")
            if event == "paused":
                s["phase"] = "paused"

    def _log(self, line: str) -> None:
        self.events = (self.events + [f"{(time.monotonic() - self.started) / 60:5.1f} min  {line}"])[-12:]
        if not is_tty():
            console.print(line, highlight=False, soft_wrap=True)

    def render(self) -> Group:
        s = self.state
        head = Table.grid(padding=(0, 2))
        head.add_row("deployment", self.deployment, "phase", str(s["phase"]))
        head.add_row("traffic graded", str(s["scored"]), "new usable examples", str(s["new"]))
        head.add_row("now", s["doing"] or "-", "trigger", s["due"] or "not due")
        return Group(head, Text("\n".join(self.events) or "(no events yet)", style="dim"))


@app.command("run")
def run(
    deployment: str = typer.Argument(..., help="The deployment whose loop runs."),
    org: str = typer.Option(None, "--org", help=_ORG_HELP),
    once: bool = typer.Option(False, "--once", help="Tick once and exit."),
    interval: float = typer.Option(None, "--interval", min=0.1, help="Seconds between ticks (default: the config's)."),
    background: bool = typer.Option(False, "--background", help="Queue the loop as a worker job instead."),
) -> None:
    """Run the loop in the foreground with a live status view (or queue it for the worker)."""
    from teachloop.catalog.usage import install_usage_gate
    from teachloop.loop import LoopRunner, TrainDeps, enqueue_tick
    from teachloop.loop.service import find_loop
    from teachloop.market.entitlements import MarketUsageGate

    with errors(), StoreContext(org) as ctx:
        from teachloop.store.repos.deployments import Deployments

        with ctx.database.session(write=False) as s:
            loop = find_loop(s, ctx.org_id, deployment)
            base = Deployments(s).get(ctx.org_id, deployment).base_model
        if background:
            job = enqueue_tick(_queue(ctx), ctx.org_id, deployment)
            console.print(f"queued loop job {job} for {deployment!r} (loop {loop.id}); a worker runs it "
                          "(`teachloop up` or `teachloop worker`)", highlight=False)
            return
        engine, renderer = _engine(ctx, base)
        install_usage_gate(MarketUsageGate())  # bought datasets: entitlement checked, each iteration metered
        view = LiveView(deployment)
        runner = LoopRunner(TrainDeps(engine, renderer, ctx.database, ctx.blobs, ctx.org_id,
                                      ctx.settings.home / "envs", base), deployment, listener=view.listen)
        if once:
            result = asyncio.run(runner.tick())
            console.print(f"tick: phase {result.phase}, graded {result.scored}, new examples {result.new_examples}"
                          + (f", iteration {result.iteration} {result.status}" if result.iteration else "")
                          + (f" -- {result.note}" if result.note else ""), highlight=False)
            return
        stop = asyncio.Event()

        async def main() -> None:
            task = asyncio.create_task(runner.run_forever(stop, interval_s=interval))
            if is_tty():
                with Live(view.render(), console=console, refresh_per_second=2) as live:
                    while not task.done():
                        live.update(view.render())
                        await asyncio.sleep(0.5)
            await task

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            console.print("stopped", highlight=False)


def _queue(ctx: StoreContext) -> Any:
    from teachloop.store import JobQueue

    return JobQueue(ctx.database)


def _engine(ctx: StoreContext, base: str) -> tuple[Any, Any]:
    from teachloop.engine.factory import load_model

    console.print(f"loading {base} ...", highlight=False)
    loaded = load_model(ctx.settings, base, progress=True)
    return loaded.engine, loaded.renderer


__all__ = ["LiveView", "app", "history_table"]

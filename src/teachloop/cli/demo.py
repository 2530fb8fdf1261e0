"""``teachloop demo``: the loop end to end on this machine -- live traffic in, a better deployed model out.

1. A fresh ``TEACHLOOP_HOME`` (a temporary folder, or ``--home``), migrated,
   with a first organisation and API key; the model cache is the usual one,
   so the default model is pulled only once.
2. The default model is loaded once and served by the real server (the app
   under uvicorn, in a thread of this process); the loop trains and evaluates
   on the same engine.
3. Over REST: a deployment ``calc`` of the base model, and its loop config --
   GRPO on the prompts users sent, graded by the ``arithmetic`` environment
   (level 1, the answer found by task lookup), a paired gate on the holdout
   prompts and 200 held-out tasks, a 25% canary, a watch after promotion.
4. Rounds: simulated users send one-digit arithmetic questions ("What is 7 +
   5?") concurrently through the OpenAI API (``/v1/chat/completions``,
   ``model=calc``, each with a ``user`` id, greedy). After each round the loop
   ticks: it grades the round's traffic (the online reward), and when due runs
   an iteration (snapshot -> GRPO -> gate -> canary), judges the canary, or
   watches the promoted version.
5. It prints each round's online reward per arm and, at the end, the online
   reward of each version the deployment served to everyone.

The demo stops after ``--iterations`` promotions, ``--max-rounds`` rounds or
``--budget-min`` minutes, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from teachloop.cli._common import console, handle_errors

app = typer.Typer()

DEPLOYMENT = "calc"


@dataclass
class DemoOptions:
    """Knobs of the demo (the CLI's options)."""

    iterations: int = 3
    requests: int = 96
    users: int = 24
    max_rounds: int = 12
    budget_min: float = 28.0
    steps: int = 12
    gate_tasks: int = 200
    canary_percent: int = 25
    seed: int = 0


def loop_config(opts: DemoOptions) -> dict[str, Any]:
    """The demo's loop config (what ``PUT /api/loops/calc`` receives)."""
    env = {"env": "arithmetic", "env_args": {"level": 1}}
    return {
        "deployment": DEPLOYMENT,
        "sources": [{"kind": "grader", **env, "answer": "lookup", "lookup_tasks": 5000}],
        "curation": {"holdout_frac": 0.1, "metadata": {"app": "calc-demo"}},
        "trigger": {"every": max(8, opts.requests // 2), "min_examples": 16},
        "algorithm": {"kind": "grpo", "warm_start": True, "train": {
            "steps": opts.steps, "seed": opts.seed, "lora": {"rank": 16, "alpha": 32}, "optim": {"lr": 5e-4},
            "rl": {"prompts_per_step": 4, "group_size": 8, "max_tokens": 32, "temperature": 1.0}}},
        "gate": {"metric": "reward", "test": "bootstrap", "confidence": 0.95, "max_tokens": 32,
                 "environments": [{**env, "tasks": opts.gate_tasks, "seed": 1_000_003}]},
        "promotion": {"canary_percent": opts.canary_percent, "canary_min_requests": max(4, opts.requests // 6),
                      "min_samples": max(4, opts.requests // 6), "max_drop": 0.1, "signals": ["grader"],
                      "watch_requests": max(4, opts.requests // 2)},
        "budget": {"train_minutes_per_day": 60},
    }


@dataclass
class Round:
    """What one round of traffic saw."""

    number: int
    served: str
    requests: int
    seconds: float
    reward: dict[str, float | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    loop: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app_: Any) -> Iterator[str]:
    """Run ``app_`` under uvicorn on a free local port; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app_, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="teachloop-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the demo server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


async def send_round(url: str, key: str, opts: DemoOptions, number: int) -> tuple[int, float]:
    """One round of simulated users asking arithmetic questions through the OpenAI API; (answered, seconds)."""
    import httpx

    from teachloop.envs import Arithmetic

    tasks = Arithmetic(level=1).take(opts.requests, seed=10_000 + opts.seed * 100 + number)
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    for i, task in enumerate(tasks):
        queue.put_nowait((i, task))
    answered = 0
    started = time.perf_counter()

    async def user(k: int, client: httpx.AsyncClient) -> None:
        nonlocal answered
        while not queue.empty():
            i, task = queue.get_nowait()
            body = {"model": DEPLOYMENT, "messages": [m.to_openai() for m in task.prompt], "max_tokens": 32,
                    "temperature": 0, "user": f"user-{(i % opts.users):03d}", "metadata": {"app": "calc-demo"}}
            r = await client.post(f"{url}/v1/chat/completions", json=body)
            r.raise_for_status()
            answered += 1

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=600) as client:
        await asyncio.gather(*(user(k, client) for k in range(opts.users)))
    return answered, time.perf_counter() - started


def round_figures(database: Any, org_id: str, since: Any) -> tuple[dict[str, float | None], dict[str, int]]:
    """Mean grader score and request count per serving version/arm of the traces created since ``since``."""
    from sqlalchemy import select

    from teachloop.store.repos.deployments import AdapterVersions
    from teachloop.store.schema.loops import TraceScore
    from teachloop.store.schema.traces import Trace

    with database.session(write=False) as s:
        rows = s.execute(
            select(Trace.arm, Trace.adapter_version_id, TraceScore.score)
            .join(TraceScore, TraceScore.trace_id == Trace.id)
            .where(Trace.org_id == org_id, Trace.created_at >= since)
        ).all()
        refs = {v.id: v.ref for v in AdapterVersions(s).by_ids(org_id, {r[1] for r in rows if r[1]}).values()}
    groups: dict[str, list[float]] = {}
    for arm, version, score in rows:
        key = f"{arm}:{refs.get(version, 'base') if version else 'base'}"
        groups.setdefault(key, []).append(float(score or 0.0))
    return ({k: statistics.fmean(v) for k, v in groups.items()}, {k: len(v) for k, v in groups.items()})


def _serving(database: Any, org_id: str) -> str:
    from teachloop.store.repos.deployments import AdapterVersions, Deployments

    with database.session(write=False) as s:
        dep = Deployments(s).get(org_id, DEPLOYMENT)
        versions = AdapterVersions(s).by_ids(org_id, {i for i in (dep.adapter_version_id, dep.canary_version_id) if i})
        primary = versions[dep.adapter_version_id].ref if dep.adapter_version_id else "base"
        if dep.canary_version_id:
            return f"{primary} + canary {versions[dep.canary_version_id].ref} @ {dep.canary_percent}%"
        return primary


def _printer(t0: float) -> Any:
    def listen(event: str, p: dict[str, Any]) -> None:
        stamp = f"[dim]{(time.perf_counter() - t0) / 60:5.1f} min[/]"
        if event == "iteration":
            console.print(f"{stamp} [bold]iteration {p['number']}[/] starts: {p['trigger']}", highlight=False)
        elif event == "stage" and p["stage"] == "train":
            c = p["counts"]
            console.print(f"{stamp}   data: {p['dataset']}  {c['train']} train / {c['holdout']} holdout prompts "
                          f"(from {c['candidates']} candidates)", highlight=False)
        elif event == "train_step":
            v = p["values"]
            console.print(f"{stamp}   GRPO step {p['step']}: reward {v.get('reward_mean', 0):.3f}  "
                          f"{v.get('step_seconds', 0):.1f}s", highlight=False)
        elif event == "gate":
            d = p["decision"]
            suites = ", ".join(f"{s['name']} {s['baseline_mean']:.3f} -> {s['candidate_mean']:.3f} (n={s['n']})"
                               for s in d["suites"])
            console.print(f"{stamp}   gate: {suites}", highlight=False)
            console.print(f"{stamp}   gate: {'PASS' if d['passed'] else 'refused'} -- {d['reason']}", highlight=False)
        elif event in ("canary", "promoted", "rolled_back", "watched", "superseded", "failed", "outcome"):
            detail = p.get("reason") or p.get("error") or ""
            label = f"{event} {p.get('version', '')}".strip()
            console.print(f"{stamp}   {label}: {detail}", highlight=False)

    return listen


async def _rounds(url: str, key: str, opts: DemoOptions, runner: Any, database: Any, org_id: str,
                  t0: float) -> list[Round]:
    from teachloop.loop.service import history
    from teachloop.store.schema.base import utc_now

    rounds: list[Round] = []
    promoted = 0
    for number in range(opts.max_rounds):
        if promoted >= opts.iterations or (time.perf_counter() - t0) / 60 > opts.budget_min:
            break
        served = _serving(database, org_id)
        since = utc_now()
        answered, seconds = await send_round(url, key, opts, number)
        result = await runner.tick()
        reward, counts = round_figures(database, org_id, since)
        rnd = Round(number, served, answered, seconds, reward, counts)
        shown = "  ".join(f"{k} {v:.3f} (n={counts[k]})" for k, v in sorted(reward.items()) if v is not None)
        console.print(f"[bold]round {number}[/]: {answered} requests in {seconds:.0f}s to {served}: online reward "
                      f"{shown}", highlight=False)
        if result.phase == "idle" and result.iteration is None and result.note:
            result = await runner.tick()  # a watch just ended: the trigger may be due already
        rnd.loop = result.note
        rounds.append(rnd)
        promoted = sum(1 for it in history(database, org_id, DEPLOYMENT) if it["status"] == "promoted"
                       and "watch" in (it["canary"] or {}))  # promoted, and watched over a round of everyone
    return rounds


def summary(rounds: list[Round]) -> list[tuple[str, float, int]]:
    """(version, online reward, requests) of each version while it served everyone (primary arm, no canary)."""
    out: dict[str, list[tuple[float, int]]] = {}
    for r in rounds:
        if "canary" in r.served:
            continue
        key = f"primary:{r.served}"
        if key in r.reward and r.reward[key] is not None:
            out.setdefault(r.served, []).append((float(r.reward[key] or 0.0), r.counts[key]))
    result = []
    for version, items in out.items():
        n = sum(c for _, c in items)
        result.append((version, sum(m * c for m, c in items) / n, n))
    return result


def run_demo(opts: DemoOptions, home: Path, *, model_dir: Path | None = None) -> list[Round]:
    """The whole demo (see the module docstring); returns its rounds."""
    import httpx

    from teachloop.app import AppDeps, create_app
    from teachloop.core.settings import DEFAULT_MODEL, Settings
    from teachloop.engine.factory import load_model
    from teachloop.engine.models import ensure_default_model
    from teachloop.loop import LoopRunner, TrainDeps
    from teachloop.serve import Serving, ServingConfig
    from teachloop.store import BlobStore, Database, bootstrap

    t0 = time.perf_counter()
    settings = Settings.from_env({**_environ(), "TEACHLOOP_HOME": str(home)})
    database = Database(settings.database_url)
    database.migrate()
    with database.session() as s:
        first = bootstrap(s, "demo", "demo@teachloop.local")
        org_id = first.org.id
        if first.key is None:
            raise RuntimeError(f"{home} already holds a demo; pass another --home")
        key = first.key.secret
    blobs = BlobStore(settings.blob_url)
    path = model_dir or ensure_default_model(settings, progress=True)
    base = DEFAULT_MODEL if model_dir is None else model_dir.name
    console.print(f"home {home}; loading {base} ...", highlight=False)
    loaded = load_model(settings, str(path), device="cpu" if settings.device == "auto" else settings.device)
    engine: Any = loaded.engine  # the torch engine: it has the batching seam serving drives
    renderer = loaded.renderer
    serving = Serving(database, blobs, engine=engine, renderer=renderer, base_model=base,
                      config=ServingConfig(max_rows=32, default_max_tokens=32, sync_interval_s=1.0))
    serving.start()
    deps = AppDeps(settings, database, blobs, engine=engine, serving=serving)
    try:
        with serve_in_thread(create_app(deps)) as url:
            headers = {"Authorization": f"Bearer {key}"}
            r = httpx.post(f"{url}/api/deployments", json={"name": DEPLOYMENT}, headers=headers, timeout=60)
            r.raise_for_status()
            r = httpx.put(f"{url}/api/loops/{DEPLOYMENT}", json=loop_config(opts), headers=headers, timeout=60)
            r.raise_for_status()
            console.print(f"server {url}; deployment {DEPLOYMENT!r} serves {base}; loop configured "
                          f"({(time.perf_counter() - t0):.0f}s)", highlight=False)
            runner = LoopRunner(TrainDeps(engine, renderer, database, blobs, org_id, home / "envs", base),
                                DEPLOYMENT, listener=_printer(t0))
            rounds = asyncio.run(_rounds(url, key, opts, runner, database, org_id, t0))
            iterations = _history(database, org_id)
    finally:
        deps.close()
    console.print()
    console.print("[bold]iterations:[/]")
    for it in reversed(iterations):
        suites = ", ".join(f"{s['name']} {s['baseline_mean']:.3f} -> {s['candidate_mean']:.3f}"
                           for s in (it.get("gate") or {}).get("suites", []))
        console.print(f"  {it['number']}: {it['status']:11s} {it.get('candidate') or '-':8s} "
                      f"train {it['train_seconds']:.0f}s  gate: {suites or '-'}", highlight=False)
    console.print("[bold]the deployed model's online reward (traffic it served to everyone):[/]")
    for version, reward, n in summary(rounds):
        console.print(f"  {version:10s} {reward:.3f}  (n={n})", highlight=False)
    console.print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min; loop history: "
                  f"TEACHLOOP_HOME={home} teachloop loop history {DEPLOYMENT}", highlight=False)
    return rounds


def _history(database: Any, org_id: str) -> list[dict[str, Any]]:
    from teachloop.loop.service import history

    return history(database, org_id, DEPLOYMENT)


def _environ() -> dict[str, str]:
    import os

    env = dict(os.environ)
    for var in ("TEACHLOOP_DATABASE_URL", "TEACHLOOP_BLOB_URL"):
        env.pop(var, None)  # the demo's own home holds its database and blobs
    return env


@app.command("demo")
def demo(
    home: Path = typer.Option(None, "--home", help="TEACHLOOP_HOME of the demo (default: a new temporary folder)."),
    iterations: int = typer.Option(3, "--iterations", min=1, help="Stop after this many promotions."),
    requests: int = typer.Option(96, "--requests", min=8, help="Requests per round of traffic."),
    users: int = typer.Option(24, "--users", min=1, help="Simulated users sending concurrently."),
    steps: int = typer.Option(12, "--steps", min=1, help="GRPO steps per iteration."),
    max_rounds: int = typer.Option(12, "--max-rounds", min=1, help="Rounds of traffic at most."),
    budget_min: float = typer.Option(28.0, "--budget-min", min=1, help="Start no round after this many minutes."),
) -> None:
    """Run the loop end to end: simulated users -> traces -> grader -> GRPO -> gate -> canary -> better model."""
    with handle_errors():
        folder = home or Path(tempfile.mkdtemp(prefix="teachloop-demo-"))
        opts = DemoOptions(iterations=iterations, requests=requests, users=users, steps=steps, max_rounds=max_rounds,
                           budget_min=budget_min)
        run_demo(opts, folder)


__all__ = ["DemoOptions", "Round", "app", "loop_config", "run_demo", "summary"]

"""``teachloop demo``: the loop end to end on this machine -- live traffic in, a better deployed model out.

1. A fresh ``TEACHLOOP_HOME`` (a temporary folder, or ``--home``), migrated,
   with a first organisation and API key; the model cache is the usual one,
   so the default model is pulled only once.
2. The default model is loaded once and served by the real server (the app
   under uvicorn, in a thread of this process); the loop trains and evaluates
   on the same engine.
3. Over REST: a deployment ``calc`` of the base model, and its loop config --
   GRPO on the prompts users sent (``--prompts`` per step, 8 by default, x 8
   samples, ``--steps`` 6 in the first iteration), graded by the ``arithmetic`` environment
   (level 1, the answer found by task lookup), a paired gate on the holdout
   prompts and 200 held-out tasks, a 25% canary, a watch after promotion.
4. Rounds: simulated users send one-digit arithmetic questions ("What is 7 +
   5?") concurrently through the OpenAI API (``/v1/chat/completions``,
   ``model=calc``, each with a ``user`` id, greedy); each round's requests come
   from the next ``--requests`` of ``--population`` users, so the canary's
   sticky share of a round is close to ``--canary-percent``. After each round the loop
   ticks: it grades the round's traffic (the online reward), and when due runs
   an iteration (snapshot -> GRPO -> gate -> canary), judges the canary, or
   watches the promoted version. With ``DemoOptions.tick_after_promotion``
   (off by default) a tick that promoted a canary is followed by another at
   once: the round that judged the canary is new traffic, so the next
   iteration starts without waiting for a round -- what a worker ticking every
   ``check_seconds`` does while traffic flows. Measured (``bench/README.md``,
   2026-12-07): it did not help the demo, and it leaves a version promoted
   near the budget's end unserved by any round.
5. It prints each round's online reward per arm and, at the end, the online
   reward of each version the deployment served to everyone, and checks every
   promotion on a **fresh held-out set** (``--fresh-tasks`` tasks of a seed
   neither the traffic nor the gate used): the promoted version's greedy
   reward against the version it replaced.
6. The **offline reference** (unless ``--no-reference``): GRPO as
   ``bench/learn_arithmetic.py`` trains it (8 prompts x 8 samples, lr 5e-4,
   LoRA r16, the level's train split), on the same engine, for as long as the
   loop ran (its wall clock from the first round to the last), evaluated
   greedily on ``2 x --requests`` traffic-like tasks at seven points (the
   evaluations are outside its clock). Both curves -- the loop's online
   reward per round and the reference -- are printed and written as an SVG
   (``--svg``, default ``HOME/demo.svg``; ``train.plot.svg_plot``).

The loop keeps what it learns (``algorithm.lineage``: each iteration continues
the newest candidate that was not worse than the deployed version, with the
AdamW state its run ended with (``keep_optimizer``); steps double while the
candidate still improves, up to 4x ``--steps``; rollouts at temperature 0.7
once the gate reward reaches 0.8, and with ``--late-extra-draws K`` dynamic
sampling from then on, with ``--late-lr-scale F`` a fraction of the lr from then on -- both off by
default). ``--restart`` runs the behaviour before
issue 16 instead (every iteration restarts from the deployed adapter with
``--steps`` steps and a fresh AdamW), which ``bench/loop_vs_offline.py``
compares.

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
from collections.abc import Iterator, Sequence
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
    users: int = 24  # simulated users sending at once (the concurrency)
    #: distinct simulated users: request ``i`` of round ``n`` comes from user ``(n * requests + i) % population``,
    #: so a round's requests come from ``requests`` different users and the canary's sticky share of a round is
    #: close to ``canary_percent`` (with 24 users, the demo before 2026-12-07, it was 4 x Binomial(24, 0.25):
    #: 8 to 28 of 96 requests, the same for the whole run)
    population: int = 960
    max_rounds: int = 12
    budget_min: float = 28.0
    steps: int = 6  # GRPO steps of the first iteration (the lineage doubles them up to 4x while it improves)
    prompts: int = 8  # GRPO prompts per step (x 8 samples): 4 x 12 did the same work per iteration and drifted
    failure_share: float = 0.0  # algorithm.failure_share: GRPO tasks drawn from the prompts the served reply failed
    late_temperature: float | None = 0.7  # algorithm.late_temperature (None: rl.temperature throughout)
    late_extra_draws: int | None = None  # algorithm.late_extra_draws: dynamic sampling once the lineage is good
    late_lr_scale: float | None = None  # algorithm.late_lr_scale: a fraction of the lr once the lineage is good
    late_reward: float = 0.8  # algorithm.late_reward: the start's gate reward from which the late settings apply
    through_worse: int = 0  # algorithm.through_worse: worse candidates in a row the lineage still continues
    gate_tasks: int = 200
    canary_percent: int = 25  # one round's canary share is the sequential test's horizon (24 of 96 requests)
    tick_after_promotion: bool = False  # the tick that promoted a canary is followed by another (module docstring)
    seed: int = 0
    lineage: bool = True
    reference: bool = True
    fresh_tasks: int = 100
    svg: Path | None = None
    reference_minutes: float | None = None  # None: as long as the loop ran


def keep(opts: DemoOptions) -> dict[str, Any]:
    """The loop's lineage fields (issue 16), or those of the behaviour before it (``lineage = False``)."""
    if not opts.lineage:
        return {"lineage": False, "max_steps": None, "late_temperature": None, "keep_optimizer": False}
    return {"lineage": True, "max_steps": 4 * opts.steps, "late_reward": opts.late_reward,
            "late_temperature": opts.late_temperature, "late_extra_draws": opts.late_extra_draws,
            "late_lr_scale": opts.late_lr_scale,
            "keep_optimizer": True, "failure_share": opts.failure_share, "through_worse": opts.through_worse}


def loop_config(opts: DemoOptions) -> dict[str, Any]:
    """The demo's loop config (what ``PUT /api/loops/calc`` receives)."""
    env = {"env": "arithmetic", "env_args": {"level": 1}}
    return {
        "deployment": DEPLOYMENT,
        "sources": [{"kind": "grader", **env, "answer": "lookup", "lookup_tasks": 5000}],
        "curation": {"holdout_frac": 0.1, "metadata": {"app": "calc-demo"}},
        "trigger": {"every": max(8, opts.requests // 2), "min_examples": 16},
        "algorithm": {"kind": "grpo", "warm_start": True, **keep(opts), "train": {
            "steps": opts.steps, "seed": opts.seed, "lora": {"rank": 16, "alpha": 32}, "optim": {"lr": 5e-4},
            "rl": {"prompts_per_step": opts.prompts, "group_size": 8, "max_tokens": 32, "temperature": 1.0}}},
        "gate": {"metric": "reward", "test": "bootstrap", "confidence": 0.95, "max_tokens": 32,
                 "environments": [{**env, "tasks": opts.gate_tasks, "seed": 1_000_003}]},
        "promotion": {"canary_percent": opts.canary_percent, "canary_min_requests": max(4, opts.requests // 6),
                      "min_samples": max(4, opts.requests // 6), "max_drop": 0.1, "signals": ["grader"],
                      # the sequential test stops at one round's canary share: a clearly worse canary is rolled
                      # back, a clearly better one promoted as soon as shown; one in between after that round
                      "canary_max_samples": max(4, opts.requests // 6, opts.requests * opts.canary_percent // 100),
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
    minutes: float = 0.0  # when the round's traffic ended, minutes since the first round began

    @property
    def overall(self) -> float | None:
        """The round's online reward over every arm (what the users got)."""
        n = sum(self.counts.values())
        return sum((self.reward[k] or 0.0) * c for k, c in self.counts.items()) / n if n else None


@dataclass
class DemoResult:
    """What the demo measured: the rounds, the offline reference curve, the fresh held-out checks."""

    rounds: list[Round]
    reference: list[tuple[float, float]] = field(default_factory=list)
    fresh: list[dict[str, Any]] = field(default_factory=list)
    iterations: list[dict[str, Any]] = field(default_factory=list)
    loop_minutes: float = 0.0
    svg: Path | None = None


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


def round_users(opts: DemoOptions, number: int) -> list[str]:
    """The ``user`` id of each of round ``number``'s requests: the next ``opts.requests`` of ``opts.population``."""
    return [f"user-{(number * opts.requests + i) % opts.population:04d}" for i in range(opts.requests)]


async def send_round(url: str, key: str, opts: DemoOptions, number: int) -> tuple[int, float]:
    """One round of simulated users asking arithmetic questions through the OpenAI API; (answered, seconds)."""
    import httpx

    from teachloop.envs import Arithmetic

    tasks = Arithmetic(level=1).take(opts.requests, seed=10_000 + opts.seed * 100 + number)
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    for user_id, task in zip(round_users(opts, number), tasks, strict=True):
        queue.put_nowait((user_id, task))
    answered = 0
    started = time.perf_counter()

    async def user(k: int, client: httpx.AsyncClient) -> None:
        nonlocal answered
        while not queue.empty():
            user_id, task = queue.get_nowait()
            body = {"model": DEPLOYMENT, "messages": [m.to_openai() for m in task.prompt], "max_tokens": 32,
                    "temperature": 0, "user": user_id, "metadata": {"app": "calc-demo"}}
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
    t_loop = time.perf_counter()
    for number in range(opts.max_rounds):
        if promoted >= opts.iterations or (time.perf_counter() - t0) / 60 > opts.budget_min:
            break
        served = _serving(database, org_id)
        since = utc_now()
        answered, seconds = await send_round(url, key, opts, number)
        ended = (time.perf_counter() - t_loop) / 60
        result = await runner.tick()
        reward, counts = round_figures(database, org_id, since)
        rnd = Round(number, served, answered, seconds, reward, counts, minutes=ended)
        shown = "  ".join(f"{k} {v:.3f} (n={counts[k]})" for k, v in sorted(reward.items()) if v is not None)
        console.print(f"[bold]round {number}[/]: {answered} requests in {seconds:.0f}s to {served}: online reward "
                      f"{shown}", highlight=False)
        # a canary round whose tick ends in a watch promoted the canary; unless that was the last promotion asked
        # for (the next round then serves it to everyone, and the demo ends), the next iteration starts at once
        just_promoted = opts.tick_after_promotion and result.phase == "watch" and "canary" in served
        if result.iteration is None and (
                (result.phase == "idle" and result.note)  # a watch just ended: the trigger may be due already
                or (just_promoted and len(_promoted(history(database, org_id, DEPLOYMENT))) < opts.iterations)):
            result = await runner.tick()
        rnd.loop = result.note
        rounds.append(rnd)
        promoted = sum(1 for it in _promoted(history(database, org_id, DEPLOYMENT))
                       if "watch" in (it["canary"] or {}))  # promoted, and watched over a round of everyone
    return rounds


def _promoted(iterations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [it for it in iterations if it["status"] == "promoted"]


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


def greedy_reward(engine: Any, renderer: Any, tasks: list[Any], adapter: str | None) -> float:
    """Mean grader reward of greedy 32-token replies of ``adapter`` (None: the base) to ``tasks``."""
    from teachloop.core.sampling import SamplingParams
    from teachloop.engine.completer import EngineCompleter
    from teachloop.envs import Arithmetic, rollout

    groups = asyncio.run(rollout(Arithmetic(level=1), tasks, EngineCompleter(engine, renderer, adapter=adapter),
                                 group_size=1, params=SamplingParams(max_tokens=32, temperature=0.0),
                                 max_concurrent_groups=max(1, len(tasks))))
    return statistics.fmean(g.rewards[0] for g in groups) if groups else 0.0


def fresh_check(engine: Any, renderer: Any, blobs: Any, iterations: list[dict[str, Any]], versions: dict[str, Any],
                opts: DemoOptions) -> list[dict[str, Any]]:
    """Each promotion on a fresh held-out set: the promoted version's greedy reward vs the version it replaced.

    ``versions`` maps ``NAME@N`` to its ``AdapterVersion``; the tasks come from a seed neither the traffic
    (10_000 + ...) nor the gate (1_000_003) uses.
    """
    from teachloop.envs import Arithmetic

    tasks = Arithmetic(level=1).take(opts.fresh_tasks, seed=7_000_007 + opts.seed)
    out = []
    loaded: dict[str | None, float] = {}

    def score(ref: str) -> float:
        if ref not in loaded:
            name = None
            if ref != "base":
                name = f"demo-fresh-{versions[ref].version}"
                with tempfile.TemporaryDirectory(prefix="teachloop-demo-") as tmp:
                    engine.load_adapter(name, blobs.get_dir(versions[ref].blob_key, Path(tmp) / "a"))
            loaded[ref] = greedy_reward(engine, renderer, tasks, name)
        return loaded[ref]

    for it in sorted(iterations, key=lambda i: i["number"]):
        if it["status"] != "promoted" or not it.get("candidate"):
            continue
        before, after = score(it["baseline"]), score(it["candidate"])
        out.append({"iteration": it["number"], "replaced": it["baseline"], "promoted": it["candidate"],
                    "replaced_reward": before, "promoted_reward": after, "n": len(tasks), "worse": after < before})
    return out


def offline_reference(engine: Any, renderer: Any, minutes: float, opts: DemoOptions, *, points: int = 7,
                      log: Any = None) -> list[tuple[float, float]]:
    """GRPO offline (bench/learn_arithmetic.py's setup) for ``minutes`` of training wall clock, evaluated greedily
    on ``2 x opts.requests`` traffic-like tasks at ``points`` evenly spaced times (evaluation outside the clock)."""
    from teachloop.catalog.envref import resolve_env
    from teachloop.envs import Arithmetic
    from teachloop.train.config import LoraSection, OptimSection, RLSection
    from teachloop.train.grpo import GRPO

    name = "demo-offline-reference"
    engine.create_adapter(name, LoraSection(rank=16, alpha=32).spec(seed=opts.seed))
    args: dict[str, Any] = {"level": 1, "split": "train"}
    rl = RLSection(env="arithmetic", env_args=args, prompts_per_step=8, group_size=8, max_tokens=32,
                   temperature=1.0, loss="ppo")
    algo = GRPO(rl=rl, optim=OptimSection(lr=5e-4, grad_clip=1.0), total_steps=10**6, seed=opts.seed,
                env=resolve_env("arithmetic", **args), engine=engine, renderer=renderer, adapter=name)
    tasks = Arithmetic(level=1).take(2 * opts.requests, seed=20_000 + opts.seed)
    budget = minutes * 60
    marks = [budget * i / (points - 1) for i in range(points)] if points > 1 else [budget]
    curve: list[tuple[float, float]] = []
    spent, step = 0.0, 0

    async def train_until(limit: float) -> None:
        nonlocal spent, step
        while spent < limit:
            t = time.perf_counter()
            await algo.step(step)
            spent += time.perf_counter() - t
            step += 1

    for mark in marks:
        asyncio.run(train_until(mark))
        curve.append((spent / 60, greedy_reward(engine, renderer, tasks, name)))
        if log is not None:
            log(f"offline reference: {spent / 60:5.1f} min, {step} steps: reward {curve[-1][1]:.3f}")
    drop = getattr(engine, "delete_adapter", None)
    if drop is not None:
        with contextlib.suppress(Exception):
            drop(name)
    return curve


def loop_curve(rounds: list[Round]) -> list[tuple[float, float]]:
    """(minutes since the first round began, the round's online reward over every arm) per round."""
    return [(r.minutes, float(r.overall)) for r in rounds if r.overall is not None]


def write_svg(path: Path, rounds: list[Round], reference: list[tuple[float, float]]) -> Path:
    """Both curves as an SVG (``train.plot.svg_plot``)."""
    from teachloop.train.plot import svg_plot

    series: dict[str, Sequence[tuple[float, float]]] = {"loop: online reward per round": loop_curve(rounds)}
    if reference:
        series["offline GRPO reference (held-out traffic-like tasks)"] = list(reference)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg_plot(series, title="teachloop demo: the loop vs offline GRPO", y_label="reward",
                             x_label="minutes"), encoding="utf-8")
    return path


def print_curves(rounds: list[Round], reference: list[tuple[float, float]]) -> None:
    """Both curves as a table, and each one's last point."""
    console.print("[bold]online reward per round (loop) and the offline reference:[/]")
    for r in rounds:
        if r.overall is not None:
            console.print(f"  loop      {r.minutes:5.1f} min  round {r.number:2d}  {r.overall:.3f}  ({r.served})",
                          highlight=False)
    for minute, reward in reference:
        console.print(f"  offline   {minute:5.1f} min            {reward:.3f}", highlight=False)
    if rounds and reference:
        last = loop_curve(rounds)[-1][1] if loop_curve(rounds) else 0.0
        console.print(f"  end: loop {last:.3f} vs offline {reference[-1][1]:.3f} "
                      f"({100 * (last - reference[-1][1]):+.1f} points)", highlight=False)


def run_demo(opts: DemoOptions, home: Path, *, model_dir: Path | None = None) -> DemoResult:
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
            t_loop = time.perf_counter()
            rounds = asyncio.run(_rounds(url, key, opts, runner, database, org_id, t0))
            loop_minutes = (time.perf_counter() - t_loop) / 60
            iterations = _history(database, org_id)
        with database.session(write=False) as s:
            from teachloop.store.repos.deployments import AdapterVersions

            versions = {v.ref: v for v in AdapterVersions(s).list(org_id, DEPLOYMENT)}
        fresh = fresh_check(engine, renderer, blobs, iterations, versions, opts) if opts.fresh_tasks else []
        ref_minutes = loop_minutes if opts.reference_minutes is None else opts.reference_minutes
        reference = (offline_reference(engine, renderer, ref_minutes, opts,
                                       log=lambda m: console.print(m, highlight=False))
                     if opts.reference else [])
    finally:
        deps.close()
    console.print()
    console.print("[bold]iterations:[/]")
    for it in reversed(iterations):
        suites = ", ".join(f"{s['name']} {s['baseline_mean']:.3f} -> {s['candidate_mean']:.3f}"
                           for s in (it.get("gate") or {}).get("suites", []))
        start = ""
        if it.get("plan"):
            pl = it["plan"]
            kept = " + its AdamW state" if (pl.get("optimizer") or {}).get("restored") else ""
            start = f"from {pl['start']}{' ' + str(pl['parent_iteration']) if pl.get('parent_iteration') else ''}" \
                    f"{kept}, {pl['steps']} steps  "
        console.print(f"  {it['number']}: {it['status']:11s} {it.get('candidate') or '-':8s} "
                      f"train {it['train_seconds']:.0f}s  {start}gate: {suites or '-'}", highlight=False)
    console.print("[bold]the deployed model's online reward (traffic it served to everyone):[/]")
    for version, reward, n in summary(rounds):
        console.print(f"  {version:10s} {reward:.3f}  (n={n})", highlight=False)
    for f in fresh:
        console.print(f"  fresh held-out check, iteration {f['iteration']}: {f['replaced']} {f['replaced_reward']:.3f}"
                      f" -> {f['promoted']} {f['promoted_reward']:.3f} (n={f['n']})"
                      f"{'  WORSE' if f['worse'] else ''}", highlight=False)
    print_curves(rounds, reference)
    svg = write_svg(opts.svg or home / "demo.svg", rounds, reference)
    console.print(f"curves: {svg}", highlight=False)
    console.print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min; loop history: "
                  f"TEACHLOOP_HOME={home} teachloop loop history {DEPLOYMENT}", highlight=False)
    return DemoResult(rounds, reference, fresh, iterations, loop_minutes, svg)


def _history(database: Any, org_id: str) -> list[dict[str, Any]]:
    from teachloop.loop.service import history

    return history(database, org_id, DEPLOYMENT)


def _environ() -> dict[str, str]:
    import os

    from teachloop.core.settings import Settings

    env = dict(os.environ)
    for var in ("TEACHLOOP_DATABASE_URL", "TEACHLOOP_BLOB_URL"):
        env.pop(var, None)  # the demo's own home holds its database and blobs
    env.setdefault("TEACHLOOP_MODEL_CACHE", str(Settings.from_env(env).model_cache))  # the usual one, not HOME's
    return env


@app.command("demo")
def demo(
    home: Path = typer.Option(None, "--home", help="TEACHLOOP_HOME of the demo (default: a new temporary folder)."),
    iterations: int = typer.Option(3, "--iterations", min=1, help="Stop after this many promotions."),
    requests: int = typer.Option(96, "--requests", min=8, help="Requests per round of traffic."),
    users: int = typer.Option(24, "--users", min=1, help="Simulated users sending concurrently."),
    population: int = typer.Option(960, "--population", min=1,
                                   help="Distinct simulated users; each round's requests come from the next "
                                        "--requests of them, so the canary's share of a round is near "
                                        "--canary-percent."),
    steps: int = typer.Option(6, "--steps", min=1, help="GRPO steps of the first iteration (then up to 4x)."),
    prompts: int = typer.Option(8, "--prompts", min=1, help="GRPO prompts per step (each sampled 8 times)."),
    failure_share: float = typer.Option(0.0, "--failure-share", min=0.0, max=0.99,
                                        help="Share of GRPO tasks drawn from the prompts whose served reply the "
                                             "grader failed (the loop's algorithm.failure_share)."),
    late_extra_draws: int = typer.Option(0, "--late-extra-draws", min=0, max=16,
                                         help="Once the lineage's gate reward reaches 0.8, GRPO steps draw up to "
                                              "this many more batches of prompts while too few groups' rewards "
                                              "vary (the loop's algorithm.late_extra_draws; 0, the default: off)."),
    late_lr_scale: float = typer.Option(1.0, "--late-lr-scale", min=0.01, max=1.0,
                                        help="Once the lineage's gate reward reaches 0.8, runs train at this "
                                             "fraction of the lr (the loop's algorithm.late_lr_scale; 1, the "
                                             "default: the plain lr)."),
    through_worse: int = typer.Option(0, "--through-worse", min=0, max=100,
                                      help="The lineage also continues a candidate the gate found worse, up to "
                                           "this many in a row (the loop's algorithm.through_worse; 0: never)."),
    canary_percent: int = typer.Option(25, "--canary-percent", min=1, max=99,
                                       help="Share of users a candidate serves first; one round's canary arm is "
                                            "the sequential test's horizon."),
    max_rounds: int = typer.Option(12, "--max-rounds", min=1, help="Rounds of traffic at most."),
    budget_min: float = typer.Option(28.0, "--budget-min", min=1, help="Start no round after this many minutes."),
    restart: bool = typer.Option(False, "--restart", help="The loop before issue 16: every iteration restarts from "
                                                          "the deployed adapter with --steps steps."),
    reference: bool = typer.Option(True, "--reference/--no-reference",
                                   help="Train the offline GRPO reference for as long as the loop ran."),
    fresh_tasks: int = typer.Option(100, "--fresh-tasks", min=0,
                                    help="Fresh held-out tasks each promotion is checked on (0: no check)."),
    svg: Path = typer.Option(None, "--svg", help="Where to write both curves (default: HOME/demo.svg)."),
) -> None:
    """Run the loop end to end: simulated users -> traces -> grader -> GRPO -> gate -> canary -> better model."""
    with handle_errors():
        folder = home or Path(tempfile.mkdtemp(prefix="teachloop-demo-"))
        opts = DemoOptions(iterations=iterations, requests=requests, users=users, population=population,
                           steps=steps, prompts=prompts, failure_share=failure_share,
                           late_extra_draws=late_extra_draws or None, canary_percent=canary_percent,
                           late_lr_scale=late_lr_scale if late_lr_scale < 1 else None,
                           through_worse=through_worse, max_rounds=max_rounds,
                           budget_min=budget_min, lineage=not restart, reference=reference, fresh_tasks=fresh_tasks,
                           svg=svg)
        run_demo(opts, folder)


__all__ = [
    "DemoOptions",
    "DemoResult",
    "Round",
    "app",
    "fresh_check",
    "greedy_reward",
    "keep",
    "loop_config",
    "loop_curve",
    "offline_reference",
    "print_curves",
    "round_users",
    "run_demo",
    "summary",
    "write_svg",
]

"""Does the loop reach what offline training reaches? ``teachloop demo``'s task and budget, three ways.

Contenders, each in its own subprocess (its own model load, engine and home), run in the
order given (``--order``, alternated when ``--repeats`` > 1):

* ``lineage`` -- the loop as shipped (issue 16): each iteration continues the newest
  candidate that was not worse than the deployed version, steps double while the candidate
  still improves (up to 4x), rollouts at temperature 0.7 once the gate reward reaches 0.8;
* ``eager`` -- the same lineage with what was tried on 2026-12-07 (``bench/README.md``): dynamic
  sampling (2 extra draws) from that point on, a 50% canary, and the next iteration right
  after a promotion (``DemoOptions.tick_after_promotion``) instead of after a round more;
* ``draws`` -- the same lineage with dynamic sampling once its gate reward reaches 0.8
  (``algorithm.late_extra_draws``, ``--late-extra-draws`` or 2), the one late-stage change that
  ``bench/late_stage.py`` showed moving that stage in isolation;
* ``lowlr`` -- the same lineage at a fraction of the lr once its gate reward reaches 0.8
  (``algorithm.late_lr_scale``, ``--late-lr-scale`` or 0.5): past ~0.93 the shipped lineage's continuations
  drifted down within 6-24 steps (run O, ``bench/README.md``) while offline GRPO, at the same lr, kept
  climbing through its dips; smaller late steps stay nearer the peak the gate kept;
* ``through`` -- the same lineage continuing through candidates the gate found worse, up to
  ``--through-worse`` (3) in a row (``algorithm.through_worse``), as offline training continues
  through its dips;
* ``few`` -- the same lineage with the demo's traffic before 2026-12-07: the same ``--users`` (24) users
  every round instead of the next ``--requests`` of ``--population`` (960), so the canary's sticky share of
  each round is fixed for the run (8 to 28 of 96 requests in earlier runs) instead of near 25%;
* ``restart`` -- the loop before issue 16 (``teachloop demo --restart``): every iteration
  restarts from the deployed adapter with ``--steps`` steps;
* ``offline`` -- the demo's offline reference (``bench/learn_arithmetic.py``'s GRPO setup)
  trained for the median minute of the loop contenders' last rounds, evaluated greedily on
  traffic-like tasks at seven points.

Both loop contenders run ``cli.demo.run_demo`` (the demo's traffic, loop config, gate and
canary) for ``--budget-min`` minutes, without the demo's own reference, and check every
promotion on a fresh held-out set. Printed: each contender's curve, the loop's end (the
online reward of the primary arm -- the deployed version -- in the last round, and the mean
of the last two rounds), the reference's end, the gap in points, and the fresh checks. JSON
and an SVG of the three curves go to ``--out``.

    python bench/loop_vs_offline.py --budget-min 14 --repeats 2
    python bench/loop_vs_offline.py --budget-min 13 --requests 32 --users 8 --gate-tasks 64   # reduced budget
    python bench/loop_vs_offline.py --summarise --out DIR   # only the table, from KIND-REPEAT.json files in DIR

On a machine whose cores other processes share, set ``OMP_NUM_THREADS=1``: with torch's default
threads per process, oversubscription slows serving by an order of magnitude.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOOPS = ("lineage", "eager", "draws", "lowlr", "through", "few", "restart")


def _opts(args: Any, kind: str) -> Any:
    """The demo's options of contender ``kind`` (``lineage``, ``eager``, ``draws``, ``lowlr``, ``through``, ``few``,
    ``restart``; ``offline`` as lineage)."""
    from teachloop.cli.demo import DemoOptions

    lineage = kind != "restart"
    opts = DemoOptions(iterations=10_000, requests=args.requests, users=args.users, population=args.population,
                       max_rounds=10_000, budget_min=args.budget_min, steps=args.steps, prompts=args.prompts,
                       failure_share=args.failure_share if lineage else 0.0,
                       late_temperature=args.late_temperature or None, lineage=lineage, reference=False,
                       late_extra_draws=args.late_extra_draws if lineage and args.late_extra_draws else None,
                       late_reward=args.late_reward, canary_percent=args.canary_percent,
                       fresh_tasks=args.fresh_tasks, gate_tasks=args.gate_tasks)
    if kind == "eager":  # tried on 2026-12-07 (bench/README.md, "Dynamic sampling, a 50% canary and no round ...")
        opts = dataclasses.replace(opts, late_extra_draws=args.late_extra_draws or 2, canary_percent=50,
                                   tick_after_promotion=True)
    if kind == "draws":
        opts = dataclasses.replace(opts, late_extra_draws=args.late_extra_draws or 2)
    if kind == "lowlr":
        opts = dataclasses.replace(opts, late_lr_scale=args.late_lr_scale or 0.5)
    if kind == "through":
        opts = dataclasses.replace(opts, through_worse=args.through_worse)
    if kind == "few":  # the demo's traffic before 2026-12-07: user i % users, the same users every round
        opts = dataclasses.replace(opts, population=args.users)
    return opts


def loop_worker(args: Any, kind: str, out: Path) -> None:
    from teachloop.cli.demo import loop_curve, run_demo

    with tempfile.TemporaryDirectory(prefix="bench-loop-") as home:
        t0 = time.perf_counter()
        result = run_demo(_opts(args, kind), Path(home) / "home")
        rounds = [{"number": r.number, "minutes": r.minutes, "served": r.served, "reward": r.reward,
                   "counts": r.counts, "overall": r.overall} for r in result.rounds]
        its = [{"number": i["number"], "status": i["status"], "plan": i.get("plan"), "candidate": i.get("candidate"),
                "train_seconds": i["train_seconds"], "gate": [(s["name"], s["baseline_mean"], s["candidate_mean"])
                                                              for s in (i.get("gate") or {}).get("suites", [])]}
               for i in result.iterations]
        out.write_text(json.dumps({"curve": loop_curve(result.rounds), "rounds": rounds, "iterations": its,
                                   "fresh": result.fresh, "loop_minutes": result.loop_minutes,
                                   "wall_minutes": (time.perf_counter() - t0) / 60}))


def offline_worker(args: Any, minutes: float, out: Path) -> None:
    from teachloop.cli.demo import offline_reference
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer

    path = ensure_default_model(Settings.from_env())
    engine, renderer = TorchEngine(path, device="cpu"), Renderer.from_pretrained(path)
    t0 = time.perf_counter()
    curve = offline_reference(engine, renderer, minutes, _opts(args, "offline"), log=lambda m: print(m, flush=True))
    out.write_text(json.dumps({"curve": curve, "minutes": minutes, "wall_minutes": (time.perf_counter() - t0) / 60}))


def _primary(r: dict[str, Any]) -> float | None:
    """The deployed version's online reward in a round (its primary arm)."""
    keys = [k for k in r["reward"] if k.startswith("primary:")]
    n = sum(r["counts"][k] for k in keys)
    return sum(r["reward"][k] * r["counts"][k] for k in keys) / n if n else None


def summarise(name: str, res: dict[str, Any]) -> dict[str, Any]:
    if name == "offline":
        return {"end": res["curve"][-1][1], "minutes": res["minutes"]}
    prim = [p for p in (_primary(r) for r in res["rounds"]) if p is not None]
    statuses = [i["status"] for i in res["iterations"]]
    return {"end": prim[-1] if prim else None, "end_last2": statistics.fmean(prim[-2:]) if prim else None,
            "minutes": res["loop_minutes"], "end_minute": res["rounds"][-1]["minutes"] if res["rounds"] else None, "rounds": len(res["rounds"]), "iterations": len(statuses),
            "promoted": statuses.count("promoted"), "rejected": statuses.count("rejected"),
            "rolled_back": statuses.count("rolled_back"),
            "fresh_worse": sum(1 for f in res["fresh"] if f["worse"]), "fresh_checked": len(res["fresh"])}


def at(curve: list[list[float]], minute: float) -> float:
    """The curve's value at ``minute`` (linear between its points; its last value beyond them)."""
    pts = sorted((float(x), float(y)) for x, y in curve)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= minute <= x1:
            return y0 + (y1 - y0) * (minute - x0) / (x1 - x0) if x1 > x0 else y1
    return pts[-1][1] if minute > pts[-1][0] else pts[0][1]


def main() -> None:
    # the demo's defaults are the bench's (importing the demo's options loads no torch)
    from teachloop.cli.demo import DemoOptions as Demo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=14.0, help="loop budget (the demo's --budget-min)")
    ap.add_argument("--requests", type=int, default=Demo.requests, help="requests per round (the demo's default)")
    ap.add_argument("--users", type=int, default=Demo.users, help="simulated users sending at once")
    ap.add_argument("--population", type=int, default=Demo.population,
                    help="distinct simulated users (the demo's default); few: --users")
    ap.add_argument("--steps", type=int, default=Demo.steps, help="GRPO steps per iteration (lineage: the first)")
    ap.add_argument("--prompts", type=int, default=Demo.prompts,
                    help="GRPO prompts per step of the loop (the demo's default)")
    ap.add_argument("--late-temperature", type=float, default=Demo.late_temperature,
                    help="lineage: the loop's algorithm.late_temperature (0: rl.temperature throughout)")
    ap.add_argument("--late-extra-draws", type=int, default=Demo.late_extra_draws or 0,
                    help="lineage: the loop's algorithm.late_extra_draws (dynamic sampling once the gate reward "
                         "reaches 0.8; 0: off); eager, draws: 2 unless this is set")
    ap.add_argument("--late-lr-scale", type=float, default=Demo.late_lr_scale or 0.0,
                    help="lowlr: the loop's algorithm.late_lr_scale (the lr's fraction once the gate reward reaches "
                         "0.8); 0: 0.5")
    ap.add_argument("--canary-percent", type=int, default=Demo.canary_percent,
                    help="lineage, restart: the share of users a candidate serves first")
    ap.add_argument("--late-reward", type=float, default=Demo.late_reward,
                    help="lineage: the loop's algorithm.late_reward (the gate reward from which both late settings "
                         "apply)")
    ap.add_argument("--failure-share", type=float, default=0.0,
                    help="lineage: the loop's algorithm.failure_share (the demo's --failure-share)")
    ap.add_argument("--through-worse", type=int, default=3,
                    help="through: the loop's algorithm.through_worse (worse candidates in a row it continues)")
    ap.add_argument("--fresh-tasks", type=int, default=Demo.fresh_tasks)
    ap.add_argument("--gate-tasks", type=int, default=Demo.gate_tasks, help="held-out tasks of the gate (the demo's default)")
    ap.add_argument("--order", default="lineage,restart,offline", help=f"contenders among {LOOPS} and offline")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all contenders (order alternates)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "loop_vs_offline")
    ap.add_argument("--summarise", action="store_true",
                    help="only summarise the KIND-REPEAT.json files already in --out (e.g. workers run by hand)")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "MINUTES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, minutes, out = args.worker
        if kind == "offline":
            offline_worker(args, float(minutes), Path(out))
        else:
            loop_worker(args, kind, Path(out))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    order = args.order.split(",")
    if unknown := [k for k in order if k not in (*LOOPS, "offline")]:
        ap.error(f"--order: unknown contender(s) {unknown}; choose among {', '.join((*LOOPS, 'offline'))}")
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in order}
    common = ["--budget-min", str(args.budget_min), "--requests", str(args.requests), "--users", str(args.users),
              "--population", str(args.population),
              "--steps", str(args.steps), "--prompts", str(args.prompts),
              "--failure-share", str(args.failure_share), "--late-temperature", str(args.late_temperature),
              "--late-extra-draws", str(args.late_extra_draws), "--late-reward", str(args.late_reward),
              "--late-lr-scale", str(args.late_lr_scale),
              "--canary-percent", str(args.canary_percent), "--through-worse", str(args.through_worse),
              "--fresh-tasks", str(args.fresh_tasks), "--gate-tasks", str(args.gate_tasks)]
    for rep in range(0 if args.summarise else args.repeats):
        for kind in order if rep % 2 == 0 else list(reversed(order)):
            # the loop's last round, not its wall clock: an iteration still training when the budget ends is never
            # served, and would give the reference minutes the loop had no round in (22:17 run: 13.7 vs 21.2)
            loops = [r["rounds"][-1]["minutes"] if r["rounds"] else r["loop_minutes"]
                     for k in LOOPS for r in results.get(k, [])]
            minutes = statistics.median(loops) if loops else args.budget_min
            out = args.out / f"{kind}-{rep}.json"
            print(f"== {kind} (repeat {rep}){f', {minutes:.1f} min' if kind == 'offline' else ''}", flush=True)
            proc = subprocess.run([sys.executable, __file__, *common, "--worker", kind, str(minutes), str(out)],
                                  text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode != 0:
                sys.exit(f"{kind} failed (exit {proc.returncode})")
            results[kind].append(json.loads(out.read_text()))
    if args.summarise:
        for kind in order:
            results[kind] = [json.loads(f.read_text()) for f in sorted(args.out.glob(f"{kind}-*.json"))]
    table = {k: [summarise(k, r) for r in rs] for k, rs in results.items()}
    print("\ncontender  end (deployed, last round)  mean of last 2  minutes  iterations  promoted  fresh worse")
    for k, rows in table.items():
        for r in rows:
            if k == "offline":
                print(f"{k:9s}  {r['end']:.3f} (greedy, held-out traffic-like tasks)          {r['minutes']:.1f}")
            else:
                end = f"{r['end']:.3f}" if r["end"] is not None else "-"
                last2 = f"{r['end_last2']:.3f}" if r["end_last2"] is not None else "-"
                print(f"{k:9s}  {end:26s} {last2:15s} {r['minutes']:7.1f}  {r['iterations']:10d}  "
                      f"{r['promoted']:8d}  {r['fresh_worse']}/{r['fresh_checked']}")
    off = [r["end"] for r in table.get("offline", [])]
    for k in LOOPS:
        ends = [r["end"] for r in table.get(k, []) if r["end"] is not None]
        if ends and off:
            print(f"{k}: median end {statistics.median(ends):.3f} vs offline end {statistics.median(off):.3f} -> "
                  f"{100 * (statistics.median(ends) - statistics.median(off)):+.1f} points")
        for r, res in zip(table.get(k, []), results.get(k, []), strict=True):
            for o in results.get("offline", []):
                if r["end"] is not None and r["end_minute"] is not None:
                    same = at(o["curve"], r["end_minute"])
                    print(f"{k}: last round at {r['end_minute']:.1f} min {r['end']:.3f} vs offline at that minute "
                          f"{same:.3f} -> {100 * (r['end'] - same):+.1f} points")
            for f in res["fresh"]:
                print(f"{k}: fresh held-out check, iteration {f['iteration']}: {f['replaced']} "
                      f"{f['replaced_reward']:.3f} -> {f['promoted']} {f['promoted_reward']:.3f} (n={f['n']})")
    from teachloop.train.plot import svg_plot

    series: dict[str, Sequence[tuple[float, float]]] = {
        f"{k} (repeat {i})": [(float(x), float(y)) for x, y in r["curve"]] for k, rs in results.items()
        for i, r in enumerate(rs)}
    (args.out / "loop_vs_offline.svg").write_text(svg_plot(series, title="loop vs offline GRPO", y_label="reward",
                                                           x_label="minutes"))
    (args.out / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "summary": table}, indent=1))
    print(f"\nwrote {args.out}/summary.json, {args.out}/loop_vs_offline.svg")


if __name__ == "__main__":
    main()

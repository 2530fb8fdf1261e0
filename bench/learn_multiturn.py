"""Does multi-turn GRPO learn? Held-out greedy success on ``guess_number`` before and after a budget.

The protocol of ``bench/learn_arithmetic.py`` for a multi-turn, tool-using
environment: read a training config (``examples/train/grpo-arithmetic.toml``
as a new user would reuse it, or ``examples/train/grpo-guess-number.toml``),
point ``rl.env`` at ``guess_number`` (``--high``, default 10), measure greedy
held-out success, train teachloop GRPO for ``--budget-min`` minutes of wall
clock *or* ``--max-steps`` steps, whichever comes first (evaluations are
outside the budget), and measure again.

Held out: training draws tasks from the stream of ``rl.task_seed`` (0), the
evaluations from the stream of ``eval.seed`` (1000003); no evaluated task id
was trained on. (At ``high = 10`` the secrets themselves necessarily recur:
there are ten.) Success is the share of held-out episodes whose final
``answer`` is the secret (reward > 0), with a 95% t-interval over tasks; the
shaped reward (1.0, less the penalty for guesses beyond the binary-search
bound) is printed beside it. Greedy decoding plays identical tasks identically
(``guess_number``'s tasks differ only in the secret), so each distinct task
(by ``Task.hash``) is played once and counted as often as it occurs. References: a random final answer succeeds with
probability 1/high; a binary-search policy always does.

    OMP_NUM_THREADS=1 python bench/learn_multiturn.py --config examples/train/grpo-arithmetic.toml
    OMP_NUM_THREADS=1 python bench/learn_multiturn.py --config examples/train/grpo-guess-number.toml
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import time
from pathlib import Path
from typing import Any


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "n/a"


def _evaluate(engine: Any, renderer: Any, env: Any, adapter: str | None, n: int, seed: int,
              max_tokens: int) -> dict[str, Any]:
    from teachloop.core import SamplingParams
    from teachloop.engine.completer import EngineCompleter
    from teachloop.envs.eval import mean_ci95
    from teachloop.envs.rollout import rollout

    tasks = env.take(n, seed=seed)
    unique = list({t.hash: t for t in tasks}.values())  # greedy: identical tasks play identically, run each once
    t0 = time.perf_counter()
    groups = asyncio.run(rollout(env, unique, EngineCompleter(engine, renderer, adapter=adapter, prefix_cache=True),
                                 group_size=1,
                                 params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
                                 max_concurrent_groups=len(unique)))
    by_hash = {g.task.hash: g.trajectories[0] for g in groups}
    trajs = [by_hash[t.hash] for t in tasks]
    success = [1.0 if t.reward > 0 else 0.0 for t in trajs]
    acc, lo, hi = mean_ci95(success)
    turns = collections.Counter(t.metadata.get("model_turns", 0) for t in trajs)
    return {"acc": acc, "lo": max(0.0, lo or 0.0), "hi": min(1.0, hi or 0.0), "n": len(trajs), "distinct": len(unique),
            "reward": statistics.fmean(t.reward for t in trajs),
            "turns_mean": statistics.fmean(t.metadata.get("model_turns", 0) for t in trajs),
            "turns": dict(sorted(turns.items())), "seconds": time.perf_counter() - t0,
            "example": [f"[{m.role}] {m.content[:80]}" for m in trajs[0].messages[2:9]]}


def _fmt(e: dict[str, Any]) -> str:
    return (f"{100 * e['acc']:.1f}% [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}] (n={e['n']}, "
            f"reward {e['reward']:.3f}, {e['turns_mean']:.1f} model turns/episode)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("examples/train/grpo-guess-number.toml"))
    ap.add_argument("--high", type=int, default=10)
    ap.add_argument("--budget-min", type=float, default=10.0, help="training wall-clock budget")
    ap.add_argument("--max-steps", type=int, default=40, help="training step budget")
    ap.add_argument("--eval-n", type=int, default=100, help="held-out tasks")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="config override, as on the teachloop train command line")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()

    from teachloop.catalog.envref import resolve_env
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer
    from teachloop.train.config import load_config, parse_overrides
    from teachloop.train.grpo import GRPO

    over = parse_overrides([f"--{s}" for s in args.set])
    cfg = load_config(args.config, over)
    assert cfg.rl is not None  # a new user switching env replaces env_args (arithmetic's `level` is not guess_number's)
    kept = cfg.rl.env_args if cfg.rl.env == "guess_number" else {}
    rl = cfg.rl.model_copy(update={"env": "guess_number", "env_args": {**kept, "high": args.high}})
    eval_seed = cfg.eval.seed
    eval_tokens = cfg.eval.max_tokens or rl.max_tokens
    print(f"config {args.config}: rl {rl.model_dump()}\noptim {cfg.optim.model_dump()}\nlora {cfg.lora.model_dump()}")
    print(f"loadavg at start: {_loadavg()}", flush=True)
    path = ensure_default_model(Settings.from_env())
    engine, renderer = TorchEngine(path, device="cpu"), Renderer.from_pretrained(path)
    env = resolve_env("guess_number", **rl.env_args)
    eval_env = env.env
    print(f"environment guess_number {eval_env.version} (base and trained model measured on it)", flush=True)
    before = _evaluate(engine, renderer, eval_env, None, args.eval_n, eval_seed, eval_tokens)
    print(f"before: {_fmt(before)}\n  {before['example']}", flush=True)

    engine.create_adapter("learn", cfg.lora.spec(seed=cfg.seed))
    algo = GRPO(rl=rl, optim=cfg.optim, total_steps=args.max_steps, seed=cfg.seed, env=env, engine=engine,
                renderer=renderer, adapter="learn")
    curve: list[dict[str, float]] = []
    t0, budget = time.perf_counter(), args.budget_min * 60

    async def go() -> None:
        step = 0
        while step < args.max_steps and time.perf_counter() - t0 < budget:
            m = await algo.step(step)
            step += 1
            curve.append({k: float(m.get(k, 0.0)) for k in ("reward_mean", "groups_dropped", "train_turns",
                                                             "completion_len_mean", "step_seconds", "kl_sampler",
                                                             "train_sequences", "merged_turns")})
            print(f"  step {step}: reward {m['reward_mean']:.3f} dropped {m['groups_dropped']:.0f}/"
                  f"{m['groups']:.0f} turns {m['train_turns']:.0f} len {m['completion_len_mean']:.1f} "
                  f"{m['step_seconds']:.1f}s  {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        await algo.close()

    asyncio.run(go())
    trained_s = time.perf_counter() - t0
    load_mid = _loadavg()
    after = _evaluate(engine, renderer, eval_env, "learn", args.eval_n, eval_seed, eval_tokens)
    print(f"after:  {_fmt(after)}\n  {after['example']}")
    results = {"config": str(args.config), "high": args.high, "env_version": eval_env.version, "before": before, "after": after,
               "steps": len(curve), "minutes": trained_s / 60, "random_final_answer": 1 / args.high,
               "curve": curve, "loadavg_after_training": load_mid, "loadavg_end": _loadavg()}
    print(f"\nguess_number high={args.high}, greedy success on {args.eval_n} held-out tasks (eval.seed {eval_seed})")
    print(f"before: {_fmt(before)}")
    print(f"after:  {_fmt(after)}  ({len(curve)} steps, {trained_s / 60:.1f} min)")
    print(f"random final answer: {100 / args.high:.1f}%   loadavg {load_mid} / {_loadavg()}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "curve"}))


if __name__ == "__main__":
    main()

"""Late-stage GRPO: does a continued run still improve once most groups are all correct? Contenders from one start.

The loop's continued candidates stop improving once the deployed version answers most
traffic prompts right (``bench/README.md``, "Loop vs offline"). This isolates that stage
from the loop's gate, canary and traffic: one GRPO run (the demo's offline reference setup:
8 prompts x 8, lr 5e-4, LoRA r16, one-digit arithmetic's train split) warms an adapter for
``--warm-min`` minutes and checkpoints it with its AdamW state; then each contender
continues that checkpoint for ``--minutes`` of wall clock on a task stream the warm run did
not use, and is scored greedily on **every distinct one-digit problem** (the 180 that the
demo's traffic and gate draw from, 150 of them in the train split: exact accuracy there,
paired, the same problems for every contender; the test split's 30 are printed apart). Contenders, ``PxK``:
``P`` prompts per step, ``K`` = ``rl.extra_draws`` (dynamic sampling). They run in one
process on one engine, alternating in order seed by seed (``--seeds``), so they share the
machine's state.

    python bench/late_stage.py --warm-min 8 --minutes 3 --seeds 2 --contenders 4x0,4x2,8x0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _distinct_problems() -> list[Any]:
    from teachloop.envs import Arithmetic

    seen: dict[str, Any] = {}
    for task in Arithmetic(level=1).take(20_000, seed=777):
        seen.setdefault(task.info["expression"], task)
    return [seen[k] for k in sorted(seen)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm-min", type=float, default=8.0, help="minutes of the warm run (8 x 8 prompts)")
    ap.add_argument("--minutes", type=float, default=3.0, help="wall clock of each continued contender")
    ap.add_argument("--seeds", type=int, default=2, help="repeats of every contender (task and sampling seeds)")
    ap.add_argument("--contenders", default="4x0,4x2,8x0", help="PxK: prompts per step x extra draws")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from teachloop.catalog.envref import resolve_env
    from teachloop.cli.demo import greedy_reward
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer
    from teachloop.train.config import LoraSection, OptimSection, RLSection
    from teachloop.train.grpo import GRPO

    path = ensure_default_model(Settings.from_env())
    engine, renderer = TorchEngine(path, device="cpu"), Renderer.from_pretrained(path)
    env_args: dict[str, Any] = {"level": 1, "split": "train"}
    env = resolve_env("arithmetic", **env_args)
    from teachloop.envs.builtin.arithmetic import split_of

    tests = _distinct_problems()
    held = [t for t in tests if split_of(t.info["expression"]) == "test"]

    def algo(adapter: str, prompts: int, extra: int, seed: int) -> GRPO:
        rl = RLSection(env="arithmetic", env_args=env_args, task_seed=seed, prompts_per_step=prompts, group_size=8,
                       max_tokens=32, temperature=1.0, loss="ppo", extra_draws=extra)
        return GRPO(rl=rl, optim=OptimSection(lr=5e-4, grad_clip=1.0), total_steps=10**6, seed=seed, env=env,
                    engine=engine, renderer=renderer, adapter=adapter)

    def train(grpo: GRPO, seconds: float, first_step: int = 0) -> dict[str, Any]:
        t0, step, varied = time.perf_counter(), first_step, []
        while time.perf_counter() - t0 < seconds:
            m = asyncio.run(grpo.step(step))
            varied.append(m["groups"] - m["groups_dropped"])
            step += 1
        return {"steps": step - first_step, "seconds": time.perf_counter() - t0,
                "groups_varied_per_step": statistics.fmean(varied) if varied else 0.0}

    engine.create_adapter("warm", LoraSection(rank=16, alpha=32).spec(seed=0))
    print(f"{len(tests)} distinct problems ({len(held)} in the test split); base greedy "
          f"{greedy_reward(engine, renderer, tests, None):.3f}", flush=True)
    warm = train(algo("warm", 8, 0, 0), args.warm_min * 60)
    start = greedy_reward(engine, renderer, tests, "warm")
    print(f"warm run: {warm['steps']} steps in {warm['seconds'] / 60:.1f} min -> {start:.3f}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    contenders = args.contenders.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = engine.save_checkpoint("warm", Path(tmp) / "warm")
        for seed in range(1, args.seeds + 1):
            for name in contenders if seed % 2 else list(reversed(contenders)):
                prompts, extra = (int(x) for x in name.split("x"))
                adapter = f"c{name}-{seed}"
                info = engine.load_checkpoint(adapter, ckpt)
                out = train(algo(adapter, prompts, extra, seed), args.minutes * 60, first_step=info.step)
                out["reward"] = greedy_reward(engine, renderer, tests, adapter)
                out["test_split"] = greedy_reward(engine, renderer, held, adapter)
                results.setdefault(name, []).append(out)
                engine.delete_adapter(adapter)
                print(f"  seed {seed} {name}: {out['steps']} steps in {out['seconds']:.0f}s, "
                      f"{out['groups_varied_per_step']:.1f} varied groups/step -> {out['reward']:.3f} "
                      f"({100 * (out['reward'] - start):+.1f} points; test split {out['test_split']:.3f})",
                      flush=True)
    print(f"\nstart {start:.3f} ({warm['steps']} warm steps); continued {args.minutes:g} min each, "
          f"{len(tests)} distinct problems")
    print("contender  median reward  median gain  rewards  steps  varied groups/step")
    for name, rows in results.items():
        rewards = [r["reward"] for r in rows]
        shown = " ".join(f"{r:.3f}" for r in rewards)
        steps = " ".join(str(r["steps"]) for r in rows)
        varied = " ".join(f"{r['groups_varied_per_step']:.1f}" for r in rows)
        print(f"{name:9s}  {statistics.median(rewards):13.3f}  {100 * (statistics.median(rewards) - start):+10.1f}  "
              f"{shown}  {steps}  {varied}")
    if args.json:
        args.json.write_text(json.dumps({"start": start, "warm": warm, "tests": len(tests), "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()

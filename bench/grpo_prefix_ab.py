"""Does ``rl.prefix_cache`` change a single-turn GRPO step's time? An A/B in one process.

The demo's offline setup (arithmetic level 1, 8 prompts x 8 samples, 32 new tokens, LoRA r16,
lr 5e-4, PPO-clip), a fresh adapter per round, rounds alternating off, on, on, off; each
round times ``--steps`` GRPO steps from the base model. Prints every step, the median per
mode and the ratio on/off.

    python bench/grpo_prefix_ab.py --steps 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time


def main() -> None:
    from teachloop.catalog.envref import resolve_env
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer
    from teachloop.train.config import LoraSection, OptimSection, RLSection
    from teachloop.train.grpo import GRPO

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed GRPO steps per round")
    args = ap.parse_args()
    path = ensure_default_model(Settings.from_env())
    engine, renderer = TorchEngine(path, device="cpu"), Renderer.from_pretrained(path)
    env_args = {"level": 1, "split": "train"}
    times: dict[bool, list[float]] = {False: [], True: []}
    for rnd, mode in enumerate([False, True, True, False]):
        name = f"ab{rnd}"
        engine.create_adapter(name, LoraSection(rank=16, alpha=32).spec(seed=0))
        rl = RLSection(env="arithmetic", env_args=env_args, prompts_per_step=8, group_size=8, max_tokens=32,
                       temperature=1.0, loss="ppo", prefix_cache=mode)
        algo = GRPO(rl=rl, optim=OptimSection(lr=5e-4, grad_clip=1.0), total_steps=10**6, seed=0,
                    env=resolve_env("arithmetic", **env_args), engine=engine, renderer=renderer, adapter=name)
        per = []
        for step in range(args.steps):
            t = time.perf_counter()
            asyncio.run(algo.step(step))
            per.append(time.perf_counter() - t)
        print(f"prefix_cache={mode}: steps {[round(x, 2) for x in per]}", flush=True)
        times[mode] += per
    for mode in (False, True):
        print(f"prefix_cache={mode}: median {statistics.median(times[mode]):.2f} s/step over {len(times[mode])} steps")
    print(f"ratio on/off {statistics.median(times[True]) / statistics.median(times[False]):.2f}")


if __name__ == "__main__":
    main()

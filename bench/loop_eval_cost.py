"""What the loop's held-out evaluation (issue 16, ``algorithm.eval_tasks``) costs a GRPO iteration.

Runs short GRPO trainings of the default model on one-digit arithmetic in the loop's default shape (4 prompts x 8,
32 tokens, LoRA r16), alternating without evaluation and with ``--tasks`` held-out tasks (evaluated at step 0 and
after the last step, as a loop run under 10 steps does), and prints each wall clock. The per-evaluation cost is
the difference of a pair divided by two; a 12-step loop run evaluates 7 times (every steps // 5 = 2 steps).

    OMP_NUM_THREADS=1 python bench/loop_eval_cost.py --pairs 2
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=16, help="held-out tasks per evaluation (the loop's default)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=2, help="alternating (no eval, eval) pairs")
    args = ap.parse_args()

    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer
    from teachloop.store import BlobStore, Database, Tenancy
    from teachloop.train import Trainer, TrainerDeps, validate_config

    model = ensure_default_model(Settings.from_env())
    with tempfile.TemporaryDirectory(prefix="teachloop-evalcost-") as tmp_name:
        tmp = Path(tmp_name)
        db = Database(f"sqlite:///{tmp / 't.db'}")
        db.migrate()
        with db.session() as s:
            org = Tenancy(s).create_org("bench").id
        engine = TorchEngine(model, device="cpu")
        deps = TrainerDeps(engine=engine, renderer=Renderer.from_pretrained(model), database=db,
                           blobs=BlobStore(str(tmp / "blobs")), org_id=org, env_cache=tmp / "envs")
        arithmetic = {"env": "arithmetic", "env_args": {"level": 1}}
        for i in range(2 * args.pairs):
            tasks = args.tasks if i % 2 else 0
            cfg = validate_config({
                "name": f"evalcost-{i}", "algorithm": "grpo", "model": str(model), "steps": args.steps,
                "checkpoint_every": 0, "lora": {"rank": 16, "alpha": 32}, "optim": {"lr": 5e-4},
                "rl": {**arithmetic, "prompts_per_step": 4, "group_size": 8, "max_tokens": 32},
                "eval": {**arithmetic, "tasks": tasks, "seed": 2_000_003, "keep_best": False}})
            started = time.perf_counter()
            asyncio.run(Trainer(cfg, deps).run())
            took = time.perf_counter() - started
            print(f"eval_tasks={tasks}: {args.steps} steps + {2 if tasks else 0} evaluations in {took:.1f} s",
                  flush=True)
        db.close()


if __name__ == "__main__":
    main()

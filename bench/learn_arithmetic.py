"""Does GRPO learn? Held-out greedy arithmetic accuracy before and after a fixed wall-clock budget.

Held out means held out: the ``arithmetic`` environment splits *problems* by
a hash of their expression (``split="train"`` / ``"test"``, about 20% test),
training draws only from the train split and every evaluation uses distinct
problems of the test split, so no evaluated problem was ever trained on.

1. Pick the difficulty: measure the base model's greedy accuracy on the
   held-out problems of each candidate (digits, operators) and take the first
   whose accuracy lies in [5%, 50%] (all candidates are printed).
2. Train teachloop GRPO for ``--budget-min`` minutes of wall clock (rollouts +
   updates; evaluations are outside the budget), then measure the held-out
   accuracy again, and the accuracy on the next harder candidate's held-out
   problems (transfer). Grading reads the *last* number of the reply ("26 -
   15 = 11" is 11), never the first.
3. With ``--trl``, train TRL ``GRPOTrainer`` (the setup of bench/grpo_vs_trl.py,
   lr 2e-4) under the same budget on the same training split (its clock starts
   when its training starts, after loading), and evaluate its adapter with the
   same engine on the same held-out problems.

Accuracies are means over up to ``--eval-n`` distinct held-out problems with a
95% t-interval.

    python bench/learn_arithmetic.py --budget-min 20 --trl
    python bench/learn_arithmetic.py --pick-only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = [  # (label, Arithmetic kwargs)
    ("1-digit +-", {"level": 1}),
    ("2-digit +-", {"level": 2}),
    ("2-digit +-*", {"level": 3}),
]
EVAL_SEED = 1_000_003
MAX_NEW = 32


def _model_dir() -> Path:
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model

    return ensure_default_model(Settings.from_env())


def _unique_tasks(env: Any, n: int) -> list[Any]:
    """Up to ``n`` distinct problems of ``env``'s stream (every one when it has fewer)."""
    seen: dict[str, Any] = {}
    for i, task in enumerate(env.tasks(EVAL_SEED)):
        seen.setdefault(task.prompt[-1].content, task)
        if len(seen) >= n or i > 50 * n:
            break
    return list(seen.values())


def _evaluate(engine: Any, renderer: Any, env: Any, adapter: str | None, n: int) -> dict[str, float]:
    from teachloop.core import SamplingParams
    from teachloop.engine.completer import EngineCompleter
    from teachloop.envs.eval import report_from_groups
    from teachloop.envs.rollout import rollout

    tasks = _unique_tasks(env, n)
    groups = asyncio.run(rollout(env, tasks, EngineCompleter(engine, renderer, adapter=adapter), group_size=1,
                                 params=SamplingParams(max_tokens=MAX_NEW, temperature=0.0),
                                 max_concurrent_groups=len(tasks)))
    report = report_from_groups(groups, env=env.name, model="", seed=EVAL_SEED, seconds=0.0,
                                reward_range=env.reward_range)
    return {"acc": report.mean, "lo": report.ci_low or 0.0, "hi": report.ci_high or 0.0, "n": report.n_tasks}


def _fmt(e: dict[str, float]) -> str:
    return f"{100 * e['acc']:.1f}% [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}] (n={e['n']:.0f})"


def pick(engine: Any, renderer: Any, n: int) -> tuple[str, dict[str, Any], dict[str, float]]:
    from teachloop.envs import Arithmetic

    chosen = None
    for label, kwargs in CANDIDATES:
        e = _evaluate(engine, renderer, Arithmetic(**kwargs, split="test"), None, n)
        print(f"base greedy accuracy, {label:12s}: {_fmt(e)}", flush=True)
        if chosen is None and 0.05 <= e["acc"] <= 0.50:
            chosen = (label, kwargs, e)
    if chosen is None:
        sys.exit("no candidate difficulty has a base accuracy in [5%, 50%]")
    print(f"chosen: {chosen[0]}", flush=True)
    return chosen


def train_teachloop(engine: Any, renderer: Any, kwargs: dict[str, Any], budget_s: float, args: Any) -> int:
    from teachloop.train.config import LoraSection, OptimSection, RLSection
    from teachloop.train.envref import resolve_env
    from teachloop.train.grpo import GRPO

    engine.create_adapter("learn", LoraSection(rank=16, alpha=32).spec(seed=0))
    train_args = {**kwargs, "split": "train"}
    rl = RLSection(env="arithmetic", env_args=train_args, prompts_per_step=args.prompts, group_size=args.group,
                   max_tokens=MAX_NEW, temperature=1.0, loss="ppo")
    algo = GRPO(rl=rl, optim=OptimSection(lr=args.lr, grad_clip=1.0), total_steps=10**6, seed=0,
                env=resolve_env("arithmetic", **train_args), engine=engine, renderer=renderer, adapter="learn")
    t0, step = time.perf_counter(), 0

    async def go() -> None:
        nonlocal step
        while time.perf_counter() - t0 < budget_s:
            m = await algo.step(step)
            step += 1
            if step % 10 == 0:
                print(f"  teachloop step {step}: reward {m['reward_mean']:.3f}  {m['step_seconds']:.1f}s/step  "
                      f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)

    asyncio.run(go())
    return step


def trl_worker(kwargs: dict[str, Any], budget_s: float, out: Path) -> None:
    """Train TRL GRPO for ``budget_s`` seconds and save its adapter to ``out``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from teachloop.envs import Arithmetic, to_trl_reward

    path = _model_dir()
    env = Arithmetic(**kwargs, split="train")
    tasks = env.take(4 * 2000, seed=0)
    data = Dataset.from_list([{"prompt": [m.to_openai() for m in t.prompt], "answer": t.answer} for t in tasks])
    t0 = time.perf_counter()

    class Budget(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            nonlocal t0
            t0 = time.perf_counter()  # the budget is training time, as for teachloop (loading is outside it)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if time.perf_counter() - t0 >= budget_s:
                control.should_training_stop = True
            if state.global_step % 5 == 0:
                print(f"  trl step {state.global_step}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)

    cfg = GRPOConfig(output_dir=str(out.parent / "trl-run"), per_device_train_batch_size=32, num_generations=8,
                     max_completion_length=MAX_NEW, learning_rate=2e-4, beta=0.0, use_vllm=False, temperature=1.0,
                     max_steps=2000, logging_steps=5, save_strategy="no", report_to="none", use_cpu=True,
                     bf16=False, seed=0)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32),
                          reward_funcs=to_trl_reward(env.grader, answer_column="answer"), args=cfg,
                          train_dataset=data, processing_class=AutoTokenizer.from_pretrained(str(path)),
                          peft_config=lora, callbacks=[Budget()])
    trainer.train()
    trainer.model.save_pretrained(str(out))
    print(json.dumps({"steps": trainer.state.global_step}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=20.0, help="training wall-clock budget per contender")
    ap.add_argument("--eval-n", type=int, default=200, help="held-out tasks")
    ap.add_argument("--prompts", type=int, default=8, help="teachloop: prompts per step")
    ap.add_argument("--group", type=int, default=8, help="teachloop: completions per prompt")
    ap.add_argument("--lr", type=float, default=5e-4, help="teachloop: learning rate")
    ap.add_argument("--trl", action="store_true", help="also train TRL under the same budget")
    ap.add_argument("--pick-only", action="store_true", help="only measure the candidate difficulties")
    ap.add_argument("--trl-worker", nargs=3, metavar=("KWARGS", "BUDGET", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker:
        trl_worker(json.loads(args.trl_worker[0]), float(args.trl_worker[1]), Path(args.trl_worker[2]))
        return
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.envs import Arithmetic
    from teachloop.render import Renderer

    path = _model_dir()
    engine, renderer = TorchEngine(path, device="cpu"), Renderer.from_pretrained(path)
    label, kwargs, before = pick(engine, renderer, args.eval_n)
    if args.pick_only:
        return
    budget = args.budget_min * 60
    env = Arithmetic(**kwargs, split="test")
    harder = [(lab, kw) for lab, kw in CANDIDATES if kw["level"] > kwargs["level"]][:1]
    transfer_env = Arithmetic(**harder[0][1], split="test") if harder else None
    transfer_before = _evaluate(engine, renderer, transfer_env, None, args.eval_n) if transfer_env else None
    t0 = time.perf_counter()
    steps = train_teachloop(engine, renderer, kwargs, budget, args)
    trained_s = time.perf_counter() - t0
    after = _evaluate(engine, renderer, env, "learn", args.eval_n)
    results: dict[str, Any] = {"difficulty": label, "before": before, "teachloop": {
        "after": after, "steps": steps, "minutes": trained_s / 60, "gain_points": 100 * (after["acc"] - before["acc"]),
        "config": {"prompts_per_step": args.prompts, "group_size": args.group, "lr": args.lr, "rank": 16}}}
    if transfer_env is not None:
        results["transfer"] = {"difficulty": harder[0][0], "before": transfer_before,
                               "teachloop": _evaluate(engine, renderer, transfer_env, "learn", args.eval_n)}
    if args.trl:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "trl-adapter"
            t1 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--trl-worker", json.dumps(kwargs), str(budget), str(out)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"TRL failed:\n{proc.stderr[-4000:]}")
            trl_steps = json.loads(proc.stdout.strip().splitlines()[-1])["steps"]
            engine.load_adapter("trl", out)
            trl_after = _evaluate(engine, renderer, env, "trl", args.eval_n)
            results["trl"] = {"after": trl_after, "steps": trl_steps, "minutes": (time.perf_counter() - t1) / 60,
                              "gain_points": 100 * (trl_after["acc"] - before["acc"])}
            if transfer_env is not None:
                results["transfer"]["trl"] = _evaluate(engine, renderer, transfer_env, "trl", args.eval_n)
    print(f"\ndifficulty: {label}; greedy accuracy on distinct held-out problems, last-number grading")
    print(f"base:              {_fmt(before)}")
    t = results["teachloop"]
    print(f"teachloop GRPO:    {_fmt(t['after'])} after {t['steps']} steps / {t['minutes']:.1f} min "
          f"-> {t['gain_points']:+.1f} points")
    if "trl" in results:
        r = results["trl"]
        print(f"TRL GRPOTrainer:   {_fmt(r['after'])} after {r['steps']} steps / {r['minutes']:.1f} min (incl. load) "
              f"-> {r['gain_points']:+.1f} points")
    if "transfer" in results:
        tr = results["transfer"]
        print(f"transfer to {tr['difficulty']} (held-out): base {_fmt(tr['before'])}; teachloop {_fmt(tr['teachloop'])}"
              + (f"; TRL {_fmt(tr['trl'])}" if "trl" in tr else ""))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

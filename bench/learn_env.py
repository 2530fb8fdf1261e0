"""Does GRPO learn beyond arithmetic? ``bench/learn_arithmetic.py``'s protocol for any environment spec.

    python bench/learn_env.py --pick rg:chain_sum rg:gcd rg:letter_counting    # the pick table only
    python bench/learn_env.py --env rg:chain_sum --budget-min 10 --trl         # before / train / after

Held out means held out. Evaluation uses the first ``--eval-n`` distinct
prompts of the task stream for seed ``EVAL_SEED``; training uses the stream
for seed ``TRAIN_SEED`` with every task whose prompt (a SHA-256 of the whole
message list) is among the evaluation prompts removed. reasoning-gym draws
entry ``i`` of a dataset with seed ``s`` from ``Random(s + i)``, so seed 0 with
``--train-size`` entries and seed 1,000,003 never share a generator state;
small problem spaces still repeat questions, which is what the hash filter
catches. The script prints how many evaluation prompts occurred in the raw
training stream, and after training re-derives every task the teachloop run
was given (and every row of TRL's dataset) and checks that none is an
evaluation prompt (it exits otherwise). A spec may not fix ``seed``: the
script chooses the seeds.

The contenders, the same for every environment (nothing is tuned per family):

- teachloop GRPO with the recipe of ``learn_arithmetic.py`` / ``docs/training.md``:
  8 prompts x 8 completions, lr 5e-4 constant, grad clip 1.0, LoRA r=16
  alpha=32 on attention+MLP, PPO-clip, temperature 1.0, ``--max-tokens`` new
  tokens (the environment's own 512 is too slow on a CPU; one value for all
  families and both contenders). ``--advantage no_std`` tries Dr. GRPO's
  advantage (no division by the group's reward std) instead of the default.
- with ``--trl``: TRL ``GRPOTrainer`` with the setup of ``learn_arithmetic.py``
  (4 prompts x 8, lr 2e-4, beta 0, the same LoRA), on the same filtered
  training stream, rewarded by the environment's own grader, evaluated by the
  same engine on the same evaluation prompts.

The two contenders train *at the same time*, each in its own process, for the
same ``--budget-min`` minutes of training wall clock (each clock starts when
its training starts; loading and evaluation are outside it). Run with
``OMP_NUM_THREADS=1`` so each takes one core. Scores are greedy
(temperature 0), ``--max-tokens`` new tokens, graded by the environment
(reasoning-gym's ``score_answer`` on the extracted answer, which gives partial
credit), reported as the mean score and the exact rate (score 1) over the
evaluation prompts, each with a 95% t-interval.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from teachloop.core.rl import Task
from teachloop.envs.base import Environment
from teachloop.envs.extract import last_number
from teachloop.envs.graders.base import Sample, Score

EVAL_SEED = 1_000_003
TRAIN_SEED = 0
TRAIN_SIZE = 20_000  # entries of the training stream (seed 0): more than any budget here reaches


def prompt_key(task: Task) -> str:
    """SHA-256 of a task's whole prompt (roles and contents): two tasks with the same key are the same problem."""
    raw = json.dumps([[m.role, m.content] for m in task.prompt], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


class WithoutPrompts(Environment):
    """``inner``'s tasks except those whose prompt key is in ``excluded``; scored by ``inner``."""

    name = "held_out_train"

    def __init__(self, inner: Environment, excluded: set[str]):
        self.inner, self.excluded = inner, excluded
        self.grader, self.group_grader = inner.grader, inner.group_grader
        self.sampling, self.reward_range, self.max_turns = inner.sampling, inner.reward_range, inner.max_turns

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        return (t for t in self.inner.tasks(seed) if prompt_key(t) not in self.excluded)

    async def score(self, sample: Sample) -> Score:
        return await self.inner.score(sample)


def load_env(spec: str, size: int | None = None) -> Environment:
    from teachloop.envs.registry import load, split_query

    if "seed" in split_query(spec)[1]:
        sys.exit(f"{spec}: do not fix seed in the spec; the script picks the evaluation and training seeds")
    extra: dict[str, Any] = {"size": size} if size is not None and spec.startswith("rg:") else {}
    return load(spec, **extra)


def eval_tasks(spec: str, n: int) -> list[Task]:
    """The first ``n`` distinct prompts of the evaluation stream (fewer if the stream has fewer)."""
    seen: dict[str, Task] = {}
    for i, task in enumerate(load_env(spec, size=50 * n).tasks(EVAL_SEED)):
        seen.setdefault(prompt_key(task), task)
        if len(seen) >= n or i > 50 * n:
            break
    return list(seen.values())


def train_env(spec: str, excluded: set[str]) -> tuple[WithoutPrompts, int]:
    """The training environment and how many evaluation prompts its raw stream (first TRAIN_SIZE) contained."""
    inner = load_env(spec, size=TRAIN_SIZE)
    raw = {prompt_key(t) for t in inner.tasks(TRAIN_SEED)}
    return WithoutPrompts(inner, excluded), len(raw & excluded)


def _model_dir() -> Path:
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model

    return ensure_default_model(Settings.from_env())


def _ci(values: list[float]) -> dict[str, float]:
    from teachloop.envs.eval import mean_ci95

    mean, lo, hi = mean_ci95(values)
    return {"acc": mean, "lo": max(0.0, lo if lo is not None else mean), "hi": min(1.0, hi if hi is not None else mean),
            "n": float(len(values))}


def evaluate(engine: Any, renderer: Any, env: Environment, tasks: list[Task], adapter: str | None,
             max_new: int) -> dict[str, Any]:
    """Greedy mean score and exact rate (score 1) over ``tasks``, each with a 95% interval."""
    from teachloop.core import SamplingParams
    from teachloop.engine.completer import EngineCompleter
    from teachloop.envs.rollout import rollout

    groups = asyncio.run(rollout(env, tasks, EngineCompleter(engine, renderer, adapter=adapter), group_size=1,
                                 params=SamplingParams(max_tokens=max_new, temperature=0.0),
                                 max_concurrent_groups=len(tasks)))
    scores = [statistics.fmean(g.rewards) for g in groups]
    sample = groups[0].trajectories[0]
    finals = [last_number(g.trajectories[0].completion) for g in groups]
    top, count = collections.Counter(finals).most_common(1)[0]
    return {"score": _ci(scores), "exact": _ci([1.0 if s >= 0.999 else 0.0 for s in scores]),
            "example": {"question": tasks[0].prompt[-1].content[-200:], "answer": tasks[0].answer,
                        "reply": sample.completion[:300]},
            "most_common_final_number": {"value": top, "share": count / len(groups),
                                         "distinct": len(set(finals))}}


def majority_answer(tasks: list[Task]) -> dict[str, Any]:
    """The exact rate of always giving the evaluation set's most common answer: the floor a policy that learnt only
    the answers' distribution reaches (letter_counting: '1' is the answer to 21 of 50 prompts)."""
    value, count = collections.Counter(str(t.answer) for t in tasks).most_common(1)[0]
    return {"value": value, "exact": count / len(tasks)}


def _fmt(e: dict[str, float]) -> str:
    return f"{100 * e['acc']:.1f}% [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}]"


def _line(e: dict[str, Any]) -> str:
    return f"score {_fmt(e['score'])}, exact {_fmt(e['exact'])} (n={e['score']['n']:.0f})"


def _engine() -> tuple[Any, Any]:
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer

    path = _model_dir()
    return TorchEngine(path, device="cpu"), Renderer.from_pretrained(path)


def pick(specs: list[str], n: int, max_new: int) -> None:
    engine, renderer = _engine()
    print(f"base greedy, {n} held-out prompts each, {max_new} new tokens", flush=True)
    for spec in specs:
        tasks = eval_tasks(spec, n)
        e = evaluate(engine, renderer, load_env(spec), tasks, None, max_new)
        ok = 0.02 < e["exact"]["acc"] < 0.50
        print(f"{spec:40s} {_line(e)}{'  <- in (2%, 50%)' if ok else ''}", flush=True)
        print(f"    e.g. answer {e['example']['answer']!r}, reply {e['example']['reply'][:160]!r}", flush=True)


def train_teachloop(engine: Any, renderer: Any, env: WithoutPrompts, spec: str, budget_s: float,
                    max_new: int, advantage: str = "grpo") -> tuple[int, list[dict[str, float]]]:
    from teachloop.catalog.envref import ResolvedEnv
    from teachloop.train.config import LoraSection, OptimSection, RLSection
    from teachloop.train.grpo import GRPO

    engine.create_adapter("learn", LoraSection(rank=16, alpha=32).spec(seed=0))
    rl = RLSection(env=spec, task_seed=TRAIN_SEED, prompts_per_step=8, group_size=8, max_tokens=max_new,
                   temperature=1.0, loss="ppo", advantage=advantage)
    resolved = ResolvedEnv(env=env, ref=spec, name=env.inner.name, version=None, digest="")
    algo = GRPO(rl=rl, optim=OptimSection(lr=5e-4, grad_clip=1.0), total_steps=10**6, seed=0, env=resolved,
                engine=engine, renderer=renderer, adapter="learn")
    t0, cpu0, step, curve = time.perf_counter(), time.process_time(), 0, []

    async def go() -> None:
        nonlocal step
        while time.perf_counter() - t0 < budget_s:
            m = await algo.step(step)
            step += 1
            curve.append({"step": step, "reward": m["reward_mean"], "minutes": (time.perf_counter() - t0) / 60})
            if step % 5 == 0:
                print(f"  teachloop step {step}: reward {m['reward_mean']:.3f}  {m['step_seconds']:.1f}s/step  "
                      f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)

    asyncio.run(go())
    curve.append({"cpu_seconds": time.process_time() - cpu0})
    trained = {prompt_key(t) for s in range(step) for d in range(algo.rl.extra_draws + 1) for t in algo.tasks_for(s, d)}
    if trained & env.excluded:
        sys.exit(f"BUG: {len(trained & env.excluded)} evaluation prompts were trained on")
    print(f"  teachloop trained on {len(trained)} distinct prompts, none of them an evaluation prompt", flush=True)
    return step, curve


def trl_worker(spec: str, excluded_file: Path, budget_s: float, max_new: int, out: Path) -> None:
    """Train TRL GRPO for ``budget_s`` seconds on the filtered training stream and save its adapter to ``out``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer  # type: ignore[attr-defined]

    from teachloop.core.chat import Message

    path = _model_dir()
    excluded = set(json.loads(excluded_file.read_text()))
    env, _ = train_env(spec, excluded)
    tasks = env.take(4 * 2000, seed=TRAIN_SEED)
    if {prompt_key(t) for t in tasks} & excluded:
        sys.exit("BUG: TRL's dataset holds evaluation prompts")
    data = Dataset.from_list([{"prompt": [m.to_openai() for m in t.prompt], "answer": t.answer,
                               "task_info": json.dumps(t.info)} for t in tasks])

    def reward(prompts: list[Any], completions: list[Any], answer: list[str], task_info: list[str],
               **_: Any) -> list[float | None]:
        samples = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            task = Task(id=f"trl-{i}", prompt=tuple(Message(role=m["role"], content=m["content"]) for m in p),
                        answer=answer[i], info=json.loads(task_info[i]))
            samples.append(Sample(task, (*task.prompt, Message(role="assistant", content=c[0]["content"]))))

        async def grade() -> list[Score]:
            return list(await asyncio.gather(*(env.score(s) for s in samples)))

        return [0.0 if s.failure else s.value for s in asyncio.run(grade())]

    t0, cpu0 = time.perf_counter(), time.process_time()

    class Budget(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            nonlocal t0, cpu0
            t0, cpu0 = time.perf_counter(), time.process_time()  # the budget is training time, as for teachloop (loading is outside it)
            print(f"  trl training starts at {time.strftime('%H:%M:%S')}", flush=True)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if time.perf_counter() - t0 >= budget_s:
                control.should_training_stop = True
            if state.global_step % 5 == 0:
                print(f"  trl step {state.global_step}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)

    cfg = GRPOConfig(output_dir=str(out.parent / "trl-run"), per_device_train_batch_size=32, num_generations=8,
                     max_completion_length=max_new, learning_rate=2e-4, beta=0.0, use_vllm=False, temperature=1.0,
                     max_steps=2000, logging_steps=5, save_strategy="no", report_to="none", use_cpu=True,
                     bf16=False, seed=0)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32),
                          reward_funcs=reward, args=cfg, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(str(path)), peft_config=lora,
                          callbacks=[Budget()])
    trainer.train()
    minutes, cpu = (time.perf_counter() - t0) / 60, time.process_time() - cpu0
    trainer.model.save_pretrained(str(out))  # type: ignore[union-attr,operator]
    print(json.dumps({"steps": trainer.state.global_step, "minutes": minutes, "cpu_seconds": cpu}))


def run(args: argparse.Namespace) -> None:
    spec, budget = args.env, args.budget_min * 60
    engine, renderer = _engine()
    tasks = eval_tasks(spec, args.eval_n)
    excluded = {prompt_key(t) for t in tasks}
    env, raw_overlap = train_env(spec, excluded)
    print(f"{spec}: {len(tasks)} distinct evaluation prompts (seed {EVAL_SEED}); {raw_overlap} of them occur among "
          f"the first {TRAIN_SIZE} training entries (seed {TRAIN_SEED}) and are removed from training", flush=True)
    eval_env = load_env(spec)
    before = evaluate(engine, renderer, eval_env, tasks, None, args.max_tokens)
    print(f"base: {_line(before)}", flush=True)
    majority = majority_answer(tasks)
    print(f"always answering the most common answer {majority['value']!r}: exact {100 * majority['exact']:.1f}%",
          flush=True)
    results: dict[str, Any] = {"env": spec, "eval_seed": EVAL_SEED, "train_seed": TRAIN_SEED,
                               "raw_overlap_removed": raw_overlap, "max_tokens": args.max_tokens,
                               "budget_min": args.budget_min, "before": before, "majority_answer": majority,
                               "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    with tempfile.TemporaryDirectory() as tmp:
        out, proc = Path(tmp) / "trl-adapter", None
        if args.trl:  # TRL trains at the same time, in its own process (one core each with OMP_NUM_THREADS=1)
            (Path(tmp) / "excluded.json").write_text(json.dumps(sorted(excluded)))
            log = open(Path(tmp) / "trl.log", "w")  # noqa: SIM115 - closed below
            proc = subprocess.Popen([sys.executable, __file__, "--trl-worker", spec, str(Path(tmp) / "excluded.json"),
                                     str(budget), str(args.max_tokens), str(out)], stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ})
        t0 = time.perf_counter()
        steps, curve = train_teachloop(engine, renderer, env, spec, budget, args.max_tokens, args.advantage)
        results["teachloop"] = {"steps": steps, "minutes": (time.perf_counter() - t0) / 60, "advantage": args.advantage,
                                "cpu_seconds": curve.pop()["cpu_seconds"], "curve": curve}
        results["loadavg_after_teachloop"] = Path("/proc/loadavg").read_text().split()[:3]
        if proc is not None:
            proc.wait()
            log.close()
            text = (Path(tmp) / "trl.log").read_text()
            if proc.returncode != 0:  # teachloop's result still counts; say why TRL has none
                print(f"TRL failed:\n{text[-4000:]}", flush=True)
                results["trl_error"] = text[-4000:]
            else:
                print("\n".join(ln for ln in text.splitlines() if ln.startswith("  trl")), flush=True)
                results["trl"] = json.loads([ln for ln in text.splitlines() if ln.startswith('{"steps"')][-1])
                engine.load_adapter("trl", out)
                results["trl"]["after"] = evaluate(engine, renderer, eval_env, tasks, "trl", args.max_tokens)
        results["teachloop"]["after"] = evaluate(engine, renderer, eval_env, tasks, "learn", args.max_tokens)
    results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\n{spec}: greedy on {len(tasks)} held-out prompts, {args.max_tokens} new tokens")
    print(f"base:            {_line(before)}")
    print(f"{'majority answer:':16s} exact {100 * majority['exact']:.1f}% (always {majority['value']!r})")
    for name in ("teachloop", "trl"):
        if name in results:
            r = results[name]
            gain = 100 * (r["after"]["exact"]["acc"] - before["exact"]["acc"])
            r["gain_exact_points"] = gain
            r["gain_score_points"] = 100 * (r["after"]["score"]["acc"] - before["score"]["acc"])
            common = r["after"]["most_common_final_number"]
            print(f"{name + ':':16s} {_line(r['after'])} after {r['steps']} steps / {r['minutes']:.1f} min "
                  f"({r['cpu_seconds']:.0f} CPU-s) -> exact {gain:+.1f} points; final number {common['value']!r} in "
                  f"{100 * common['share']:.0f}% of replies, {common['distinct']} distinct")
    print(f"load average: start {results['loadavg_start']}, end {results['loadavg_end']}")
    text = json.dumps(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", help="environment spec, e.g. rg:chain_sum (no seed)")
    ap.add_argument("--pick", nargs="+", metavar="SPEC", help="only print the base model's scores on these specs")
    ap.add_argument("--budget-min", type=float, default=10.0, help="training wall clock per contender")
    ap.add_argument("--eval-n", type=int, default=200, help="held-out prompts")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens, training and evaluation")
    ap.add_argument("--trl", action="store_true", help="also train TRL, at the same time, under the same budget")
    ap.add_argument("--advantage", choices=["grpo", "no_std"], default="grpo",
                    help="teachloop's rl.advantage (the recipe's default: grpo; no_std: Dr. GRPO, no per-group std)")
    ap.add_argument("--out", help="write the results JSON here")
    ap.add_argument("--trl-worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker:
        spec, excluded, budget, max_new, out = args.trl_worker
        trl_worker(spec, Path(excluded), float(budget), int(max_new), Path(out))
    elif args.pick:
        pick(args.pick, args.eval_n, args.max_tokens)
    elif args.env:
        run(args)
    else:
        ap.error("give --env SPEC or --pick SPEC...")


if __name__ == "__main__":
    main()

"""GRPO step time and memory: teachloop vs Hugging Face TRL ``GRPOTrainer`` on the same work, same run.

The same task (arithmetic, two-digit + and -, graded on the last number of the
reply), the same model (SmolLM2-135M-Instruct, float32, CPU), LoRA r=16 /
alpha 32 on attention and MLP, 4 prompts x 8 completions per step, 32 max new
tokens, temperature 1, the same learning rate, no KL term (TRL beta=0), no
vLLM. Both normalise advantages per group, clip the ratio at 0.8/1.2 and
average the loss over all 32 sequences' tokens (TRL's default
``loss_type="dapo"``; teachloop with ``drop_zero_variance = false``), so both
compute the same update from their rollouts. TRL runs with its defaults
otherwise (gradient checkpointing on); ``--trl-no-checkpointing`` adds a TRL
run without it (faster, more memory).

Contenders:

- ``teachloop``: as shipped. A sequence whose advantage is 0 on every token
  (every sequence of a group whose rewards are all equal) has an exactly zero
  gradient here, so it is left out of the forward/backward pass; its tokens
  still count in the normalisation, so the update is unchanged (a unit test,
  tests/unit/train/test_grpo_zero_gradient.py, compares the gradients).
- ``teachloop-full``: the same, with every one of the 32 sequences put
  through the forward/backward pass, as TRL does: the same work, no skipping.
- ``teachloop-lowmem`` (``--lowmem``): ``teachloop-full`` with ``low_memory``
  (layer activation checkpointing, only the unembedding prepacked).
- ``floor`` (``--floor``): not a trainer but the arithmetic lower bound of
  ``teachloop-full``'s step on this CPU: only the float32 GEMMs of the frozen
  base that an equal-work step cannot avoid, run on the model's own weights
  at the step's shapes (the rollout's prefill and ``NEW - 1`` decode steps
  of every row, every row running to the limit; the forward of every packed
  token in the engine's micro-batches, the unembedding of every completion
  token, and the input-gradient backward of both), with nothing between
  them: no attention, norms, LoRA, sampling or Python. A step at or above
  this time is what float32 on this CPU allows; its ratio to TRL is the
  best ratio any float32 implementation of the step could report here.

Workloads (``--workload``):

- ``short`` (default): the arithmetic prompts as they are (~40 tokens), 4 prompts
  x 8 completions, 32 max new tokens.
- ``long``: the same problems behind a ~1,000-token block of notes in the user
  message (the same text for every prompt of a run; its length is calibrated
  with the model's tokenizer), 4 prompts x 8 completions, 64 max new tokens:
  a step whose memory is dominated by the prompts' activations.

Each contender runs in its own subprocess (its peak RSS is its own); the
contenders alternate round by round; the first step of every worker is a
warm-up and is not counted. Figures: median seconds per step, completion
tokens per second (completion tokens / step time), peak RSS, and the ratios (step time to the fastest TRL contender run,
peak RSS to the leanest).

    python bench/grpo_vs_trl.py                    # 2 rounds x 4 timed steps each
    python bench/grpo_vs_trl.py --rounds 1 --steps 3 --json out.json
    python bench/grpo_vs_trl.py --workload long --rounds 1 --steps 2
    python bench/grpo_vs_trl.py --phases 8,8,150,48    # where one step's memory goes, phase by phase
    python bench/grpo_vs_trl.py --rounds 1 --steps 3 --floor   # with the float32 GEMM floor beside them
    python bench/grpo_vs_trl.py --rounds 1 --steps 3 --dtype bfloat16   # both sides in bfloat16

``--dtype bfloat16`` runs both sides in bfloat16 mixed precision, the same
configuration: teachloop with ``TorchEngine(dtype="bfloat16")`` (frozen
weights stored and multiplied in bfloat16; activations, LoRA factors, their
gradients and AdamW state float32) and TRL with ``bf16=True`` (its CPU
autocast: every linear multiplies in bfloat16, the weights and LoRA factors
stay float32). Meaningful only on a CPU with AMX or AVX512-BF16.
``--trl-bf16-weights`` adds ``trl-bf16w``: TRL with the model loaded in bfloat16 as
well (PEFT keeps the LoRA factors float32), so its activations are bfloat16 too:
less precise than teachloop's float32 activations, and whichever TRL is faster is
the baseline the ratios use.

``--phases P,G,PROMPT,NEW`` runs one teachloop GRPO step's engine calls on random
tokens (P prompts of PROMPT tokens, G samples of NEW tokens each: sample,
forward_backward with PPO, optim_step) and prints the RSS before, the peak
during (sampled every 5 ms) and the RSS after each phase, for each
``--micro-batch-tokens`` value given (one process each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPTS, GROUP, MAX_NEW, LR, RANK, ALPHA = 4, 8, 32, 2e-4, 16, 32
WORKERS = ["teachloop", "teachloop-full", "teachloop-lowmem", "floor", "trl", "trl-nockpt", "trl-bf16w"]
LEVEL = 2
#: workload -> (prompts per step, completions per prompt, max new tokens, tokens of notes before each question)
WORKLOADS: dict[str, tuple[int, int, int, int]] = {"short": (PROMPTS, GROUP, MAX_NEW, 0), "long": (4, 8, 64, 1000)}


def _model_dir() -> Path:
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model

    return ensure_default_model(Settings.from_env())


def _notes(path: Path, tokens: int) -> str:
    """A deterministic block of prose of about ``tokens`` tokens under the model's tokenizer ("" for 0)."""
    if tokens <= 0:
        return ""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    rng = random.Random(16)
    words = ["the", "ledger", "of", "river", "counts", "seven", "boats", "and", "a", "mill", "near", "stone",
             "bridge", "where", "traders", "weigh", "grain", "before", "noon", "each", "day"]
    text = ""
    while len(tok.encode(text)) < tokens:
        text += " ".join(rng.choice(words) for _ in range(12)).capitalize() + ". "
    return "Notes (not needed for the question):\n" + text.strip()


def _env(path: Path, context: int) -> Any:
    """The arithmetic environment, its questions behind ``context`` tokens of notes when ``context > 0``."""
    from teachloop.envs import Arithmetic

    notes = _notes(path, context)

    class LongArithmetic(Arithmetic):
        def tasks(self, seed: int = 0) -> Any:
            for task in super().tasks(seed):
                if not notes:
                    yield task
                    continue
                prompt = tuple(m.model_copy(update={"content": f"{notes}\n\n{m.content}"}) if m.role == "user"
                               else m for m in task.prompt)
                yield task.model_copy(update={"prompt": prompt})

    return LongArithmetic(level=LEVEL)


def run_teachloop(steps: int, low_memory: bool = False, skip: bool = True, workload: str = "short",
                  dtype: str = "float32") -> dict[str, Any]:
    from teachloop.catalog.envref import ResolvedEnv
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer
    from teachloop.train.config import LoraSection, OptimSection, RLSection
    from teachloop.train.grpo import GRPO

    prompts, group, max_new, context = WORKLOADS[workload]
    path = _model_dir()
    pack = "lm_head" if low_memory and dtype == "float32" else None
    engine = TorchEngine(path, device="cpu", pack=pack, dtype=dtype)
    engine.fw.checkpoint_layers = low_memory
    renderer = Renderer.from_pretrained(path)
    engine.create_adapter("bench", LoraSection(rank=RANK, alpha=ALPHA).spec(seed=0))
    rl = RLSection(env="arithmetic", env_args={"level": LEVEL}, prompts_per_step=prompts, group_size=group,
                   max_tokens=max_new, temperature=1.0, loss="ppo", drop_zero_variance=False)
    env = _env(path, context)
    resolved = ResolvedEnv(env, f"bench:arithmetic+{context}", env.name, None, f"sha256:bench-{context}")
    algo = GRPO(rl=rl, optim=OptimSection(lr=LR, grad_clip=1.0), total_steps=steps, seed=0,
                env=resolved, engine=engine, renderer=renderer, adapter="bench", skip_zero_gradient=skip)
    times, tokens, rewards, trained = [], [], [], []

    async def go() -> None:
        for s in range(steps):
            m = await algo.step(s)
            times.append(m["step_seconds"])
            tokens.append(m["completion_tokens"])
            rewards.append(m["reward_mean"])
            trained.append(m["train_turns"] - m["skipped_zero_gradient"])

    asyncio.run(go())
    return {"step_seconds": times, "completion_tokens": tokens, "reward_mean": rewards, "trained_sequences": trained}


def run_floor(steps: int, workload: str = "short") -> dict[str, Any]:
    """The ``floor`` contender (module docstring): ``steps`` timings of the GEMMs one equal-work step needs."""
    import torch
    import torch.nn.functional as F

    from teachloop.engine.packing import micro_batches, plan_packing
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.render import Renderer

    prompts, group, max_new, context = WORKLOADS[workload]
    path = _model_dir()
    engine = TorchEngine(path, device="cpu")
    fw = engine.fw
    renderer = Renderer.from_pretrained(path)
    lens = [len(renderer.build_prompt([m.to_openai() for m in t.prompt]))
            for t in _env(path, context).take(prompts, seed=0)]
    projs = [(b.qkv, b.o, b.gate_up, b.down) for b in fw.blocks]
    head = fw.lm_head
    # the step's sequences (each prompt with its samples' completions, distinct tokens) cut into the engine's own
    # micro-batches: [packed tokens, completion tokens] of each
    token = iter(range(1, 10**9))
    seqs = [prompt + [next(token) for _ in range(max_new)]
            for prompt in ([next(token) for _ in range(n)] for n in lens) for _ in range(group)]
    micro = [[len(plan_packing([seqs[i] for i in part]).tokens), len(part) * max_new]
             for part in micro_batches(seqs, engine.micro_batch_tokens)]

    def fwd(x: torch.Tensor, p: Any) -> torch.Tensor:  # what PackedLinear runs (dense or prepacked weights)
        if p.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, p.packed, p.bias, "none", [], "")
        return F.linear(x, p.weight, p.bias)

    inputs: dict[tuple[int, int], torch.Tensor] = {}

    def x(rows: int, width: int) -> torch.Tensor:  # made once, outside the timed GEMMs (random: no denormals)
        return inputs.setdefault((rows, width), torch.randn(rows, width))

    def forward(rows: int, unembed: int) -> None:
        for layer in projs:
            for p in layer:
                fwd(x(rows, p.weight.shape[1]), p)
        fwd(x(unembed, head.weight.shape[1]), head)

    def backward(rows: int, unembed: int) -> None:  # input gradients only: the base is frozen
        x(unembed, head.weight.shape[0]).matmul(head.weight)
        for i, layer in enumerate(projs):
            for p in layer[(1 if i == 0 else 0):]:  # layer 0's q/k/v input gradient would only reach the embedding
                x(rows, p.weight.shape[0]).matmul(p.weight)

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        forward(sum(lens), prompts)  # prefill, once per prompt (the samples share its KV cache)
        for _ in range(max_new - 1):
            forward(prompts * group, prompts * group)
        t1 = time.perf_counter()
        for rows, completions in micro:
            forward(rows, completions)
            backward(rows, completions)
        return t1 - t0, time.perf_counter() - t1

    step()  # make the inputs
    times, parts = [], []
    for _ in range(steps):
        rollout, train = step()
        times.append(rollout + train)
        parts.append((rollout, train))
    return {"step_seconds": times, "rollout_seconds": [a for a, _ in parts], "train_seconds": [b for _, b in parts],
            "prompt_tokens": lens, "micro_batches": micro, "completion_tokens": [float(prompts * group * max_new)] * steps,
            "reward_mean": [0.0] * steps, "trained_sequences": [float(prompts * group)] * steps}


def run_trl(steps: int, checkpointing: bool = True, workload: str = "short", dtype: str = "float32",
            bf16_weights: bool = False) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from teachloop.envs import to_trl_reward

    prompts, group, max_new, context = WORKLOADS[workload]
    path = _model_dir()
    env = _env(path, context)
    tasks = env.take(prompts * (steps + 2), seed=0)
    data = Dataset.from_list([{"prompt": [m.to_openai() for m in t.prompt], "answer": t.answer} for t in tasks])
    reward = to_trl_reward(env.grader, answer_column="answer")
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16 if bf16_weights else torch.float32)
    times: list[float] = []
    lengths: list[float] = []
    rewards: list[float] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"] * prompts * group)
                rewards.append(logs.get("reward", 0.0))

    args = GRPOConfig(
        output_dir=os.environ.get("TMPDIR", "/tmp") + "/trl-bench", per_device_train_batch_size=prompts * group,
        num_generations=group, max_completion_length=max_new, learning_rate=LR, beta=0.0, use_vllm=False,
        temperature=1.0, max_steps=steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=dtype == "bfloat16", seed=0, dataloader_num_workers=0, gradient_checkpointing=checkpointing,
    )
    peft = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok,
                          peft_config=peft, callbacks=[Timer()])
    trainer.train()
    return {"step_seconds": times, "completion_tokens": lengths, "reward_mean": rewards,
            "trained_sequences": [float(prompts * group)] * len(times)}


def run_phases(shape: str, micro_batch_tokens: int) -> None:
    """RSS per phase of one GRPO step's engine calls (see the module docstring)."""
    import random
    import threading

    import psutil

    from teachloop.core.sampling import SamplingParams
    from teachloop.core.training import AdamParams, Datum, LoraSpec, LossConfig
    from teachloop.engine.torch_engine import TorchEngine

    prompts_n, group, plen, new = (int(x) for x in shape.split(","))
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    threading.Thread(target=watch, daemon=True).start()

    def phase(name: str, fn: Any) -> Any:
        before = peak[0] = proc.memory_info().rss
        t0 = time.perf_counter()
        out = fn()
        mb = 2**20
        print(f"{name:17s} {time.perf_counter() - t0:7.1f} s  RSS before {before / mb:6.0f} MB, peak "
              f"{peak[0] / mb:6.0f} MB, after {proc.memory_info().rss / mb:6.0f} MB", flush=True)
        return out

    engine = phase("load", lambda: TorchEngine(_model_dir(), device="cpu"))
    engine.micro_batch_tokens = micro_batch_tokens
    print(f"micro_batch_tokens = {micro_batch_tokens}; {prompts_n} prompts x {group} samples, {plen}-token prompts, "
          f"{new} new tokens", flush=True)
    phase("create_adapter", lambda: engine.create_adapter("a", LoraSpec(rank=RANK, alpha=ALPHA, seed=0)))
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(plen)] for _ in range(prompts_n)]
    params = SamplingParams(max_tokens=new, temperature=1.0, stop=[], seed=1)
    out = phase("sample", lambda: engine.sample(prompts, group, params, adapter="a"))
    datums = []
    for p, samples in zip(prompts, out, strict=True):
        for j, s in enumerate(samples):
            mask = [0.0] * len(p) + [1.0] * len(s.tokens)
            datums.append(Datum.from_sequence(p + s.tokens, mask, advantages=[m * (j - 3.5) / 2.3 for m in mask],
                                              sampler_logprobs=[0.0] * len(p) + list(s.logprobs)))
    phase("forward_backward", lambda: engine.forward_backward(datums, "ppo", LossConfig(), adapter="a",
                                                              logprobs_for="weighted"))
    phase("optim_step", lambda: engine.optim_step("a", AdamParams(learning_rate=LR)))
    done.set()
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (each contender once per round)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per worker (plus one warm-up step)")
    ap.add_argument("--json", type=Path, help="also write the raw figures as JSON here")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="short",
                    help="short: ~40-token prompts, 32 new tokens; long: ~1,000-token prompts, 64 new tokens")
    ap.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    ap.add_argument("--lowmem", action="store_true",
                    help="also run teachloop-full with low_memory (layer activation checkpointing)")
    ap.add_argument("--floor", action="store_true",
                    help="also time the float32 GEMMs alone of an equal-work step (the floor contender)")
    ap.add_argument("--trl-no-checkpointing", action="store_true",
                    help="also run TRL with gradient_checkpointing=False")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16: teachloop's bfloat16 weights and TRL's bf16=True (not with --floor)")
    ap.add_argument("--trl-bf16-weights", action="store_true",
                    help="with --dtype bfloat16: also run TRL with the model loaded in bfloat16 (trl-bf16w)")
    ap.add_argument("--phases", metavar="P,G,PROMPT,NEW", help="RSS per phase of one step's engine calls")
    ap.add_argument("--micro-batch-tokens", default="2048", help="with --phases: comma-separated values to try")
    args = ap.parse_args()
    if args.floor and args.dtype != "float32":
        ap.error("--floor times the float32 GEMMs: run it without --dtype bfloat16")
    if args.trl_bf16_weights and args.dtype != "bfloat16":
        ap.error("--trl-bf16-weights needs --dtype bfloat16")
    if args.phases:
        for value in args.micro_batch_tokens.split(","):
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                            f"import grpo_vs_trl as b; b.run_phases({args.phases!r}, {int(value)})"], check=True)
        return
    if args.worker:
        if args.worker == "floor":
            fig = run_floor(args.steps + 1, workload=args.workload)
        elif args.worker.startswith("trl"):
            fig = run_trl(args.steps + 1, checkpointing=args.worker != "trl-nockpt", workload=args.workload,
                          dtype=args.dtype, bf16_weights=args.worker == "trl-bf16w")
        else:
            fig = run_teachloop(args.steps + 1, low_memory=args.worker == "teachloop-lowmem",
                                skip=args.worker == "teachloop", workload=args.workload, dtype=args.dtype)
        fig["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(fig))
        return
    _model_dir()
    names = ["teachloop", "teachloop-full", *(["teachloop-lowmem"] if args.lowmem else []),
             *(["floor"] if args.floor else []),
             *(["trl-nockpt"] if args.trl_no_checkpointing else []),
             *(["trl-bf16w"] if args.trl_bf16_weights else []), "trl"]
    raw: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        for who in (names if rnd % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--worker", who, "--steps", str(args.steps),
                                   "--workload", args.workload, "--dtype", args.dtype],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{who} failed:\n{proc.stderr[-4000:]}")
            fig = json.loads(proc.stdout.strip().splitlines()[-1])
            raw[who].append(fig)
            print(f"round {rnd + 1} {who:9s}: steps {[round(s, 1) for s in fig['step_seconds']]} "
                  f"rss {fig['peak_rss_mb']:.0f} MB  ({time.perf_counter() - t0:.0f} s wall)", file=sys.stderr)
    summary: dict[str, dict[str, float]] = {}
    for who, figs in raw.items():
        secs = [s for f in figs for s in f["step_seconds"][1:]]
        toks = [t for f in figs for t in f["completion_tokens"][1:]]
        tps = [t / s for f in figs for t, s in zip(f["completion_tokens"][1:], f["step_seconds"][1:], strict=False)]
        summary[who] = {"median_step_s": statistics.median(secs), "completion_tokens_per_s": statistics.median(tps),
                        "mean_completion_tokens": statistics.fmean(toks) if toks else 0.0,
                        "peak_rss_mb": max(f["peak_rss_mb"] for f in figs), "timed_steps": len(secs),
                        "trained_sequences": statistics.median(
                            [t for f in figs for t in f["trained_sequences"][1:]] or [0.0])}
    print("\n| contender | timed steps | sequences through fwd/bwd (median) | median s/step | completion tokens/s "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for who, s in summary.items():
        print(f"| {who} | {s['timed_steps']:.0f} | {s['trained_sequences']:.0f} | {s['median_step_s']:.2f} "
              f"| {s['completion_tokens_per_s']:.1f} | {s['peak_rss_mb']:.0f} |")
    trls = [w for w in names if w.startswith("trl")]
    fast = min(trls, key=lambda w: summary[w]["median_step_s"])  # the baselines: the fastest TRL for time,
    lean = min(trls, key=lambda w: summary[w]["peak_rss_mb"])  # the leanest for memory
    r, m = summary[fast], summary[lean]
    print(f"\nbaselines: step time against {fast}, peak RSS against {lean}")
    for who in names:
        if who in trls:
            continue
        t = summary[who]
        print(f"\n{who}: step time / TRL = {t['median_step_s'] / r['median_step_s']:.3f} (target <= 0.2); "
              f"peak RSS / TRL = {t['peak_rss_mb'] / m['peak_rss_mb']:.3f} (target <= 0.5); "
              f"completion tokens/s / TRL = {t['completion_tokens_per_s'] / r['completion_tokens_per_s']:.2f}x")
    for f in raw.get("floor", []):
        print(f"\nfloor: prompts of {f['prompt_tokens']} tokens, micro-batches [packed tokens, completion tokens] {f['micro_batches']}; "
              f"median GEMM seconds of the rollout {statistics.median(f['rollout_seconds'][1:]):.2f}, of "
              f"forward_backward {statistics.median(f['train_seconds'][1:]):.2f}")
    if args.json:
        args.json.write_text(json.dumps({"raw": raw, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()

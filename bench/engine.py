"""Sampling throughput of teachloop's torch engine vs plain transformers ``generate``, same model, same run.

Workloads (SmolLM2-135M-Instruct by default, float32, CPU):

* ``batch1``: one chat prompt, one sample, 32 new tokens.
* ``group``: 4 prompts x 8 samples each, 32 new tokens (the GRPO rollout shape).

Every sample generates exactly 32 tokens (EOS disabled on both sides), so the
token counts are equal. Each contender runs in its own subprocess (so its peak
RSS is its own), the contenders alternate round by round, and the figures are
medians over rounds; model loading is excluded from the timings but included
in peak RSS.

    python bench/engine.py                 # 5 rounds, prints a markdown table
    python bench/engine.py --rounds 3 --json out.json
    python bench/engine.py --packs all,dense,lm_head,none    # the engine's weight modes side by side

``--packs`` runs a teachloop contender per weight mode (``LlamaForward``'s ``pack``):
``all`` (the default: a oneDNN-prepacked copy of every projection beside the dense weights),
``dense`` (oneDNN multiplies by the dense weights, one copy of them; what ``low_memory`` loads),
``lm_head`` (a prepacked copy of the unembedding only) and ``none`` (plain
``F.linear``, one copy), to weigh duplicate weights' memory against their speed.
Besides the peak RSS of the whole run, each worker reports the peak once the
model is loaded (``load_rss_mb``, before any sampling).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

NEW_TOKENS = 32
#: ``--packs`` names -> ``TorchEngine(pack=...)``
PACKS: dict[str, bool | str] = {"all": "all", "dense": "dense", "lm_head": "lm_head", "none": False}
QUESTIONS = ["What is 26 - 15?", "What is 48 + 37?", "What is 72 - 29?", "What is 15 + 66?"]


def _model_dir() -> Path:
    from teachloop.core.settings import Settings
    from teachloop.engine.models import ensure_default_model

    return ensure_default_model(Settings.from_env())


def _prompts(tokenizer) -> list[list[int]]:  # type: ignore[no-untyped-def]
    out = []
    for q in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return out


def worker(contender: str, workload: str, reps: int) -> dict[str, float]:
    """Load the model once, warm up, then time ``reps`` runs of ``workload``."""
    import torch

    model_dir = _model_dir()
    if contender.startswith("teachloop"):
        from teachloop.core import SamplingParams
        from teachloop.engine.torch_engine import TorchEngine

        mode = contender.partition(":")[2] or "all"
        engine = TorchEngine(model_dir, device="cpu", pack=PACKS[mode])
        load_rss = _peak_rss_mb()
        prompts = _prompts(engine.tokenizer)

        def run(seed: int) -> int:
            ps, n = (prompts[:1], 1) if workload == "batch1" else (prompts, 8)
            out = engine.sample(ps, n, SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0, stop=(), seed=seed))
            return sum(len(s.tokens) for g in out for s in g)

    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        load_rss = _peak_rss_mb()
        prompts = _prompts(tok)

        def run(seed: int) -> int:
            ps, n = (prompts[:1], 1) if workload == "batch1" else (prompts, 8)
            width = max(len(p) for p in ps)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in ps])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
            torch.manual_seed(seed)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                    max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_return_sequences=n,
                    pad_token_id=tok.pad_token_id,
                )
            return int((out.shape[1] - width) * out.shape[0])

    run(0)  # warm-up
    times, tokens = [], 0
    for r in range(reps):
        t0 = time.perf_counter()
        tokens = run(r + 1)
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "tokens": tokens, "peak_rss_mb": _peak_rss_mb(), "load_rss_mb": load_rss}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per workload (median reported)")
    ap.add_argument("--reps", type=int, default=1, help="timed runs inside one worker per round")
    ap.add_argument("--workloads", default="batch1,group")
    ap.add_argument("--packs", default="all", help="teachloop weight modes to run: all, dense, lm_head, none")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--worker", nargs=2, metavar=("CONTENDER", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.reps)))
        return
    _model_dir()  # pull once, outside the timings
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for workload in args.workloads.split(","):
        names = ["teachloop" if m == "all" else f"teachloop:{m}" for m in args.packs.split(",")] + ["transformers"]
        results[workload] = {n: [] for n in names}
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for contender in order:
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", contender, workload, "--reps", str(args.reps)],
                    capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                )
                if proc.returncode != 0:
                    sys.exit(f"{contender} {workload} failed:\n{proc.stderr[-3000:]}")
                fig = json.loads(proc.stdout.strip().splitlines()[-1])
                results[workload][contender].append(fig)
                print(f"  {workload:7s} round {rnd + 1} {contender:17s} {fig['tokens'] / fig['seconds']:8.1f} tok/s "
                      f"rss loaded {fig['load_rss_mb']:.0f} MB, peak {fig['peak_rss_mb']:.0f} MB", file=sys.stderr)
    summary = {}
    print("\n| workload | contender | tokens | median s | tokens/s | RSS loaded MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for workload, by in results.items():
        med = {}
        for contender, figs in by.items():
            s = statistics.median(f["seconds"] for f in figs)
            rss = statistics.median(f["peak_rss_mb"] for f in figs)
            loaded = statistics.median(f["load_rss_mb"] for f in figs)
            toks = figs[0]["tokens"]
            med[contender] = {
                "seconds": s, "tokens_per_s": toks / s, "peak_rss_mb": rss, "load_rss_mb": loaded, "tokens": toks,
            }
            print(f"| {workload} | {contender} | {toks:.0f} | {s:.2f} | {toks / s:.1f} | {loaded:.0f} | {rss:.0f} |")
        med["ratio_tokens_per_s"] = {
            f"{c.replace(':', '_')}_over_transformers": med[c]["tokens_per_s"] / med["transformers"]["tokens_per_s"]
            for c in by if c != "transformers"
        }
        summary[workload] = med
    for workload, med in summary.items():
        for key, ratio in med["ratio_tokens_per_s"].items():
            print(f"\n{workload}: {key.removesuffix('_over_transformers')} / transformers generate = "
                  f"{ratio:.2f}x tokens/s")
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "results": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()

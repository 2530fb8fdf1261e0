r"""Label aggregation on simulated workers of known accuracy: what Dawid-Skene and Bradley-Terry buy.

Categorical labels: ``--items`` items with a true class drawn uniformly from ``--classes``
classes. A pool of ``--workers`` workers: good ones (accuracy uniform in [0.65, 0.95]; a
wrong answer is a uniformly drawn wrong class), spammers (a uniformly random class,
whatever the truth) and adversaries (always a wrong class, drawn uniformly among the wrong
ones), in the shares ``--spammers`` and ``--adversaries``. Each item gets ``r`` answers
(3, then 5) from ``r`` distinct workers drawn at random. Every method aggregates the same
answers through ``teachloop.work.quality.aggregate_categorical``: ``majority`` (the
baseline), ``dawid_skene``, ``mace`` and ``glad``. Figure: the share of items whose
aggregated label is the true one.

Comparisons: ``--bt-items`` items with true log-strengths drawn from N(0, 1.5²). Each item
takes part in ``c`` comparisons (3, then 5: pairs formed from a shuffled list of every
item repeated ``c`` times), each judged by a worker of the same kind of pool: a good worker
picks the winner with the true Bradley-Terry probability, a spammer flips a coin, an
adversary reports the opposite of what a good worker would; then again with good judges
only. ``bradley_terry`` ranks the items; baselines in the same run: the win-count ranking
(wins, ties shared) and the win-rate ranking ((wins + 0.5) / (comparisons + 1)). Figures:
Spearman's rho and Kendall's tau with the true order.

Each label figure is the median over ``--seeds`` seeds, each ranking figure over
``--bt-seeds`` (cheap, and noisier); seeds are 0..n-1, so a run repeats.

    python bench/aggregation.py                  # about 5 minutes on 2 vCPUs
    python bench/aggregation.py --seeds 1 --items 60 --bt-items 20 --methods majority dawid_skene   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau, rankdata, spearmanr

from teachloop.work.quality import aggregate_categorical, bradley_terry

Answer = tuple[str, str, int]


def worker_pool(
    rng: np.random.Generator, n: int, spammers: float, adversaries: float
) -> list[tuple[str, float]]:
    """(kind, accuracy) per worker; accuracy is used by good workers only."""
    n_spam, n_adv = round(n * spammers), round(n * adversaries)
    kinds = ["spammer"] * n_spam + ["adversary"] * n_adv + ["good"] * (n - n_spam - n_adv)
    return [(kind, float(rng.uniform(0.65, 0.95))) for kind in kinds]


def simulate_labels(
    rng: np.random.Generator, pool: list[tuple[str, float]], items: int, classes: int, per_item: int
) -> tuple[list[Answer], dict[str, int]]:
    truth = {f"item{i:04d}": int(rng.integers(classes)) for i in range(items)}
    answers: list[Answer] = []
    for item, true in truth.items():
        for w in rng.choice(len(pool), size=per_item, replace=False):
            kind, accuracy = pool[int(w)]
            wrong = int((true + 1 + rng.integers(classes - 1)) % classes)
            if kind == "spammer":
                label = int(rng.integers(classes))
            elif kind == "adversary":
                label = wrong
            else:
                label = true if rng.random() < accuracy else wrong
            answers.append((item, f"worker{int(w):03d}", label))
    return answers, truth


def label_accuracy(answers: list[Answer], truth: dict[str, int], method: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    result = aggregate_categorical(answers, method=method)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    return sum(result[item].label == true for item, true in truth.items()) / len(truth), seconds


def simulate_comparisons(
    rng: np.random.Generator, pool: list[tuple[str, float]], n_items: int, per_item: int
) -> tuple[list[tuple[str, str]], dict[str, float]]:
    strength = {f"item{i:03d}": float(rng.normal(0, 1.5)) for i in range(n_items)}
    ids = list(strength)
    slots = [x for x in ids for _ in range(per_item)]
    rng.shuffle(slots)
    comparisons = []
    for a, b in zip(slots[0::2], slots[1::2], strict=False):
        if a == b:
            continue
        kind, _ = pool[int(rng.integers(len(pool)))]
        a_wins = rng.random() < 1 / (1 + np.exp(strength[b] - strength[a]))
        if kind == "spammer":
            a_wins = rng.random() < 0.5
        elif kind == "adversary":
            a_wins = not a_wins
        comparisons.append((a, b) if a_wins else (b, a))
    return comparisons, strength


def rank_correlations(scores: dict[str, float], strength: dict[str, float]) -> tuple[float, float]:
    ids = sorted(strength)
    x = rankdata([scores.get(i, 0.0) for i in ids])
    y = [strength[i] for i in ids]
    return float(spearmanr(x, y).statistic), float(kendalltau(x, y).statistic)


def ranking_figures(
    comparisons: list[tuple[str, str]], strength: dict[str, float]
) -> dict[str, tuple[float, float]]:
    ranked = bradley_terry(comparisons, items=sorted(strength))
    wins = dict.fromkeys(strength, 0.0)
    seen = dict.fromkeys(strength, 0)
    for winner, loser in comparisons:
        wins[winner] += 1
        seen[winner] += 1
        seen[loser] += 1
    rate = {i: (wins[i] + 0.5) / (seen[i] + 1) for i in strength}
    return {
        "win count (baseline)": rank_correlations(wins, strength),
        "win rate": rank_correlations(rate, strength),
        "Bradley-Terry (choix)": rank_correlations({r.item_id: r.score for r in ranked}, strength),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--workers", type=int, default=20)
    p.add_argument("--spammers", type=float, default=0.25)
    p.add_argument("--adversaries", type=float, default=0.15)
    p.add_argument("--bt-items", type=int, default=60)
    p.add_argument("--bt-seeds", type=int, default=20)
    p.add_argument("--per-item", type=int, nargs="+", default=[3, 5])
    p.add_argument("--methods", nargs="+", default=["majority", "dawid_skene", "mace", "glad"])
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    acc: dict[tuple[int, str], list[float]] = {}
    secs: dict[tuple[int, str], list[float]] = {}
    corr: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for seed in range(args.seeds):
        for r in args.per_item:
            rng = np.random.default_rng([seed, r])
            pool = worker_pool(rng, args.workers, args.spammers, args.adversaries)
            answers, truth = simulate_labels(rng, pool, args.items, args.classes, r)
            for method in args.methods:
                a, s = label_accuracy(answers, truth, method)
                acc.setdefault((r, method), []).append(a)
                secs.setdefault((r, method), []).append(s)
        print(f"seed {seed} done at {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    judges = {"mixed": (args.spammers, args.adversaries), "good only": (0.0, 0.0)}
    for seed in range(args.bt_seeds):
        for r in args.per_item:
            for kind, (spam, adv) in judges.items():
                rng = np.random.default_rng([seed, r, 1])
                pool = worker_pool(rng, args.workers, spam, adv)
                comparisons, strength = simulate_comparisons(rng, pool, args.bt_items, r)
                for name, figures in ranking_figures(comparisons, strength).items():
                    corr.setdefault((kind, r, name), []).append(figures)

    n_spam, n_adv = round(args.workers * args.spammers), round(args.workers * args.adversaries)
    print(
        f"\n{args.items} items, {args.classes} classes, {args.workers} workers "
        f"({args.workers - n_spam - n_adv} good, {n_spam} spammers, {n_adv} adversaries), "
        f"medians over {args.seeds} seeds\n"
    )
    print("| answers per item | method | accuracy of aggregated labels | vs majority | median s per fit |")
    print("|---:|---|---:|---:|---:|")
    for r in args.per_item:
        base = statistics.median(acc[(r, "majority")]) if (r, "majority") in acc else float("nan")
        for method in args.methods:
            m = statistics.median(acc[(r, method)])
            label = "majority vote (baseline)" if method == "majority" else method
            print(
                f"| {r} | {label} | {m:.3f} | {m - base:+.3f} | {statistics.median(secs[(r, method)]):.2f} |"
            )
    print(f"\n{args.bt_items} items in comparisons, medians over {args.bt_seeds} seeds\n")
    print("| judges | comparisons per item | ranking | Spearman rho | Kendall tau |")
    print("|---|---:|---|---:|---:|")
    for kind in judges:
        for r in args.per_item:
            for name in ("win count (baseline)", "win rate", "Bradley-Terry (choix)"):
                rows = corr[(kind, r, name)]
                rho = statistics.median(x for x, _ in rows)
                tau = statistics.median(y for _, y in rows)
                print(f"| {kind} | {r} | {name} | {rho:.3f} | {tau:.3f} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

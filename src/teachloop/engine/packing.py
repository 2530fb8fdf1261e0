"""Packing plans: which sequences of a batch share a prompt prefix, computed once.

``plan_packing`` sorts the sequences, measures the common prefix of
neighbours, and picks the clustering threshold that saves the most tokens:
each cluster's common prefix becomes one root segment and every member a child
segment continuing it. With GRPO groups (8 completions of one prompt) or DPO
pairs this removes the repeated prompt from the forward and backward pass;
sequences that share nothing are packed as independent roots. Pure Python; it
knows nothing about models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class PackingPlan:
    """Segments to run and where each sequence's positions live in their output.

    Attributes:
        tokens: the segments' tokens, concatenated in segment order.
        lens: tokens per segment.
        parent: per segment, the parent segment index or -1.
        rows: per input sequence, the packed row of each of its positions.
    """

    tokens: list[int]
    lens: list[int]
    parent: list[int]
    rows: list[list[int]]

    @property
    def saved_tokens(self) -> int:
        """Tokens not computed thanks to prefix sharing."""
        return sum(len(r) for r in self.rows) - len(self.tokens)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_packing(seqs: Sequence[Sequence[int]], *, min_prefix: int = 4, share: bool = True) -> PackingPlan:
    """A packing plan for ``seqs`` (each non-empty), sharing common prefixes when ``share``."""
    n = len(seqs)
    order = sorted(range(n), key=lambda i: list(seqs[i]))
    adj = [_lcp(seqs[order[k]], seqs[order[k + 1]]) for k in range(n - 1)] if share else []

    def clusters(m: int) -> list[tuple[list[int], int]]:
        out: list[tuple[list[int], int]] = []
        run = [order[0]] if n else []
        run_lcp = 10**9
        for k in range(n - 1):
            if adj[k] >= m:
                run.append(order[k + 1])
                run_lcp = min(run_lcp, adj[k])
            else:
                out.append((run, run_lcp if len(run) > 1 else 0))
                run, run_lcp = [order[k + 1]], 10**9
        if run:
            out.append((run, run_lcp if len(run) > 1 else 0))
        # every child keeps at least one token
        return [(members, min([p, *[len(seqs[i]) - 1 for i in members]])) for members, p in out]

    best: list[tuple[list[int], int]] = [([i], 0) for i in range(n)]
    best_saved = 0
    for m in sorted(set(a for a in adj if a >= min_prefix)):
        cand = clusters(m)
        saved = sum((len(mem) - 1) * p for mem, p in cand if p >= min_prefix and len(mem) > 1)
        if saved > best_saved:
            best, best_saved = cand, saved

    tokens: list[int] = []
    lens: list[int] = []
    parent: list[int] = []
    rows: list[list[int]] = [[] for _ in range(n)]
    children: list[tuple[int, int, int]] = []  # (sequence, parent segment, prefix length)
    for members, p in best:
        if len(members) > 1 and p >= min_prefix:
            seg, start = len(lens), len(tokens)
            tokens.extend(seqs[members[0]][:p])
            lens.append(p)
            parent.append(-1)
            for i in members:
                rows[i] = list(range(start, start + p))
                children.append((i, seg, p))
        else:
            for i in members:
                start = len(tokens)
                tokens.extend(seqs[i])
                lens.append(len(seqs[i]))
                parent.append(-1)
                rows[i] = list(range(start, start + len(seqs[i])))
    for i, seg, p in children:
        start = len(tokens)
        rest = seqs[i][p:]
        tokens.extend(rest)
        lens.append(len(rest))
        parent.append(seg)
        rows[i].extend(range(start, start + len(rest)))
    return PackingPlan(tokens, lens, parent, rows)


__all__ = ["PackingPlan", "plan_packing"]

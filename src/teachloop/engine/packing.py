"""Packing plans: which sequences of a batch share a prompt prefix, computed once.

``plan_packing`` sorts the sequences, measures the common prefix of
neighbours, and picks the clustering threshold that saves the most tokens:
each cluster's common prefix becomes one root segment and every member a child
segment continuing it. With GRPO groups (8 completions of one prompt) or DPO
pairs this removes the repeated prompt from the forward and backward pass;
sequences that share nothing are packed as independent roots.

``micro_batches`` splits a batch for a training step whose activation memory
must not grow with the batch: each micro-batch holds at most ``max_tokens``
packed tokens, a prompt's group stays together while it fits (so its prompt is
still computed once), and a group too large for one micro-batch is split into
parts that each repeat the prompt. Pure Python; it knows nothing about models.
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


def micro_batches(
    seqs: Sequence[Sequence[int]], max_tokens: int, *, pairs: bool = False, min_prefix: int = 4
) -> list[list[int]]:
    """Indices of ``seqs`` split into micro-batches of about ``max_tokens`` packed tokens each.

    The batch's packing plan (``plan_packing``) gives its clusters (sequences
    sharing a prompt prefix of ``p`` tokens); clusters are filled into
    micro-batches in order, greedily. A cluster larger than ``max_tokens`` is
    split into parts of consecutive members, each part packing the prefix once
    plus members' tails of at most ``max(max_tokens - p, p)`` tokens: a prompt
    is never recomputed for fewer tail tokens than its own length, so a part
    holds at most ``max(max_tokens, 2 p)`` tokens. A single sequence (or DPO
    pair) longer than that is a micro-batch of its own. The size of a
    micro-batch thus depends on ``max_tokens`` and on the longest prompt, never
    on how many sequences the batch has. With ``pairs`` (DPO) sequences ``2k``
    and ``2k + 1`` always share a micro-batch. Every index appears exactly
    once; within a micro-batch indices are sorted.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    n = len(seqs)
    if n == 0:
        return []
    plan = plan_packing(seqs, min_prefix=min_prefix)
    # units: lists of sequence indices that must not be separated (DPO pairs), in batch order
    units = [list(range(i, min(i + 2, n))) for i in range(0, n, 2)] if pairs else [[i] for i in range(n)]
    seg_of_row: list[int] = []
    for seg, length in enumerate(plan.lens):
        seg_of_row += [seg] * length
    root = [seg_of_row[plan.rows[i][0]] for i in range(n)]
    # the prefix a sequence shares with its cluster (0: it is packed alone); a child keeps >= 1 token
    shared = [plan.lens[root[i]] if plan.lens[root[i]] < len(seqs[i]) else 0 for i in range(n)]
    clusters: dict[int, list[int]] = {}  # first member's root -> units, in batch order
    for u, members in enumerate(units):
        clusters.setdefault(root[members[0]], []).append(u)

    def cost(unit_ids: list[int]) -> int:
        """Packed tokens of these units: each shared prefix once, plus every sequence's tail."""
        prefixes = {root[i]: shared[i] for u in unit_ids for i in units[u]}
        return sum(prefixes.values()) + sum(len(seqs[i]) - shared[i] for u in unit_ids for i in units[u])

    out: list[list[int]] = []
    current: list[int] = []
    for members in clusters.values():
        parts: list[list[int]] = []
        part: list[int] = []
        prefix = shared[units[members[0]][0]]
        for u in members:  # a cluster too large for one micro-batch: parts that each repeat the prefix
            if part and cost([*part, u]) > max(max_tokens, 2 * prefix):
                parts.append(part)
                part = []
            part.append(u)
        parts.append(part)
        for part in parts:
            if current and cost([*current, *part]) > max_tokens:
                out.append(current)
                current = []
            current = [*current, *part]
    if current:
        out.append(current)
    return [sorted(i for u in batch for i in units[u]) for batch in out]


__all__ = ["PackingPlan", "micro_batches", "plan_packing"]

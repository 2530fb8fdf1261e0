"""Curation: candidate rows -> the rows of a snapshot (filters, PII scrubbing, dedupe, holdout split).

``curate(candidates, cfg)`` applies, in order:

1. **filters** -- request metadata pairs that must match (``metadata``) or must
   not (``exclude_metadata``), the score range, and a length limit;
2. **PII scrubbing** (``loop.pii``: scrubadub with stricter detectors --
   emails, Luhn-checked card numbers with or without separators, passwords,
   API keys and tokens, URLs, phone numbers, social security numbers, twitter
   handles): every text is replaced by its scrubbed form (``{{EMAIL}}``,
   ``{{CREDIT_CARD}}``, ``{{PASSWORD}}``, ``{{SECRET}}``, ``{{PHONE}}``, ...);
3. **exact dedupe** on the normalised text of the whole row (case and
   whitespace folded), keeping the first (newest) occurrence;
4. **near-duplicate removal** -- MinHash (128 permutations, word 3-shingles)
   with an LSH index (datasketch) over the row's non-system texts (a shared
   system prompt would make every row look alike): a row whose estimated
   Jaccard similarity to a kept row is >= ``near_dup_threshold`` is dropped;
5. the **holdout split** -- a row is held out when ``sha256(salt, prompt)``
   falls below ``holdout_frac``, so the split depends only on the prompt: the
   same prompt lands on the same side in every snapshot, and a prompt never
   sits on both sides;
6. at most ``max_rows`` rows (newest first) are kept.

It returns the kept rows and a count of what each step dropped. Candidates
come newest first, so "first occurrence" means the newest. This module knows
nothing of the store or of training; scrubadub and datasketch load lazily.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from teachloop.loop.config import CurationConfig
from teachloop.loop.pii import scrub_text
from teachloop.loop.sources import Candidate

NUM_PERM = 128
SHINGLE = 3


@dataclass(frozen=True)
class Curated:
    """A candidate that survived curation, with its split."""

    candidate: Candidate
    split: str


@dataclass
class CurationReport:
    """What curation kept and dropped."""

    rows: list[Curated]
    candidates: int
    dropped: Counter[str]
    pii_rows: int

    def counts(self) -> dict[str, Any]:
        """JSON-able figures (stored on the iteration)."""
        splits = Counter(r.split for r in self.rows)
        return {"candidates": self.candidates, "kept": len(self.rows), "train": splits["train"],
                "holdout": splits["holdout"], "pii_scrubbed_rows": self.pii_rows, "dropped": dict(self.dropped)}


def _scrub_message(m: dict[str, Any]) -> dict[str, Any]:
    return {**m, "content": scrub_text(m.get("content") or "")}


def scrub(candidate: Candidate) -> tuple[Candidate, bool]:
    """The candidate with every message scrubbed, and whether anything changed."""
    c = candidate.content
    new: dict[str, Any] = dict(c)
    for key in ("messages", "prompt"):
        if key in c:
            new[key] = [_scrub_message(m) for m in c[key]]
    for key in ("chosen", "rejected"):
        if isinstance(c.get(key), dict):
            new[key] = _scrub_message(c[key])
    changed = new != c
    return (replace(candidate, content=new) if changed else candidate), changed


_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case- and whitespace-folded text (the exact-dedupe key)."""
    return _SPACE.sub(" ", text).strip().lower()


def row_text(candidate: Candidate, *, system: bool = True) -> str:
    """All texts of a row joined (what dedupe compares); ``system=False`` leaves out system messages."""
    c = candidate.content
    msgs = [*c.get("messages", c.get("prompt", [])), *(c[k] for k in ("chosen", "rejected") if isinstance(c.get(k), dict))]
    return "\n".join(m.get("content") or "" for m in msgs if system or m.get("role") != "system")


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    """Word ``k``-shingles of the normalised text (the whole text when it has fewer words)."""
    words = normalise(text).split(" ")
    if len(words) <= k:
        return {" ".join(words)}
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard similarity of the shingle sets of two texts (for tests and reports)."""
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _minhash(text: str) -> Any:
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM, seed=1)
    for s in sorted(shingles(text)):
        m.update(s.encode())
    return m


def near_duplicates(texts: Sequence[str], threshold: float) -> list[bool]:
    """For each text, whether it near-duplicates an earlier kept one (MinHash LSH, then the estimate)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    hashes: dict[str, Any] = {}
    out = []
    for i, text in enumerate(texts):
        m = _minhash(text)
        dup = any(hashes[k].jaccard(m) >= threshold for k in lsh.query(m))
        out.append(dup)
        if not dup:
            key = str(i)
            lsh.insert(key, m)
            hashes[key] = m
    return out


def holdout_side(prompt_key: str, frac: float, seed: int) -> str:
    """``holdout`` or ``train`` for a prompt: a fixed function of (seed, prompt)."""
    if frac <= 0:
        return "train"
    digest = hashlib.sha256(f"{seed}\0{prompt_key}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:8], "big") / 2**64 < frac else "train"


def _matches(meta: dict[str, Any], pairs: dict[str, str]) -> bool:
    return all(str(meta.get(k)) == v for k, v in pairs.items())


def curate(candidates: Sequence[Candidate], cfg: CurationConfig) -> CurationReport:
    """Curate ``candidates`` (newest first) per ``cfg``; see the module docstring."""
    dropped: Counter[str] = Counter()
    kept: list[Candidate] = []
    for c in candidates:
        if cfg.metadata and not _matches(c.metadata, cfg.metadata):
            dropped["metadata"] += 1
        elif cfg.exclude_metadata and any(str(c.metadata.get(k)) == v for k, v in cfg.exclude_metadata.items()):
            dropped["excluded_metadata"] += 1
        elif (cfg.min_score is not None and (c.score is None or c.score < cfg.min_score)) or (cfg.max_score is not None and (c.score is None or c.score > cfg.max_score)):
            dropped["score"] += 1
        elif sum(len(t) for t in c.texts()) > cfg.max_chars:
            dropped["too_long"] += 1
        else:
            kept.append(c)
    pii_rows = 0
    if cfg.pii:
        scrubbed = []
        for c in kept:
            new, changed = scrub(c)
            pii_rows += changed
            scrubbed.append(new)
        kept = scrubbed
    if cfg.dedupe:
        seen: set[str] = set()
        unique = []
        for c in kept:
            key = normalise(row_text(c))
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
            unique.append(c)
        kept = unique
    if cfg.near_dup_threshold is not None and kept:
        flags = near_duplicates([row_text(c, system=False) for c in kept], cfg.near_dup_threshold)
        dropped["near_duplicate"] += sum(flags)
        kept = [c for c, dup in zip(kept, flags, strict=True) if not dup]
    if len(kept) > cfg.max_rows:
        dropped["over_max_rows"] += len(kept) - cfg.max_rows
        kept = kept[: cfg.max_rows]
    rows = [Curated(c, holdout_side(c.prompt_key, cfg.holdout_frac, cfg.holdout_seed)) for c in kept]
    return CurationReport(rows, len(candidates), +dropped, pii_rows)


__all__ = [
    "Curated",
    "CurationReport",
    "curate",
    "holdout_side",
    "jaccard",
    "near_duplicates",
    "normalise",
    "scrub",
    "scrub_text",
    "shingles",
]

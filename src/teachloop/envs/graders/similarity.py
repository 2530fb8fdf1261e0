"""Text similarity metrics for OpenAI's ``text_similarity`` grader, in plain Python.

Tokens are lower-cased ``\\w+`` runs. ``bleu`` is sentence BLEU-4 with +1
smoothing on the 2..4-gram precisions (Lin & Och) and the brevity penalty;
``gleu`` is Google's sentence GLEU (min of n-gram precision and recall,
n = 1..4); ``rouge_N`` and ``rouge_l`` are F1 scores; ``meteor`` is METEOR
with exact unigram matches only (no stemming or synonyms, so it can read
lower than NLTK's); ``fuzzy_match`` is difflib's ``SequenceMatcher`` ratio on
the raw strings. ``cosine`` needs an embedding model and is not offered.
Every metric returns a value in [0, 1].
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from difflib import SequenceMatcher

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _WORD.findall(text.casefold())


def _ngrams(toks: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))


def bleu(hyp: str, ref: str) -> float:
    """Sentence BLEU-4 with +1 smoothing for n > 1."""
    h, r = tokens(hyp), tokens(ref)
    if not h or not r:
        return float(h == r)
    logs = 0.0
    for n in range(1, 5):
        hn, rn = _ngrams(h, n), _ngrams(r, n)
        match, total = sum((hn & rn).values()), max(sum(hn.values()), 0)
        if n == 1:
            if match == 0:
                return 0.0
            logs += math.log(match / total)
        else:
            logs += math.log((match + 1) / (total + 1))
    bp = 1.0 if len(h) > len(r) else math.exp(1 - len(r) / len(h))
    return bp * math.exp(logs / 4)


def gleu(hyp: str, ref: str) -> float:
    """Google sentence GLEU over 1..4-grams."""
    h, r = tokens(hyp), tokens(ref)
    hn = sum((_ngrams(h, n) for n in range(1, 5)), Counter())
    rn = sum((_ngrams(r, n) for n in range(1, 5)), Counter())
    if not hn or not rn:
        return float(h == r)
    match = sum((hn & rn).values())
    return min(match / sum(hn.values()), match / sum(rn.values()))


def rouge_n(hyp: str, ref: str, n: int) -> float:
    """ROUGE-N F1."""
    hn, rn = _ngrams(tokens(hyp), n), _ngrams(tokens(ref), n)
    match = sum((hn & rn).values())
    if not match:
        return 0.0
    p, r = match / sum(hn.values()), match / sum(rn.values())
    return 2 * p * r / (p + r)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 (longest common subsequence); inputs are cut to 2,000 tokens."""
    h, r = tokens(hyp)[:2000], tokens(ref)[:2000]
    lcs = _lcs(h, r) if h and r else 0
    if not lcs:
        return 0.0
    p, rc = lcs / len(h), lcs / len(r)
    return 2 * p * rc / (p + rc)


def meteor(hyp: str, ref: str) -> float:
    """METEOR with exact unigram matching (alpha 0.9, beta 3, gamma 0.5)."""
    h, r = tokens(hyp), tokens(ref)
    used = [False] * len(r)
    align: list[int] = []
    for w in h:
        for j, rw in enumerate(r):
            if not used[j] and rw == w:
                used[j] = True
                align.append(j)
                break
    m = len(align)
    if not m:
        return 0.0
    p, rc = m / len(h), m / len(r)
    fmean = p * rc / (0.9 * p + 0.1 * rc)
    chunks = 1 + sum(1 for a, b in itertools.pairwise(align) if b != a + 1)
    return fmean * (1 - 0.5 * (chunks / m) ** 3)


def fuzzy_match(hyp: str, ref: str) -> float:
    """difflib ``SequenceMatcher`` ratio on the raw strings (cut to 5,000 characters)."""
    return SequenceMatcher(None, hyp[:5000], ref[:5000], autojunk=False).ratio()


def similarity(metric: str, hyp: str, ref: str) -> float:
    """Dispatch on an OpenAI ``evaluation_metric`` name."""
    if metric.startswith("rouge_") and metric[6:].isdigit() and 1 <= int(metric[6:]) <= 5:
        return rouge_n(hyp, ref, int(metric[6:]))
    table = {"bleu": bleu, "gleu": gleu, "rouge_l": rouge_l, "meteor": meteor, "fuzzy_match": fuzzy_match}
    if metric not in table:
        raise ValueError(f"evaluation_metric {metric!r} is not supported; use one of {[*table, 'rouge_1..rouge_5']}")
    return table[metric](hyp, ref)


METRICS = ("bleu", "gleu", "meteor", "fuzzy_match", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")

__all__ = ["METRICS", "bleu", "fuzzy_match", "gleu", "meteor", "rouge_l", "rouge_n", "similarity", "tokens"]

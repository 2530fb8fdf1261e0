"""Text graders: exact match, normalised match, regex, numeric with tolerance.

Each compares the *extracted* final answer (``envs.extract``; by default
``final_answer`` for text and ``last_number`` for numbers) with a reference:
the ``reference`` given to the grader, else the task's ``answer``. A grader
with no reference raises, which records a failed score (not a zero that looks
like a wrong answer). Values are 1.0 or 0.0. Exact, normalised and numeric
matches of replies up to ``INLINE_MAX_CHARS`` with a built-in extractor run on
the event loop (provably fast); everything else runs in a worker thread under
the grader's timeout, like any sync grader.
"""

from __future__ import annotations

import math
import re
import string

from teachloop.envs.extract import Extractor, final_answer, identity, last_number, parse_number
from teachloop.envs.graders.base import Grader, Sample, Score

#: Extractors whose cost is bounded for a bounded reply (regexes without nested repetition, linear scans).
FAST_EXTRACTORS: tuple[Extractor, ...] = (final_answer, last_number, identity)
#: Replies up to this many characters are graded on the event loop by exact/normalised/numeric match:
#: even the worst case of the extractors' lazy scans is a few milliseconds there.
INLINE_MAX_CHARS = 4096


class _Fast(Grader):
    """A text comparison that runs on the event loop for short replies with a built-in extractor."""

    extract: Extractor

    def runs_inline(self, sample: Sample) -> bool:
        return self.extract in FAST_EXTRACTORS and len(sample.completion) <= INLINE_MAX_CHARS


def _reference(grader_ref: str | None, sample: Sample, name: str) -> str:
    ref = grader_ref if grader_ref is not None else sample.task.answer
    if ref is None:
        raise ValueError(f"{name}: the task has no answer and the grader no reference")
    return ref


class ExactMatch(_Fast):
    """1.0 when the extracted answer equals the reference exactly (after stripping)."""

    name = "exact_match"

    def __init__(self, reference: str | None = None, *, extract: Extractor = final_answer, case_sensitive: bool = True):
        self.reference, self.extract, self.case_sensitive = reference, extract, case_sensitive

    def score(self, sample: Sample) -> Score:
        ref = _reference(self.reference, sample, self.name).strip()
        got = self.extract(sample.completion)
        if got is None:
            return Score(value=0.0, details={"extracted": None})
        a, b = (got, ref) if self.case_sensitive else (got.casefold(), ref.casefold())
        return Score(value=float(a == b), details={"extracted": got[:200]})


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style normalisation)."""
    text = _ARTICLES.sub(" ", text.casefold().translate(_PUNCT))
    return " ".join(text.split())


class NormalizedMatch(ExactMatch):
    """1.0 when the extracted answer equals the reference after ``normalize_text``."""

    name = "normalized_match"

    def score(self, sample: Sample) -> Score:
        ref = _reference(self.reference, sample, self.name)
        got = self.extract(sample.completion)
        if got is None:
            return Score(value=0.0, details={"extracted": None})
        return Score(value=float(normalize_text(got) == normalize_text(ref)), details={"extracted": got[:200]})


class Regex(Grader):
    """1.0 when ``pattern`` matches the (extracted) reply.

    ``mode`` is ``"search"`` (anywhere) or ``"fullmatch"``. ``pattern`` may use
    ``{answer}``, replaced by the escaped task answer. The default extractor is
    ``identity`` (the whole reply), since regexes usually check format.
    """

    name = "regex"

    def __init__(self, pattern: str, *, mode: str = "search", flags: int = 0, extract: Extractor = identity):
        if mode not in ("search", "fullmatch"):
            raise ValueError("mode must be 'search' or 'fullmatch'")
        self.pattern, self.mode, self.flags, self.extract = pattern, mode, flags, extract
        if "{answer}" not in pattern:
            self._compiled: re.Pattern[str] | None = re.compile(pattern, flags)
        else:
            self._compiled = None

    def score(self, sample: Sample) -> float:
        compiled = self._compiled
        if compiled is None:
            answer = _reference(None, sample, self.name)
            compiled = re.compile(self.pattern.replace("{answer}", re.escape(answer)), self.flags)
        got = self.extract(sample.completion)
        if got is None:
            return 0.0
        match = compiled.search(got) if self.mode == "search" else compiled.fullmatch(got)
        return float(match is not None)


class Numeric(_Fast):
    """1.0 when the extracted number is within tolerance of the reference number.

    Tolerance as ``math.isclose(got, ref, rel_tol=rel_tol, abs_tol=abs_tol)``.
    The default extractor takes the *last* number of the final answer, so
    "26 - 15 = 11" is read as 11.
    """

    name = "numeric"

    def __init__(
        self,
        reference: float | str | None = None,
        *,
        rel_tol: float = 1e-6,
        abs_tol: float = 1e-9,
        extract: Extractor = last_number,
    ):
        self.reference = None if reference is None else str(reference)
        self.rel_tol, self.abs_tol, self.extract = rel_tol, abs_tol, extract

    def score(self, sample: Sample) -> Score:
        raw_ref = _reference(self.reference, sample, self.name)
        ref = parse_number(raw_ref)
        if ref is None:
            raise ValueError(f"numeric: reference {raw_ref!r} is not a number")
        got_text = self.extract(sample.completion)
        got = parse_number(got_text) if got_text is not None else None
        if got is None or not math.isfinite(got):
            return Score(value=0.0, details={"extracted": got_text})
        ok = math.isclose(got, ref, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        return Score(value=float(ok), details={"extracted": got_text})


__all__ = ["FAST_EXTRACTORS", "INLINE_MAX_CHARS", "ExactMatch", "NormalizedMatch", "Numeric", "Regex", "normalize_text"]

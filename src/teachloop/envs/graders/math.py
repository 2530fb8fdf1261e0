"""Math equivalence with ``math-verify``: ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are the same answer.

The reply's final answer (``envs.extract.final_answer``: ``\\boxed{}``,
``<answer>``, "answer:", else the whole reply) is parsed by math-verify and
compared with the reference (the grader's or the task's answer). The reply
is cut to ``max_chars`` before parsing, since sympy can be slow on long input.
math-verify's own timeouts use ``signal.alarm`` and only work on the main
thread, so they are disabled here and this grader runs in a daemon thread
under ``timeout_s`` instead (a hung parse is abandoned, not killed).
"""

from __future__ import annotations

import logging
from typing import Any

from teachloop.envs.extract import Extractor, final_answer
from teachloop.envs.graders.base import Grader, Sample, Score


def _dollar(text: str) -> str:
    t = text.strip()
    return t if t.startswith("$") or "\\" in t else f"${t}$"


class MathEquiv(Grader):
    """1.0 when math-verify finds the final answer equivalent to the reference."""

    name = "math_equiv"
    blocking = True
    timeout_s = 10.0

    def __init__(self, reference: str | None = None, *, extract: Extractor = final_answer, max_chars: int = 2000):
        self.reference, self.extract, self.max_chars = reference, extract, max_chars

    def score(self, sample: Sample) -> Score:
        from math_verify import parse, verify

        logging.getLogger("math_verify").setLevel(logging.ERROR)
        ref = self.reference if self.reference is not None else sample.task.answer
        if ref is None:
            raise ValueError("math_equiv: the task has no answer and the grader no reference")
        got = self.extract(sample.completion)
        if got is None:
            return Score(value=0.0, details={"extracted": None})
        got = got[: self.max_chars]
        gold: Any = parse(_dollar(ref), parsing_timeout=None)
        pred: Any = parse(_dollar(got), parsing_timeout=None)
        if not pred:
            pred = parse(got, parsing_timeout=None)
        ok = bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=None)
        return Score(value=float(ok), details={"extracted": got[:200]})


__all__ = ["MathEquiv"]

"""Arithmetic: "What is 26 - 15?" with difficulty levels (digits, operators, terms).

Reward 1.0 when the *last* number of the final answer equals the result
("26 - 15 = 11" scores 1.0), else 0.0. Division tasks are built so the
result is an integer. ``level`` 1..5 picks a preset (1: one-digit +/-; 5:
three-digit + - * /, three terms); explicit ``digits`` (1..6)/``operators``/
``terms`` (2..6) override it. Infinite unless ``size`` is given;
deterministic for a seed.

``split`` ("train" | "test" | "all", default "all") partitions *problems*,
not draws: a problem is in "test" when the SHA-256 of its expression falls in
the lowest ~20% (``TEST_FRACTION``), else in "train". So
``arithmetic?level=1&split=train`` and ``...&split=test`` never share a
problem, for any seeds -- a held-out score measures generalisation even
where the space is small (one-digit +/- has under 200 problems). "all" is
the unfiltered stream.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

from teachloop.core.rl import Task
from teachloop.envs.base import Environment, system, user
from teachloop.envs.builtin._args import int_arg, size_arg
from teachloop.envs.graders import Numeric

LEVELS = {1: (1, "+-", 2), 2: (2, "+-", 2), 3: (2, "+-*", 2), 4: (3, "+-*/", 2), 5: (3, "+-*/", 3)}
PROMPT = "Solve the arithmetic problem. End with a line 'answer: <number>'."
SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2


def split_of(expression: str) -> str:
    """"test" or "train": the fixed split of a problem, by the hash of its expression."""
    bucket = int.from_bytes(hashlib.sha256(expression.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < TEST_FRACTION else "train"


class Arithmetic(Environment):
    """Integer arithmetic at a chosen difficulty; the grader reads the last number of the final answer."""

    name = "arithmetic"
    version = "1.0.0"
    grader = Numeric()

    def __init__(self, level: int = 2, *, digits: int | None = None, operators: str | None = None,
                 terms: int | None = None, size: int | None = None, split: str = "all"):
        if isinstance(level, bool) or level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(map(str, LEVELS))}, got {level!r}")
        d, ops, n = LEVELS[level]
        self.digits = int_arg("digits", d if digits is None else digits, 1, 6)
        self.terms = int_arg("terms", n if terms is None else terms, 2, 6)
        self.size = size_arg(size)
        self.operators = ops if operators is None else operators
        if not isinstance(self.operators, str) or not self.operators or set(self.operators) - set("+-*/"):
            raise ValueError(f"operators must be drawn from '+-*/', got {self.operators!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split

    def _problem(self, rng: random.Random) -> tuple[str, int]:
        lo, hi = (0 if self.digits == 1 else 10 ** (self.digits - 1)), 10**self.digits - 1
        value = rng.randint(lo, hi)
        expr, additive = str(value), False
        for k in range(self.terms - 1):
            op = rng.choice(self.operators)
            b = rng.randint(max(lo, 1), hi)
            if op == "/" and k == 0:  # rewrite the first operand so the quotient is exact
                value = b * rng.randint(max(lo, 1), hi)
                expr = str(value)
            elif op == "/":
                b = next((d for d in rng.sample(range(max(lo, 1), hi + 1), hi + 1 - max(lo, 1)) if value % d == 0), 1)
            if op in "*/" and additive:
                expr = f"({expr})"
            expr = f"{expr} {op} {b}"
            value = {"+": value + b, "-": value - b, "*": value * b, "/": value // b}[op]
            additive = additive or op in "+-"
        return expr, value

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        rng = random.Random(f"arithmetic:{seed}:{self.digits}:{self.operators}:{self.terms}")
        i = misses = 0
        while self.size is None or i < self.size:
            expr, value = self._problem(rng)
            if self.split != "all" and split_of(expr) != self.split:
                misses += 1
                if misses > 10_000:  # a split never drawn in 10,000 tries is empty for these settings
                    raise ValueError(f"split {self.split!r} has no problems for these settings")
                continue
            misses = 0
            prefix = "arithmetic" if self.split == "all" else f"arithmetic-{self.split}"
            yield Task(id=f"{prefix}-{seed}-{i}", prompt=(system(PROMPT), user(f"What is {expr}?")),
                       answer=str(value), info={"expression": expr})
            i += 1

"""Arithmetic: "What is 26 - 15?" with difficulty levels (digits, operators, terms).

Reward 1.0 when the *last* number of the final answer equals the result
("26 - 15 = 11" scores 1.0), else 0.0. Division tasks are built so the
result is an integer. ``level`` 1..5 picks a preset (1: one-digit +/-; 5:
three-digit + - * /, three terms); explicit ``digits``/``operators``/``terms``
override it. Infinite unless ``size`` is given; deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from teachloop.core.rl import Task
from teachloop.envs.base import Environment, system, user
from teachloop.envs.graders import Numeric

LEVELS = {1: (1, "+-", 2), 2: (2, "+-", 2), 3: (2, "+-*", 2), 4: (3, "+-*/", 2), 5: (3, "+-*/", 3)}
PROMPT = "Solve the arithmetic problem. End with a line 'answer: <number>'."


class Arithmetic(Environment):
    """Integer arithmetic at a chosen difficulty; the grader reads the last number of the final answer."""

    name = "arithmetic"
    version = "1.0.0"
    grader = Numeric()

    def __init__(self, level: int = 2, *, digits: int | None = None, operators: str | None = None,
                 terms: int | None = None, size: int | None = None):
        if level not in LEVELS:
            raise ValueError(f"level must be one of {sorted(LEVELS)}")
        d, ops, n = LEVELS[level]
        self.digits, self.operators, self.terms, self.size = digits or d, operators or ops, terms or n, size
        if set(self.operators) - set("+-*/") or self.digits < 1 or self.terms < 2:
            raise ValueError("operators must be drawn from '+-*/', digits >= 1, terms >= 2")

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
        i = 0
        while self.size is None or i < self.size:
            expr, value = self._problem(rng)
            yield Task(id=f"arithmetic-{seed}-{i}", prompt=(system(PROMPT), user(f"What is {expr}?")),
                       answer=str(value), info={"expression": expr})
            i += 1

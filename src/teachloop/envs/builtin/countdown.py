"""Countdown: reach a target with + - * / using each given number at most once.

The target is built from a random expression over the numbers, so every task
is solvable and the reference answer is that expression. The grader parses
the final answer (``answer:``/``<answer>``/``\\boxed{}``; a trailing ``= target``
is allowed) as arithmetic with an AST walker -- never ``eval`` -- and gives 1.0
when it uses only the given numbers (each at most once) and equals the target.
``count`` (2..8) numbers in ``1..max_number`` (2..1000); infinite unless ``size``.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from teachloop.core.rl import Task
from teachloop.envs.base import Environment, system, user
from teachloop.envs.builtin._args import int_arg, size_arg
from teachloop.envs.extract import final_answer
from teachloop.envs.graders import Score, grader

_OPS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__, ast.Div: Fraction.__truediv__}


def evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """Value of ``expr`` and the integers it uses; raises ``ValueError`` on anything but + - * / and integers."""
    used: list[int] = []

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError("only integers and + - * / are allowed")

    try:
        return ev(ast.parse(expr.replace("×", "*").replace("÷", "/"), mode="eval").body), used
    except (SyntaxError, ZeroDivisionError, RecursionError) as err:
        raise ValueError(str(err)) from None


@grader(name="countdown")
def countdown_grader(completion: str, info: dict[str, Any]) -> Score:
    expr = (final_answer(completion) or "")[:200].split("=")[0]
    try:
        value, used = evaluate(expr)
    except ValueError:
        return Score(value=0.0, details={"error": "not an arithmetic expression"})
    fair = not Counter(used) - Counter(info["numbers"])
    return Score(value=float(fair and value == info["target"]), details={"value": str(value), "fair": fair})


class Countdown(Environment):
    """Combine the numbers with + - * / to hit the target (each number at most once)."""

    name = "countdown"
    version = "1.0.0"
    grader = countdown_grader

    def __init__(self, count: int = 4, *, max_number: int = 50, size: int | None = None):
        self.count = int_arg("count", count, 2, 8)
        self.max_number = int_arg("max_number", max_number, 2, 1000)
        self.size = size_arg(size)

    def _make(self, rng: random.Random) -> tuple[list[int], str, int]:
        while True:
            nums = [rng.randint(1, self.max_number) for _ in range(self.count)]
            expr = str(nums[0])
            for n in nums[1:]:
                op = rng.choice("+-*/")
                expr = f"({expr}) {op} {n}" if op in "*/" and " " in expr else f"{expr} {op} {n}"
            value = evaluate(expr)[0]
            if value.denominator == 1 and 0 < value <= 1000:
                return sorted(nums), expr, int(value)

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        rng = random.Random(f"countdown:{seed}:{self.count}:{self.max_number}")
        i = 0
        while self.size is None or i < self.size:
            nums, expr, target = self._make(rng)
            ask = f"Using the numbers {nums}, make {target} with + - * / (each number at most once)."
            prompt = (system("End with a line 'answer: <expression>'."), user(ask))
            yield Task(id=f"countdown-{seed}-{i}", prompt=prompt, answer=expr, info={"numbers": nums, "target": target})
            i += 1

    def reference(self, task: Task) -> str:
        return f"answer: {task.answer}"


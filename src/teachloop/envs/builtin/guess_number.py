"""Guess the number: a multi-turn game with a tool.

Find a secret integer in ``[1, high]`` (2..10^9; infinite unless ``size``): call the ``guess`` tool or write
``guess: N`` (``tool=False``: text only) and get "higher", "lower" or, for the secret, "correct. Now reply only
'answer: N'." A turn without a guess, or any reply after "correct" (``is_done``), ends the game, graded on that
final ``answer: N`` (a final guess is no answer): 1.0 for the secret, minus ``penalty`` per guess beyond the
binary-search bound, floored at 0.5. The prompt carries a worked example (1.1.0). Stricter for every policy:
1.1.0 ran on after "correct" and said only "correct" (1.2.0, bench/README.md); 1.2.0 ran a tool call there."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

from teachloop.core.chat import Message
from teachloop.core.rl import Task
from teachloop.envs.base import Environment, system, user
from teachloop.envs.builtin._args import float_arg, int_arg, size_arg
from teachloop.envs.extract import last_number
from teachloop.envs.graders import FunctionGrader
from teachloop.envs.tools import Tool, tool

_GUESS, _ANSWER = re.compile(r"guess\s*[:=]?\s*(-?\d+)", re.IGNORECASE), re.compile(r"answer\s*:", re.IGNORECASE)
CORRECT = "correct. Now reply only 'answer: N'."


def _hint(n: int, secret: int, state: dict[str, Any]) -> str:
    state["guesses"], state["found"] = state.get("guesses", 0) + 1, state.get("found") or n == secret
    return CORRECT if n == secret else ("higher" if secret > n else "lower")


@tool
def guess(number: int, task: Task, state: dict[str, Any]) -> str:
    """Guess the secret number; the reply says whether the secret is higher, lower or correct.

    Args:
        number: your guess.
    """
    return _hint(number, int(task.info["secret"]), state)


class GuessNumber(Environment):
    """Find a secret number with higher/lower hints (tool or 'guess: N'), then give 'answer: N'."""

    name = "guess_number"
    version = "1.3.0"
    tools: tuple[Tool, ...] = (guess,)

    def __init__(self, high: int = 100, *, size: int | None = None, penalty: float = 0.05, tool: bool = True):
        self.high = int_arg("high", high, 2, 10**9)
        if not isinstance(tool, bool):
            raise ValueError(f"tool must be true or false, got {tool!r}")
        self.tool, self.tools = tool, self.tools if tool else ()  # text only: no tool section in the prompt
        self.size, self.penalty = size_arg(size), float_arg("penalty", penalty, 0.0, 1.0)
        self.bound = math.ceil(math.log2(high)) + 1
        self.max_turns, self.grader = 2 * self.bound + 2, FunctionGrader(self._reward, name="guess_number", timeout_s=5)
        self._example = self._worked_example()

    def _worked_example(self) -> str:
        """A binary-search game: in prose with the tool, as a transcript in text mode."""
        secret, lo, hi, steps, hint = max(1, self.high // 3), 1, self.high, [], ""
        while hint != CORRECT:
            hint = _hint(mid := (lo + hi) // 2, secret, {})
            steps.append(f"'guess: {mid}', told '{hint}'" if self.tool else f"assistant: guess: {mid}\nuser: {hint}")
            lo, hi = (mid + 1, hi) if hint == "higher" else (lo, mid - 1)
        if not self.tool:
            return f"Example with a secret of {secret}:\n" + "\n".join(steps) + f"\nassistant: answer: {secret}"
        return f"Example with secret {secret}: you reply " + "; then ".join(steps) + f"; then 'answer: {secret}'."

    def _reward(self, completion: str, messages: tuple[Message, ...], info: dict[str, Any]) -> float:
        if last_number(completion) != str(info["secret"]) or (_GUESS.search(completion) and not _ANSWER.search(completion)):
            return 0.0  # a wrong number, or a guess as the final answer
        guesses = sum(len(m.tool_calls) + (m.role == "assistant" and bool(_GUESS.search(m.content))) for m in messages)
        return max(0.5, 1.0 - self.penalty * max(0, guesses - self.bound))

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        rng, i = random.Random(f"guess_number:{seed}:{self.high}"), 0
        while self.size is None or i < self.size:
            secret = rng.randint(1, self.high)
            how = "call the guess tool or reply with only 'guess: N'" if self.tool else "reply with one line 'guess: N'"
            prompt = (system(f"Find the secret integer between 1 and {self.high}. Each turn, {how}; you are told "
                             f"higher, lower or correct. When told correct, reply only 'answer: N'. {self._example}"),
                      user("I have picked a number. Start guessing."))
            yield Task(id=f"guess_number-{seed}-{i}", prompt=prompt, answer=str(secret), info={"secret": secret},
                       tools=(guess.spec,) if self.tool else ())
            i += 1

    def reference(self, task: Task) -> str:
        return f"answer: {task.answer}"

    def is_done(self, task: Task, messages: Sequence[Message], state: dict[str, Any]) -> bool:
        return bool(state.get("found"))  # told "correct" last turn: this reply is the final answer

    async def env_response(self, task: Task, messages: list[Message], state: dict[str, Any]) -> list[Message] | None:
        if not (found := _GUESS.findall(said := messages[-1].content)) or _ANSWER.search(said):
            return None  # answered, or no guess
        return [user(_hint(int(found[-1]), int(task.info["secret"]), state))]

"""The environment protocol: a task source, an episode the environment answers, and a reward.

An ``Environment`` subclass provides:

- ``tasks(seed)`` -- the task source, finite or infinite, and *deterministic
  for a seed*: the same seed yields tasks with the same content hashes
  (``Task.hash``) in the same order, in any process. Use ``random.Random(seed)``,
  never the global RNG, and never iterate over sets of strings.
- the episode -- ``max_turns`` model turns at most. After each model turn the
  rollout first asks ``is_done``: True ends the episode with that turn as the
  final reply, whatever it holds (tool calls included, which then do not run).
  Otherwise it runs the ``tools`` the model called, or else asks
  ``env_response`` for the environment's reply; ``None`` ends the episode.
  Single-turn environments leave all three alone. ``initial_state(task)``
  makes the per-episode state dict that ``is_done``, ``env_response`` and
  tools receive.
- the reward -- ``grader`` (any ``Grader``; weighted combinations welcome) or
  an override of ``score``; optionally a ``group_grader`` that scores a whole
  group relative to each other.
- ``reference(task)`` -- the reply that must earn the top reward (default:
  the task's answer); ``teachloop env check`` verifies it.

Environments know nothing of models, tokens or the store: they see messages.
Running episodes (concurrency, timeouts, failures as data) is ``rollout``'s job.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from teachloop.core.chat import Message
from teachloop.core.rl import Task
from teachloop.core.sampling import SamplingParams
from teachloop.envs.graders.base import Grader, GroupGrader, Sample, Score
from teachloop.envs.tools import Tool


class Environment:
    """Base class of environments; see the module docstring for the contract.

    Attributes:
        name: registry name (entry point name for packages).
        version: semver of the environment's behaviour.
        max_turns: model turns per episode at most (1 = single turn).
        tools: tools offered to the model and executed by the environment.
        grader: scores each trajectory (used by the default ``score``).
        group_grader: optional; scores a group at once and replaces per-sample rewards.
        sampling: default sampling parameters for this environment (e.g. ``max_tokens``).
        reward_range: the lowest and highest reward ``score`` can give.
    """

    name: ClassVar[str] = "environment"
    version: ClassVar[str] = "0.1.0"
    max_turns: int = 1
    tools: Sequence[Tool] = ()
    grader: Grader | None = None
    group_grader: GroupGrader | None = None
    sampling: SamplingParams = SamplingParams(max_tokens=256, temperature=1.0)
    reward_range: tuple[float, float] = (0.0, 1.0)

    def tasks(self, seed: int = 0) -> Iterable[Task]:
        """The tasks for ``seed``, deterministic (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__}.tasks is not implemented")

    def take(self, n: int, seed: int = 0) -> list[Task]:
        """The first ``n`` tasks for ``seed``."""
        return list(itertools.islice(self.tasks(seed), n))

    def reference(self, task: Task) -> str | None:
        """A reply that earns the top reward, or ``None`` if the task has no reference."""
        return task.answer

    def initial_state(self, task: Task) -> dict[str, Any]:
        """The per-episode state passed to ``env_response`` and to tools."""
        return {}

    def is_done(self, task: Task, messages: Sequence[Message], state: dict[str, Any]) -> bool:
        """Whether the model's last turn (``messages[-1]``) ends the episode before its tools or ``env_response`` run."""
        return False

    async def env_response(self, task: Task, messages: list[Message], state: dict[str, Any]) -> list[Message] | None:
        """The environment's reply to the model's last turn, or ``None`` to end the episode."""
        return None

    async def score(self, sample: Sample) -> Score:
        """The reward of one finished episode; default: ``self.grader``."""
        if self.grader is None:
            raise NotImplementedError(f"{type(self).__name__} has no grader and does not override score()")
        return await self.grader.grade(sample)

    @property
    def multi_turn(self) -> bool:
        """Whether an episode can have more than one model turn."""
        return self.max_turns > 1

    def describe(self) -> dict[str, Any]:
        """Facts for manifests and listings."""
        return {
            "name": self.name,
            "version": self.version,
            "multi_turn": self.multi_turn,
            "tools": [t.name for t in self.tools],
            "reward_range": list(self.reward_range),
            "group_grader": self.group_grader.name if self.group_grader else None,
            "doc": (type(self).__doc__ or "").strip().split("\n\n")[0],
        }


def user(content: str) -> Message:
    """A user message."""
    return Message(role="user", content=content)


def system(content: str) -> Message:
    """A system message."""
    return Message(role="system", content=content)


__all__ = ["Environment", "system", "user"]

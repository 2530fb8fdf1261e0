"""``traffic``: prompts from a JSONL file (served traffic), re-posed by an environment whose grader scores them.

GRPO trains on an environment's task stream; the loop trains on the prompts its users sent. The tasks are
a snapshot's prompt rows (``{"messages": [...], "answer": ..., "info": ..., "score": ...}``), scored by
the wrapped environment (``env``) against the row's reference answer (found by the loop). Built from a
JSONL file (``path`` and its ``digest``, checked on load, so the run's environment digest pins the data:
``rl.env = "traffic"``, ``env_args = {path, digest, env, env_args}``), read only for trusted callers (the
loop in-process; ``envs.registry``), or from rows in memory (``from_rows``, the eval gate). The wrapped
``env`` is always resolved as untrusted. ``tasks(seed)`` cycles through the rows forever, each pass a
fresh seeded shuffle (``cycle=False``: each row once, in order). With ``failure_share = s`` (the loop's
``algorithm.failure_share``) each task comes with probability ``s`` from a seeded cycle over the rows
whose served reply failed (``score`` below the top of ``reward_range``: a prompt answered right is mostly a
group of equal rewards, which teaches GRPO nothing), else from the plain cycle (``envs.streams``); with
``s = 0``, or no row or every row failed, it is the plain cycle. This module knows nothing of the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput
from teachloop.core.files import file_digest
from teachloop.core.rl import Task
from teachloop.envs.base import Environment
from teachloop.envs.graders.base import Sample, Score
from teachloop.envs.registry import load, references_trusted
from teachloop.envs.streams import mixed, shuffled_cycle


def _task(i: int, row: dict[str, Any]) -> Task:
    messages = tuple(Message(role=m["role"], content=m.get("content") or "") for m in row["messages"])
    answer = row.get("answer")
    return Task(id=f"traffic-{i}", prompt=messages, answer=None if answer is None else str(answer),
                info=dict(row.get("info") or {}))


class TrafficPrompts(Environment):
    """Traffic prompts graded by another environment (see the module docstring)."""

    name = "traffic"
    version = "1.0.0"

    def __init__(self, path: str | None = None, digest: str | None = None, env: str | None = None,
                 env_args: dict[str, Any] | None = None, failure_share: float = 0.0, *, cycle: bool = True,
                 rows: Sequence[dict[str, Any]] | None = None, inner: Environment | None = None) -> None:
        if rows is None and not references_trusted():
            raise InvalidInput("traffic reads a prompts file only for trusted callers (the loop); a reference "
                               "from the API or a stored config may not name a server path", param="path")
        if inner is None:
            if not env:
                raise InvalidInput("TrafficPrompts needs the environment that grades it (env)", param="env")
            inner = load(env, trusted=False, **dict(env_args or {}))  # a loop config's reference: never code
        if rows is None:
            if path is None or digest is None:
                raise InvalidInput("TrafficPrompts needs path and digest (or rows)", param="path")
            if not Path(path).is_file():
                raise InvalidInput(f"traffic prompts file {path} does not exist", param="path")
            if file_digest(Path(path)) != digest:
                raise InvalidInput(f"traffic prompts file {path} does not match its digest {digest}", param="digest")
            rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows:
            raise InvalidInput("TrafficPrompts needs at least one prompt", param="rows")
        if not 0 <= failure_share < 1:
            raise InvalidInput(f"failure_share must be in [0, 1), not {failure_share}", param="failure_share")
        self.inner = inner
        self.cycle = cycle
        self.failure_share = float(failure_share)
        self._tasks = [_task(i, r) for i, r in enumerate(rows)]
        top = inner.reward_range[1]
        self._failed = [i for i, r in enumerate(rows) if r.get("score") is not None and float(r["score"]) < top]
        self.grader = inner.grader
        self.sampling = inner.sampling
        self.reward_range = inner.reward_range

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], inner: Environment) -> TrafficPrompts:
        """The environment over rows in memory, each once (for evaluation)."""
        return cls(rows=rows, inner=inner, cycle=False)

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        if not self.cycle:
            yield from self._tasks
            return
        stream = shuffled_cycle(range(len(self._tasks)), f"traffic:{seed}")
        if self.failure_share and 0 < len(self._failed) < len(self._tasks):
            stream = mixed(stream, shuffled_cycle(self._failed, f"traffic-failed:{seed}"), self.failure_share,
                           f"traffic-mix:{seed}")
        for i in stream:
            yield self._tasks[i]

    async def score(self, sample: Sample) -> Score:
        """The wrapped environment's reward of the reply (compared with the row's answer)."""
        return await self.inner.score(sample)


__all__ = ["TrafficPrompts"]

"""Online scoring: the environment's grader scores the deployment's traffic (the online reward).

A grader compares a reply with a reference answer, which product traffic does
not carry. ``AnswerFinder`` supplies it, as the grader source says:

* ``answer = "lookup"``: the first ``lookup_tasks`` tasks of the environment
  (seed ``lookup_seed``) are indexed by the text of their last user message
  (case and whitespace folded); a trace whose last user message matches a
  task gets that task's answer and ``info``. Traffic the environment never
  posed finds no answer.
* ``answer = "metadata:KEY"``: the request's ``metadata[KEY]`` is the answer
  (the product knew it and sent it along).

The trace's conversation (prompt + reply, as served) is then re-posed to the
environment as ``Sample.from_conversation(..., answer=..., info=...)`` and
graded with ``env.score``. A trace without an answer, with tools, or whose
grading failed is recorded with ``score = None`` and the reason, so it is
never graded again and never used as data. Scores are written once per
(loop, trace) in ``trace_scores``. Knows nothing of training or promotion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from teachloop.catalog.envref import ResolvedEnv
from teachloop.core.chat import Message
from teachloop.envs import Environment, Sample
from teachloop.loop.config import GraderSource
from teachloop.store.db import Database
from teachloop.store.repos.loops import Loops
from teachloop.store.schema.loops import TraceScore
from teachloop.store.schema.traces import Trace

_SPACE = re.compile(r"\s+")


def prompt_key(text: str) -> str:
    """The lookup key of a user message: case and whitespace folded."""
    return _SPACE.sub(" ", text).strip().casefold()


def _last_user(messages: Sequence[dict[str, Any]]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return None


class AnswerFinder:
    """The reference answer of a trace, by task lookup or request metadata (see the module docstring)."""

    def __init__(self, source: GraderSource, env: Environment) -> None:
        self.source = source
        self.index: dict[str, tuple[str | None, dict[str, Any]]] = {}
        if source.answer == "lookup":
            for task in env.take(source.lookup_tasks, source.lookup_seed):
                user = _last_user([m.to_openai() for m in task.prompt])
                if user is not None:
                    self.index.setdefault(prompt_key(user), (task.answer, dict(task.info)))

    def find(self, messages: Sequence[dict[str, Any]], metadata: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(answer, info) for a conversation, or None when there is none."""
        if self.source.answer.startswith("metadata:"):
            value = (metadata or {}).get(self.source.answer.removeprefix("metadata:"))
            return (str(value), {}) if value is not None else None
        user = _last_user(messages)
        hit = self.index.get(prompt_key(user)) if user is not None else None
        if hit is None or hit[0] is None:
            return None
        return str(hit[0]), hit[1]


async def grade(env: Environment, trace: Trace, found: tuple[str, dict[str, Any]] | None) -> tuple[float | None, str | None]:
    """(score, failure) of one trace's first choice."""
    if trace.tools or not trace.choices:
        return None, "not a text completion"
    if found is None:
        return None, "no reference answer"
    msgs = [*trace.messages, trace.choices[0].get("message") or {}]
    if any(m.get("tool_calls") or m.get("role") == "tool" for m in msgs):
        return None, "not a text completion"
    conversation = [Message(role=m.get("role", "user"), content=m.get("content") or "") for m in msgs]
    sample = Sample.from_conversation(conversation, answer=found[0], info=found[1], id=trace.id)
    try:
        score = await env.score(sample)
    except Exception as err:  # an environment whose score raises: recorded, never fatal
        return None, f"{type(err).__name__}: {err}"[:500]
    if score.failure is not None:
        return None, score.failure.message[:500]
    return float(score.value), None


async def score_new_traffic(database: Database, org_id: str, loop_id: str, deployment_id: str, env: ResolvedEnv,
                            finder: AnswerFinder, *, batch: int = 500, max_batches: int = 20) -> int:
    """Grade the deployment's traces this loop has not scored yet; returns how many were recorded."""
    total = 0
    for _ in range(max_batches):
        with database.session(write=False) as s:
            traces = Loops(s).unscored_traces(org_id, loop_id, deployment_id, limit=batch)
        if not traces:
            break
        rows = []
        for t in traces:
            found = finder.find(t.messages, t.request_metadata or {})
            score, failure = await grade(env.env, t, found)
            rows.append(TraceScore(org_id=org_id, loop_id=loop_id, trace_id=t.id, trace_created_at=t.created_at,
                                   adapter_version_id=t.adapter_version_id, arm=t.arm, env_ref=env.ref,
                                   env_digest=env.digest, answer=found[0] if found else None, score=score,
                                   failure=failure))
        with database.session() as s:
            repo = Loops(s)
            done = repo.scored_ids(loop_id, [r.trace_id for r in rows])  # another ticker may have been faster
            repo.add_scores(r for r in rows if r.trace_id not in done)
        total += len(rows)
        if len(traces) < batch:
            break
    return total


__all__ = ["AnswerFinder", "grade", "prompt_key", "score_new_traffic"]

"""Traces and feedback as the REST API and ``teachloop traces`` present them, and feedback writes.

``trace_json`` is a stored trace with its feedback (``completion_id`` is the
``chatcmpl-<trace id>`` a client saw); ``list_traces`` pages the organisation's
traces newest first under a ``TraceFilter``; ``add_feedback`` records a score,
label, comment and/or corrected output on one choice of a trace
(``FeedbackIn``: a corrected output is a string or an assistant message).
Every call is scoped to an organisation: another organisation's trace is a
``NotFound`` exactly like a missing one. Blocking (database work); knows
nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput
from teachloop.core.tenancy import Principal
from teachloop.store.db import Database
from teachloop.store.repos.traces import TraceFilter, Traces
from teachloop.store.schema.traces import Feedback, Trace


class _Strict(BaseModel):
    """Unknown fields and wrong types are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CorrectedMessage(_Strict):
    """A corrected reply as an assistant message."""

    role: str = Field(default="assistant", description="Must be assistant.")
    content: str | None = Field(default=None, description="The text it should have been.")
    tool_calls: list[dict[str, Any]] | None = Field(default=None, description="The tool calls it should have made.")


class FeedbackIn(_Strict):
    """Feedback on one choice of a trace: at least one of score, label, comment, corrected_output."""

    score: float | None = Field(default=None, description="A score (higher is better).")
    label: str | None = Field(default=None, min_length=1, max_length=100, description="A label, e.g. good or wrong.")
    comment: str | None = Field(default=None, max_length=20_000, description="Free text.")
    corrected_output: str | CorrectedMessage | None = Field(
        default=None, description="The reply it should have been: a string, or an assistant message."
    )
    choice_index: int = Field(default=0, ge=0, description="Which choice of the trace it is about.")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def feedback_json(f: Feedback) -> dict[str, Any]:
    """One feedback row."""
    return {"id": f.id, "trace_id": f.trace_id, "choice_index": f.choice_index, "score": f.score, "label": f.label,
            "comment": f.comment, "corrected_output": f.corrected_output, "author": f.author,
            "created_at": _iso(f.created_at)}


def trace_json(t: Trace, feedback: list[Feedback]) -> dict[str, Any]:
    """A trace as the REST API and ``teachloop traces show`` present it."""
    return {
        "id": t.id, "completion_id": f"chatcmpl-{t.id}", "created_at": _iso(t.created_at), "model": t.model,
        "deployment_id": t.deployment_id, "deployment_revision": t.deployment_revision, "arm": t.arm,
        "adapter_version_id": t.adapter_version_id, "base_model": t.base_model, "messages": t.messages,
        "tools": t.tools, "choices": t.choices, "params": t.params, "finish_reason": t.finish_reason,
        "usage": {"prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                  "total_tokens": t.prompt_tokens + t.completion_tokens},
        "latency_ms": t.latency_ms, "ttft_ms": t.ttft_ms, "stream": t.stream, "user": t.user,
        "metadata": t.request_metadata, "feedback": [feedback_json(f) for f in feedback],
    }


def metadata_filter(items: Sequence[str] | None) -> dict[str, str]:
    """``key=value`` filter strings as a dict; ``InvalidInput`` naming ``metadata`` for one without ``=``."""
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"metadata filters read key=value, got {item!r}", param="metadata")
        pairs[key] = value
    return pairs


def list_traces(database: Database, org_id: str, filt: TraceFilter) -> list[dict[str, Any]]:
    """The organisation's traces matching ``filt``, newest first, each with its feedback."""
    with database.session(write=False) as session:
        repo = Traces(session)
        rows = repo.list(org_id, filt)
        feedback = repo.feedback(org_id, [t.id for t in rows])
        return [trace_json(t, feedback[t.id]) for t in rows]


def get_trace(database: Database, org_id: str, trace_id: str) -> dict[str, Any]:
    """One trace (by trace id or completion id) with its feedback."""
    with database.session(write=False) as session:
        repo = Traces(session)
        row = repo.get(org_id, trace_id)
        return trace_json(row, repo.feedback(org_id, [row.id])[row.id])


def list_feedback(database: Database, org_id: str, trace_id: str) -> list[dict[str, Any]]:
    """The feedback on one trace, oldest first."""
    with database.session(write=False) as session:
        repo = Traces(session)
        row = repo.get(org_id, trace_id)
        return [feedback_json(f) for f in repo.feedback(org_id, [row.id])[row.id]]


def add_feedback(database: Database, principal: Principal, trace_id: str, body: FeedbackIn) -> dict[str, Any]:
    """Record ``body`` on one choice of a trace; returns the feedback row."""
    corrected = None
    if isinstance(body.corrected_output, str):
        corrected = Message(role="assistant", content=body.corrected_output).to_openai()
    elif body.corrected_output is not None:
        if body.corrected_output.role != "assistant":
            raise InvalidInput("corrected_output must be an assistant message", param="corrected_output.role")
        corrected = body.corrected_output.model_dump(exclude_none=True)
    with database.session() as session:
        row = Traces(session).add_feedback(
            principal.org_id, trace_id, score=body.score, label=body.label, comment=body.comment,
            corrected_output=corrected, choice_index=body.choice_index, author=principal.user_id or principal.key_id,
        )
        return feedback_json(row)


__all__ = [
    "CorrectedMessage",
    "FeedbackIn",
    "add_feedback",
    "feedback_json",
    "get_trace",
    "list_feedback",
    "list_traces",
    "metadata_filter",
    "trace_json",
]

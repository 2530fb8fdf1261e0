"""``/api/traces``: every served request as data, and feedback on it.

- ``GET /api/traces`` (filters as query parameters; ``next_before`` pages on),
  ``GET /api/traces/{id}``, ``GET|POST /api/traces/{id}/feedback``. ``{id}``
  is a trace id or a completion id (``chatcmpl-tr_...``).

Every route is scoped to the caller's organisation; another organisation's
trace is a 404 exactly like a missing one. Reads need a viewer key, feedback a
member key. ``serve.trace_views`` does the work; this module knows HTTP and the
response models only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from teachloop.app.auth import Member, ServingDep, Viewer
from teachloop.serve import trace_views
from teachloop.serve.trace_views import FeedbackIn
from teachloop.store.repos.traces import TraceFilter

router = APIRouter(prefix="/api", tags=["traces"])


class FeedbackOut(BaseModel):
    """Feedback on one choice of a trace."""

    id: str = Field(description="Feedback id (fb_...).")
    trace_id: str = Field(description="The trace it is about.")
    choice_index: int = Field(description="The choice it is about.")
    score: float | None = Field(description="A score (higher is better).")
    label: str | None = Field(description="A label.")
    comment: str | None = Field(description="Free text.")
    corrected_output: dict[str, Any] | None = Field(description="The reply it should have been (an assistant message).")
    author: str = Field(description="The user (or key) who gave it.")
    created_at: datetime = Field(description="When it was given.")


class FeedbackList(BaseModel):
    """The feedback on a trace, oldest first."""

    data: list[FeedbackOut] = Field(description="The feedback rows.")


class TraceUsage(BaseModel):
    """Tokens of the request."""

    prompt_tokens: int = Field(description="Tokens of the rendered prompt.")
    completion_tokens: int = Field(description="Tokens sampled, over all choices.")
    total_tokens: int = Field(description="Their sum.")


class TraceOut(BaseModel):
    """One served request: what was asked, what was answered, by which version, and the feedback on it."""

    id: str = Field(description="Trace id (tr_...).")
    completion_id: str = Field(description="The completion id the client saw (chatcmpl-<trace id>).")
    created_at: datetime = Field(description="When the request was accepted.")
    model: str = Field(description="The model the client named (a deployment or a base model).")
    deployment_id: str | None = Field(description="The deployment that answered, if any.")
    deployment_revision: int | None = Field(description="That deployment's revision at the time.")
    arm: str | None = Field(description="primary or canary.")
    adapter_version_id: str | None = Field(description="The adapter version that answered (null: the base).")
    base_model: str = Field(description="The base model that answered.")
    messages: list[dict[str, Any]] = Field(description="The conversation, OpenAI messages.")
    tools: list[dict[str, Any]] | None = Field(description="The tools offered, OpenAI tool objects.")
    choices: list[dict[str, Any]] = Field(description="The replies: index, message, finish_reason, tokens.")
    params: dict[str, Any] = Field(description="The sampling parameters that were set.")
    finish_reason: str = Field(description="The first choice's finish reason (cancelled when the client left).")
    usage: TraceUsage
    latency_ms: float = Field(description="Milliseconds from acceptance to the last token.")
    ttft_ms: float | None = Field(description="Milliseconds to the first token (streams).")
    stream: bool = Field(description="Whether the reply was streamed.")
    user: str | None = Field(description="The `user` the client sent.")
    metadata: dict[str, Any] = Field(description="The `metadata` the client sent.")
    feedback: list[FeedbackOut] = Field(description="Feedback on it, oldest first.")


class TracePage(BaseModel):
    """A page of traces, newest first."""

    data: list[TraceOut] = Field(description="The traces.")
    next_before: str | None = Field(description="Pass as `before` for the next page; null on the last page.")


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get("/traces", response_model=TracePage)
def list_traces(
    principal: Viewer,
    serving: ServingDep,
    model: str | None = Query(None, description="Deployment name or base model id the client asked for."),
    since: datetime | None = Query(None, description="Created at or after (ISO 8601; UTC if no zone)."),
    until: datetime | None = Query(None, description="Created before."),
    has_feedback: bool | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    label: str | None = None,
    has_correction: bool | None = None,
    user: str | None = None,
    adapter_version_id: str | None = None,
    arm: str | None = None,
    metadata: Annotated[list[str] | None, Query(description="key=value, repeatable; all must match.")] = None,
    before: str | None = Query(None, description="Only traces older than this trace id (paging)."),
    limit: int = Query(50, ge=1, le=1000),
) -> TracePage:
    """The organisation's traces, newest first."""
    filt = TraceFilter(
        model=model, since=_aware(since), until=_aware(until), has_feedback=has_feedback, min_score=min_score,
        max_score=max_score, label=label, has_correction=has_correction, user=user,
        adapter_version_id=adapter_version_id, arm=arm, metadata=trace_views.metadata_filter(metadata),
        before=before, limit=limit,
    )
    rows = trace_views.list_traces(serving.database, principal.org_id, filt)
    return TracePage(data=[TraceOut.model_validate(t) for t in rows],
                     next_before=rows[-1]["id"] if len(rows) == limit else None)


@router.get("/traces/{trace_id}", response_model=TraceOut)
def get_trace(trace_id: str, principal: Viewer, serving: ServingDep) -> TraceOut:
    """One trace with its feedback."""
    return TraceOut.model_validate(trace_views.get_trace(serving.database, principal.org_id, trace_id))


@router.get("/traces/{trace_id}/feedback", response_model=FeedbackList)
def list_feedback(trace_id: str, principal: Viewer, serving: ServingDep) -> FeedbackList:
    """The feedback on one trace, oldest first."""
    rows = trace_views.list_feedback(serving.database, principal.org_id, trace_id)
    return FeedbackList(data=[FeedbackOut.model_validate(f) for f in rows])


@router.post("/traces/{trace_id}/feedback", status_code=201, response_model=FeedbackOut)
async def add_feedback(trace_id: str, body: FeedbackIn, principal: Member, serving: ServingDep) -> FeedbackOut:
    """Record a score, label, comment and/or corrected output on one choice of a trace."""
    row = await asyncio.to_thread(trace_views.add_feedback, serving.database, principal, trace_id, body)
    return FeedbackOut.model_validate(row)


__all__ = ["FeedbackList", "FeedbackOut", "TraceOut", "TracePage", "TraceUsage", "router"]

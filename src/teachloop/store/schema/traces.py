"""Trace tables: every served completion, and the feedback given on it.

- ``Trace``: one chat-completion request that was answered: the input
  ``messages`` (OpenAI shape) and ``tools``, the ``choices`` returned (each an
  assistant message, its finish reason and token count), the sampling
  ``params``, what served it (requested ``model``, deployment and its revision,
  canary ``arm``, adapter version, base model), the client's ``user`` and
  ``request_metadata``, token counts and latency. Written once, never updated.
  An arm answered by an upstream (issue 17) also names its ``upstream_id``;
  ``cost_micro`` is the call's cost in millionths of a minor unit when the
  deployment prices the model; ``error`` says what went wrong when the call
  failed (``finish_reason: "error"``); a shadow call (``arm: "shadow"``) names
  the trace of the request it shadowed in ``shadow_of``.
- ``Feedback``: a score, label, comment and/or corrected output on one choice
  of a trace; a trace may have any number (append-only).

This module knows nothing of HTTP, engines or how traces are batched.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, Text, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, id_column, ref_column, utc_now


class Trace(OrgOwned, Base):
    """One answered chat completion."""

    __tablename__ = "traces"
    __table_args__ = (
        Index("ix_traces_org_created", "org_id", "created_at"),
        Index("ix_traces_org_model_created", "org_id", "model", "created_at"),
    )

    id: Mapped[str] = id_column("tr")
    key_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(300))
    deployment_id: Mapped[str | None] = ref_column("deployments.id", nullable=True)
    deployment_revision: Mapped[int | None] = mapped_column(Integer)
    arm: Mapped[str | None] = mapped_column(String(10))
    adapter_version_id: Mapped[str | None] = ref_column("adapter_versions.id", nullable=True)
    base_model: Mapped[str] = mapped_column(String(300))
    messages: Mapped[list[Any]] = mapped_column(JSONType)
    tools: Mapped[list[Any] | None] = mapped_column(JSONType)
    choices: Mapped[list[Any]] = mapped_column(JSONType)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    finish_reason: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    user: Mapped[str | None] = mapped_column(String(256))
    request_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    upstream_id: Mapped[str | None] = ref_column("upstream_endpoints.id", nullable=True)
    cost_micro: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    shadow_of: Mapped[str | None] = mapped_column(String(40), index=True)


class Feedback(OrgOwned, Base):
    """Feedback on one choice of a trace: any of score, label, comment, corrected output."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_org_created", "org_id", "created_at"),)

    id: Mapped[str] = id_column("fb")
    trace_id: Mapped[str] = ref_column("traces.id")
    choice_index: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(100))
    comment: Mapped[str | None] = mapped_column(Text)
    corrected_output: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    author: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


def _refuse(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    raise PermissionError(f"{type(target).__name__} rows are append-only; refusing to change {target.id}")


for _append_only in (Trace, Feedback):
    event.listen(_append_only, "before_update", _refuse)
    event.listen(_append_only, "before_delete", _refuse)


__all__ = ["Feedback", "Trace"]

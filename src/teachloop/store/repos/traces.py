"""Traces and feedback: write them, read them back by filter, per organisation.

``Traces(session)`` works inside a caller-owned session and never commits.
Traces are written once (``add`` / ``add_many``, or ``insert_many`` from column
values without building ORM objects, as the serving trace writer does for its batches) and never changed; feedback is appended with ``add_feedback``.
Every read takes the ``org_id``: another organisation's trace is ``NotFound``
exactly like a missing one, and filters never cross organisations.

``TraceFilter`` selects traces by model (deployment name or base model id),
time range, adapter version, canary arm, client ``user``, client metadata
``key=value`` pairs, and feedback (has any / has none, score range, label).
Results are newest first; page with ``before`` (a trace id: strictly older
traces). This module knows nothing of HTTP or engines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, and_, exists, insert, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.ids import is_id
from teachloop.store.schema.traces import Feedback, Trace

MAX_LIMIT = 10_000


def trace_id_of(ref: str) -> str:
    """The trace id in ``ref``: ``tr_...``, a completion id ``chatcmpl-tr_...`` or a response id ``resp_tr_...``;
    ``NotFound`` otherwise."""
    raw = ref.removeprefix("chatcmpl-").removeprefix("resp_") if isinstance(ref, str) else ""
    if not is_id(raw, "tr"):
        raise NotFound(f"trace {ref!r} not found", param="trace_id")
    return raw


@dataclass(frozen=True)
class TraceFilter:
    """Which traces to read (all fields optional; they combine with AND).

    Attributes:
        model: the ``model`` the client asked for (a deployment name or a base model id).
        deployment_id: the deployment that served it.
        adapter_version_id: the adapter version that served it.
        arm: ``primary`` or ``canary``.
        user: the client's ``user`` field.
        since: created at or after (aware datetime).
        until: created before (aware datetime).
        metadata: client metadata pairs that must all match exactly.
        has_feedback: True: at least one feedback row; False: none.
        min_score: some feedback has score >= this.
        max_score: some feedback has score <= this (with ``min_score``: the same feedback row).
        label: some feedback has this label.
        has_correction: some feedback carries a corrected output.
        before: only traces strictly older than this trace id (paging).
        limit: at most this many (newest first), 1-10000.
    """

    model: str | None = None
    deployment_id: str | None = None
    adapter_version_id: str | None = None
    arm: str | None = None
    user: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    has_feedback: bool | None = None
    min_score: float | None = None
    max_score: float | None = None
    label: str | None = None
    has_correction: bool | None = None
    before: str | None = None
    limit: int = 100

    def validate(self) -> None:
        """``InvalidInput`` naming the field for a filter that cannot be run."""
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be 1-{MAX_LIMIT}, got {self.limit}", param="limit")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidInput(f"{name} must carry a time zone", param=name)
        if self.since and self.until and self.since >= self.until:
            raise InvalidInput("since must be before until", param="since")
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InvalidInput(f"{name} must be a finite number", param=name)
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise InvalidInput("min_score is above max_score", param="min_score")
        if self.arm is not None and self.arm not in ("primary", "canary"):
            raise InvalidInput(f"arm must be primary or canary, got {self.arm!r}", param="arm")
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise InvalidInput(f"metadata filters are key=value strings, got {key!r}", param="metadata")


_INSERT = insert(cast(Table, Trace.__table__))


def insert_trace_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """``Traces.insert_many`` on a Core connection, in its transaction (``Database.connection``: the trace writer
    commits a batch without an ORM session). A lone row is one ``execute``, cheaper than an executemany of one."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    for group in groups.values():
        conn.execute(_INSERT, group[0] if len(group) == 1 else group)


class Traces:
    """Traces and their feedback within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- writes -----------------------------------------------------------------------------------

    def add_many(self, rows: Iterable[Trace]) -> None:
        """Insert trace rows (ids set by the caller, org_id on each), flushed, not committed."""
        self.session.add_all(list(rows))
        self.session.flush()

    def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert traces from column values (ids and org_id set), not committed: the same rows as ``add_many``.

        One executemany per set of columns (a column left out takes its default, e.g. ``tools`` stays SQL
        NULL), through Core rather than the ORM's unit of work, which costs several times the CPU per row.
        """
        insert_trace_rows(self.session.connection(), rows)

    def add_feedback(
        self,
        org_id: str,
        trace_ref: str,
        *,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        corrected_output: dict[str, Any] | None = None,
        choice_index: int = 0,
        author: str = "system",
    ) -> Feedback:
        """Append feedback on one choice of a trace; at least one of score/label/comment/correction."""
        trace = self.get(org_id, trace_ref)
        if score is None and label is None and comment is None and corrected_output is None:
            raise InvalidInput("feedback needs a score, label, comment or corrected output", param="score")
        if score is not None and (isinstance(score, bool) or not math.isfinite(float(score))):
            raise InvalidInput("score must be a finite number", param="score")
        if label is not None and not 1 <= len(label) <= 100:
            raise InvalidInput("label must be 1-100 characters", param="label")
        if comment is not None and len(comment) > 20_000:
            raise InvalidInput("comment must be at most 20000 characters", param="comment")
        if not 0 <= choice_index < len(trace.choices):
            raise InvalidInput(
                f"choice_index must be 0-{len(trace.choices) - 1} for this trace, got {choice_index}",
                param="choice_index",
            )
        row = Feedback(
            org_id=org_id, trace_id=trace.id, choice_index=choice_index,
            score=None if score is None else float(score), label=label, comment=comment, author=author,
        )
        if corrected_output is not None:  # left unset, the column is SQL NULL (None would store JSON null)
            row.corrected_output = corrected_output
        self.session.add(row)
        self.session.flush()
        return row

    # -- reads ------------------------------------------------------------------------------------

    def get(self, org_id: str, trace_ref: str) -> Trace:
        """The organisation's trace (``tr_...``, ``chatcmpl-tr_...`` or ``resp_tr_...``); ``NotFound`` otherwise."""
        row = self.session.get(Trace, trace_id_of(trace_ref))
        if row is None or row.org_id != org_id:
            raise NotFound(f"trace {trace_ref!r} not found", param="trace_id")
        return row

    def feedback(self, org_id: str, trace_ids: Sequence[str]) -> dict[str, list[Feedback]]:
        """Feedback rows of each trace (oldest first), for traces of this organisation."""
        out: dict[str, list[Feedback]] = {t: [] for t in trace_ids}
        if not trace_ids:
            return out
        rows = self.session.scalars(
            select(Feedback)
            .where(Feedback.org_id == org_id, Feedback.trace_id.in_(list(trace_ids)))
            .order_by(Feedback.created_at, Feedback.id)
        )
        for row in rows:
            out[row.trace_id].append(row)
        return out

    def list(self, org_id: str, filt: TraceFilter | None = None) -> list[Trace]:
        """The organisation's traces matching ``filt``, newest first."""
        filt = filt or TraceFilter()
        filt.validate()
        return list(self.session.scalars(self._query(org_id, filt)))

    def count(self, org_id: str, filt: TraceFilter | None = None) -> int:
        """How many traces match ``filt`` (ignoring ``limit`` and ``before``)."""
        from sqlalchemy import func

        filt = filt or TraceFilter()
        filt.validate()
        query = self._query(org_id, filt, paged=False).with_only_columns(func.count()).order_by(None)
        return int(self.session.scalar(query) or 0)

    def _query(self, org_id: str, f: TraceFilter, *, paged: bool = True) -> Select[Any]:
        q = select(Trace).where(Trace.org_id == org_id)
        for column, value in (
            (Trace.model, f.model),
            (Trace.deployment_id, f.deployment_id),
            (Trace.adapter_version_id, f.adapter_version_id),
            (Trace.arm, f.arm),
            (Trace.user, f.user),
        ):
            if value is not None:
                q = q.where(column == value)
        if f.since is not None:
            q = q.where(Trace.created_at >= f.since)
        if f.until is not None:
            q = q.where(Trace.created_at < f.until)
        for key, value in f.metadata.items():
            q = q.where(Trace.request_metadata[key].as_string() == value)
        own = and_(Feedback.trace_id == Trace.id, Feedback.org_id == org_id)
        if f.has_feedback is not None:
            q = q.where(exists().where(own) if f.has_feedback else ~exists().where(own))
        conds = []
        if f.min_score is not None:
            conds.append(Feedback.score >= f.min_score)
        if f.max_score is not None:
            conds.append(Feedback.score <= f.max_score)
        if conds:
            q = q.where(exists().where(own, *conds))
        if f.label is not None:
            q = q.where(exists().where(own, Feedback.label == f.label))
        if f.has_correction is not None:
            corrected = exists().where(own, Feedback.corrected_output.is_not(None))
            q = q.where(corrected if f.has_correction else ~corrected)
        if paged and f.before is not None:
            anchor = self.get(org_id, f.before)
            q = q.where(
                or_(
                    Trace.created_at < anchor.created_at,
                    and_(Trace.created_at == anchor.created_at, Trace.id < anchor.id),
                )
            )
        q = q.order_by(Trace.created_at.desc(), Trace.id.desc())
        return q.limit(f.limit) if paged else q


__all__ = ["MAX_LIMIT", "TraceFilter", "Traces", "insert_trace_rows", "trace_id_of"]

"""Loops, their iterations and the grader's scores of traffic, per organisation.

``Loops(session)`` works inside a caller-owned session and never commits.
There is at most one loop per deployment; ``configure`` creates it or
replaces its config (the phase, cursor and history are kept). Iterations are
numbered 1, 2, ... per loop and updated as they progress. ``TraceScore`` rows
are written once per (loop, trace); ``online`` summarises them (and the
feedback scores of the same traces) per adapter version and canary arm over
a time window -- the online figures the canary and the watch compare. Every
read takes the ``org_id``: another organisation's loop is ``NotFound`` like a
missing one.

Typed at the boundary: phases, statuses and stages are ``core.loop``'s
``StrEnum``s; an iteration's ``canary`` and ``revisions`` JSON columns are
written from ``CanaryRecord`` / ``Revisions`` models (unset fields left out)
and read back with ``canary_of`` / ``revisions_of``. This module knows
nothing of training, grading or HTTP.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from teachloop.core.errors import NotFound
from teachloop.core.loop import (
    CanaryRecord,
    IterationStage,
    IterationStatus,
    LoopPhase,
    OnlineSummary,
    Revisions,
)
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.loops import Loop, LoopIteration, TraceScore
from teachloop.store.schema.traces import Feedback, Trace


@dataclass(frozen=True)
class OnlineFigures:
    """Online figures of one slice of traffic.

    Attributes:
        requests: traces served in the slice.
        graded: traces with a grader score.
        grader_mean: mean grader score (None without any).
        feedback: feedback rows with a score.
        feedback_mean: mean feedback score (None without any).
    """

    requests: int
    graded: int
    grader_mean: float | None
    feedback: int
    feedback_mean: float | None

    def summary(self) -> OnlineSummary:
        """As stored in an iteration's ``canary`` record."""
        return OnlineSummary(requests=self.requests, graded=self.graded, grader_mean=self.grader_mean,
                             feedback=self.feedback, feedback_mean=self.feedback_mean)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON."""
        return self.summary().model_dump(mode="json")


def _stored(fields: dict[str, Any]) -> dict[str, Any]:
    """Column values with pydantic records (``canary``, ``revisions``) as their JSON, unset fields left out."""
    return {k: v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v
            for k, v in fields.items()}


def canary_of(row: LoopIteration) -> CanaryRecord:
    """An iteration's ``canary`` column as a record."""
    return CanaryRecord.model_validate(row.canary or {})


def revisions_of(row: LoopIteration) -> Revisions:
    """An iteration's ``revisions`` column as a record."""
    return Revisions.model_validate(row.revisions or {})


class Loops:
    """Loops, iterations and trace scores within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)

    # -- loops ------------------------------------------------------------------------------------

    def configure(
        self, org_id: str, deployment_id: str, config: dict[str, Any], digest: str, *, enabled: bool = True,
        actor: str = "system",
    ) -> tuple[Loop, bool]:
        """Create the deployment's loop, or replace its config; returns (loop, created)."""
        row = self.for_deployment(org_id, deployment_id)
        created = row is None
        if row is None:
            row = Loop(org_id=org_id, deployment_id=deployment_id, config=config, config_digest=digest,
                       enabled=enabled, phase=LoopPhase.IDLE)
            self.session.add(row)
        else:
            row.config, row.config_digest, row.enabled = config, digest, enabled
        self.session.flush()
        self.audit.record(org_id, actor, "loop.configure", row.id, {"deployment_id": deployment_id, "digest": digest,
                                                                    "enabled": enabled})
        return row, created

    def for_deployment(self, org_id: str, deployment_id: str) -> Loop | None:
        """The loop of a deployment, or None."""
        return self.session.scalar(select(Loop).where(Loop.org_id == org_id, Loop.deployment_id == deployment_id))

    def get(self, org_id: str, loop_id: str) -> Loop:
        """The organisation's loop with this id; ``NotFound`` otherwise."""
        row = self.session.get(Loop, loop_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"loop {loop_id!r} not found", param="loop")
        return row

    def locked(self, org_id: str, loop_id: str) -> Loop:
        """The loop, locked for update (PostgreSQL; SQLite write sessions are serialised anyway)."""
        row = self.session.scalar(select(Loop).where(Loop.id == loop_id, Loop.org_id == org_id).with_for_update())
        if row is None:
            raise NotFound(f"loop {loop_id!r} not found", param="loop")
        return row

    def list(self, org_id: str) -> builtins.list[Loop]:
        """The organisation's loops."""
        return list(self.session.scalars(select(Loop).where(Loop.org_id == org_id).order_by(Loop.created_at)))

    def update(self, org_id: str, loop_id: str, **fields: Any) -> Loop:
        """Set fields of the loop."""
        row = self.get(org_id, loop_id)
        for key, value in fields.items():
            setattr(row, key, value)
        self.session.flush()
        return row

    # -- iterations -------------------------------------------------------------------------------

    def start_iteration(self, org_id: str, loop_id: str, trigger: str, **fields: Any) -> LoopIteration:
        """A new iteration (status ``running``), numbered after the last one."""
        self.get(org_id, loop_id)
        last = self.session.scalar(select(func.max(LoopIteration.number)).where(LoopIteration.loop_id == loop_id))
        row = LoopIteration(org_id=org_id, loop_id=loop_id, number=int(last or 0) + 1, trigger=trigger[:300],
                            status=IterationStatus.RUNNING, stage=IterationStage.DATA, **_stored(fields))
        self.session.add(row)
        self.session.flush()
        return row

    def iteration(self, org_id: str, iteration_id: str) -> LoopIteration:
        """The organisation's iteration with this id; ``NotFound`` otherwise."""
        row = self.session.get(LoopIteration, iteration_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"loop iteration {iteration_id!r} not found", param="iteration")
        return row

    def update_iteration(self, org_id: str, iteration_id: str, **fields: Any) -> LoopIteration:
        """Set fields of an iteration (JSON fields are replaced whole; records are stored as their JSON)."""
        row = self.iteration(org_id, iteration_id)
        for key, value in _stored(fields).items():
            setattr(row, key, value)
        self.session.flush()
        return row

    def iterations(self, org_id: str, loop_id: str, *, limit: int = 100) -> builtins.list[LoopIteration]:
        """The loop's iterations, newest first."""
        self.get(org_id, loop_id)
        return list(self.session.scalars(
            select(LoopIteration).where(LoopIteration.loop_id == loop_id)
            .order_by(LoopIteration.number.desc()).limit(limit)
        ))

    def watched(self, org_id: str, loop_id: str, version_id: str) -> LoopIteration | None:
        """The newest promoted iteration of the loop whose candidate is ``version_id`` (the one to watch)."""
        return self.session.scalar(
            select(LoopIteration).where(LoopIteration.org_id == org_id, LoopIteration.loop_id == loop_id,
                                        LoopIteration.status == IterationStatus.PROMOTED,
                                        LoopIteration.candidate_version_id == version_id)
            .order_by(LoopIteration.number.desc()).limit(1)
        )

    def end_watches(self, org_id: str, loop_id: str, now: datetime, *, keep: str | None = None) -> None:
        """Mark the loop's watched iterations (but ``keep``) done: another version serves now."""
        rows = self.session.scalars(select(LoopIteration).where(
            LoopIteration.org_id == org_id, LoopIteration.loop_id == loop_id, LoopIteration.stage == IterationStage.WATCH))
        for row in rows:
            if row.id != keep:
                row.stage, row.finished_at = IterationStage.DONE, now
        self.session.flush()

    def train_seconds_since(self, org_id: str, loop_id: str, since: datetime) -> float:
        """Training seconds spent by iterations of the loop that started at or after ``since``."""
        total = self.session.scalar(
            select(func.coalesce(func.sum(LoopIteration.train_seconds), 0.0)).where(
                LoopIteration.org_id == org_id, LoopIteration.loop_id == loop_id, LoopIteration.started_at >= since
            )
        )
        return float(total or 0.0)

    # -- trace scores -----------------------------------------------------------------------------

    def add_scores(self, rows: Iterable[TraceScore]) -> None:
        """Insert trace scores (org_id and loop_id on each)."""
        self.session.add_all(list(rows))
        self.session.flush()

    def scored_ids(self, loop_id: str, trace_ids: Iterable[str]) -> set[str]:
        """Which of ``trace_ids`` the loop already scored."""
        ids = list(trace_ids)
        if not ids:
            return set()
        return set(self.session.scalars(
            select(TraceScore.trace_id).where(TraceScore.loop_id == loop_id, TraceScore.trace_id.in_(ids))
        ))

    def unscored_traces(self, org_id: str, loop_id: str, deployment_id: str, *, limit: int = 500) -> builtins.list[Trace]:
        """The deployment's traces the loop has not scored yet, oldest first (a cancelled reply is never scored)."""
        scored = select(TraceScore.trace_id).where(TraceScore.loop_id == loop_id)
        return list(self.session.scalars(
            select(Trace).where(Trace.org_id == org_id, Trace.deployment_id == deployment_id, Trace.id.not_in(scored),
                                Trace.finish_reason != "cancelled")  # an abandoned reply is not graded
            .order_by(Trace.created_at, Trace.id).limit(limit)
        ))

    def scores(self, org_id: str, loop_id: str, *, since: datetime | None = None,
               limit: int = 100_000) -> builtins.list[TraceScore]:
        """The loop's trace scores (oldest trace first)."""
        query = select(TraceScore).where(TraceScore.org_id == org_id, TraceScore.loop_id == loop_id)
        if since is not None:
            query = query.where(TraceScore.trace_created_at > since)
        return list(self.session.scalars(query.order_by(TraceScore.trace_created_at, TraceScore.id).limit(limit)))

    def online(
        self, org_id: str, loop_id: str, deployment_id: str, *, since: datetime | None = None,
        until: datetime | None = None, adapter_version_id: str | bool | None = False, arm: str | None = None,
        last: int | None = None,
    ) -> OnlineFigures:
        """Online figures of the deployment's traffic in ``[since, until)``.

        ``adapter_version_id``: a version id, None for the base model, or False for any;
        ``arm``: ``primary``/``canary`` or None for both; ``last``: only the newest ``last`` traces.
        """
        traces = select(Trace.id).where(Trace.org_id == org_id, Trace.deployment_id == deployment_id)
        if since is not None:
            traces = traces.where(Trace.created_at >= since)
        if until is not None:
            traces = traces.where(Trace.created_at < until)
        if adapter_version_id is not False:
            traces = traces.where(Trace.adapter_version_id.is_(None) if adapter_version_id is None
                                  else Trace.adapter_version_id == adapter_version_id)
        if arm is not None:
            traces = traces.where(Trace.arm == arm)
        if last is not None:
            traces = traces.order_by(Trace.created_at.desc(), Trace.id.desc()).limit(last)
        sub = traces.subquery()
        requests = int(self.session.scalar(select(func.count()).select_from(sub)) or 0)
        graded, grader_mean = self.session.execute(
            select(func.count(TraceScore.score), func.avg(TraceScore.score)).where(
                TraceScore.loop_id == loop_id, TraceScore.trace_id.in_(select(sub.c.id)), TraceScore.score.is_not(None)
            )
        ).one()
        fb_n, fb_mean = self.session.execute(
            select(func.count(Feedback.score), func.avg(Feedback.score)).where(
                Feedback.org_id == org_id, Feedback.trace_id.in_(select(sub.c.id)), Feedback.score.is_not(None)
            )
        ).one()
        return OnlineFigures(requests, int(graded or 0), None if grader_mean is None else float(grader_mean),
                             int(fb_n or 0), None if fb_mean is None else float(fb_mean))


__all__ = ["Loops", "OnlineFigures", "canary_of", "revisions_of"]

"""Loop tables: the autopilot of a deployment, its iterations, and the grader's scores of its traffic.

- ``Loop``: one per deployment. ``config`` is the validated loop config (JSON)
  and ``config_digest`` its content digest; ``enabled`` says whether it runs.
  ``phase`` (``core.loop.LoopPhase``) is where it stands: ``idle`` (waiting for its trigger),
  ``canary`` (a candidate serves part of the traffic; nothing else happens)
  or ``watch`` (the deployed version was promoted by the loop and is watched
  for as long as it serves; the trigger still runs); ``active_iteration_id``
  names the iteration in ``canary``/``watch``. ``cursor`` is the arrival time
  (feedback given, trace graded, dataset row recorded) of the newest example
  the last iteration's snapshot could see (the trigger counts usable examples
  after it); ``scored_until`` is how far online scoring got.
- ``LoopIteration``: one turn of the loop, numbered 1, 2, ... per loop: why it
  started (``trigger``), the dataset snapshot it used, the training run, the
  candidate and baseline adapter versions, the eval gate's decision record,
  the canary's figures (``core.loop.CanaryRecord``), the deployment revisions
  it wrote (``core.loop.Revisions``), its ``status`` (``core.loop.IterationStatus``)
  (``running``, ``skipped``, ``failed``, ``rejected``, ``canary``,
  ``promoted``, ``rolled_back``, ``superseded``) and the ``reason`` for it.
- ``TraceScore``: the environment grader's score of one served trace (the
  online reward), once per (loop, trace).
- ``LoopIteration.plan`` (issue 16) records how the iteration trained: where its candidate started
  (the deployed adapter, an earlier candidate of the lineage, ...), its steps and temperature
  (``loop.lineage.Plan.to_json``); null for iterations recorded before it.

This module knows nothing of training, grading or HTTP.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.core.loop import IterationStage, IterationStatus, LoopPhase
from teachloop.store.schema.base import Base, JSONType, OrgOwned, Timestamps, id_column, ref_column, utc_now

LOOP_PHASES = tuple(LoopPhase)
ITERATION_STATUSES = tuple(IterationStatus)


class Loop(OrgOwned, Timestamps, Base):
    """The loop of one deployment."""

    __tablename__ = "loops"
    __table_args__ = (UniqueConstraint("org_id", "deployment_id"),)

    id: Mapped[str] = id_column("loop")
    deployment_id: Mapped[str] = ref_column("deployments.id")
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    config_digest: Mapped[str] = mapped_column(String(71))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    phase: Mapped[str] = mapped_column(String(10), default=LoopPhase.IDLE)
    active_iteration_id: Mapped[str | None] = mapped_column(String(40))
    cursor: Mapped[datetime | None]
    scored_until: Mapped[datetime | None]
    last_tick_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)


class LoopIteration(OrgOwned, Timestamps, Base):
    """One iteration of a loop: data, run, gate, decision, canary and outcome."""

    __tablename__ = "loop_iterations"
    __table_args__ = (UniqueConstraint("loop_id", "number"),)

    id: Mapped[str] = id_column("lit")
    loop_id: Mapped[str] = ref_column("loops.id")
    number: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20), default=IterationStatus.RUNNING)
    stage: Mapped[str] = mapped_column(String(20), default=IterationStage.DATA)
    reason: Mapped[str | None] = mapped_column(Text)
    dataset_id: Mapped[str | None] = ref_column("datasets.id", nullable=True)
    dataset_digest: Mapped[str | None] = mapped_column(String(71))
    counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    run_id: Mapped[str | None] = ref_column("training_runs.id", nullable=True)
    baseline_version_id: Mapped[str | None] = ref_column("adapter_versions.id", nullable=True)
    candidate_version_id: Mapped[str | None] = ref_column("adapter_versions.id", nullable=True)
    gate: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    canary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    revisions: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)  # issue 16: loop.lineage.Plan
    started_at: Mapped[datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[datetime | None]


class TraceScore(OrgOwned, Base):
    """An environment grader's score of one served trace (written once)."""

    __tablename__ = "trace_scores"
    __table_args__ = (
        UniqueConstraint("loop_id", "trace_id"),
        Index("ix_trace_scores_loop_created", "loop_id", "trace_created_at"),
    )

    id: Mapped[str] = id_column("tsc")
    loop_id: Mapped[str] = ref_column("loops.id")
    trace_id: Mapped[str] = ref_column("traces.id")
    trace_created_at: Mapped[datetime]
    adapter_version_id: Mapped[str | None] = mapped_column(String(40))
    arm: Mapped[str | None] = mapped_column(String(10))
    env_ref: Mapped[str] = mapped_column(String(300))
    env_digest: Mapped[str] = mapped_column(String(71))
    answer: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    failure: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


__all__ = ["ITERATION_STATUSES", "LOOP_PHASES", "Loop", "LoopIteration", "TraceScore"]

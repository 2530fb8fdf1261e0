"""Training runs: the run record, its metric time series and its checkpoints.

A ``TrainingRun`` holds the run's full config (JSON), the digests of what it
trained on (environments, datasets), its status and progress. ``RunMetric``
rows are the time series: one row per (run, step, phase) with a JSON object of
figures (``phase`` is ``train`` or ``eval``; eval rows at step 0 are the
before-training evaluation). ``RunCheckpoint`` rows point at blob-store keys
of checkpoints (adapter + optimizer + step). The watch columns (issue 16,
``train.watch``): ``best_step``/``best_score``/``best_adapter_key`` name the
best held-out checkpoint, ``stop_reason`` why a run ended before its last step
(``early_stop``, ``reward_hack_alarm``), ``alarm`` the reward-hack alarm
(``core.training.RewardHackAlarm`` as JSON) when one was raised. This module knows nothing of
engines or algorithms.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, Timestamps, id_column, ref_column, utc_now

RUN_STATUSES = ("created", "queued", "running", "cancelling", "completed", "failed", "cancelled")


class TrainingRun(OrgOwned, Timestamps, Base):
    """One training run (SFT, DPO or RL)."""

    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_org_created", "org_id", "created_at"),)

    id: Mapped[str] = id_column("run")
    name: Mapped[str] = mapped_column(String(200))
    algorithm: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="created")
    base_model: Mapped[str] = mapped_column(String(300))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    last_checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    last_checkpoint_key: Mapped[str | None] = mapped_column(String(300))
    final_adapter_key: Mapped[str | None] = mapped_column(String(300))
    error: Mapped[str | None] = mapped_column(Text)
    best_step: Mapped[int | None] = mapped_column(Integer)
    best_score: Mapped[float | None] = mapped_column(Float)
    best_adapter_key: Mapped[str | None] = mapped_column(String(300))
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    alarm: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class RunMetric(OrgOwned, Base):
    """The figures of one step (train) or one evaluation (eval) of a run."""

    __tablename__ = "run_metrics"
    __table_args__ = (UniqueConstraint("run_id", "step", "phase"),)

    id: Mapped[str] = id_column("rmet")
    run_id: Mapped[str] = ref_column("training_runs.id")
    step: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(10))
    values: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class RunCheckpoint(OrgOwned, Base):
    """A checkpoint of a run in the blob store."""

    __tablename__ = "run_checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[str] = id_column("ckpt")
    run_id: Mapped[str] = ref_column("training_runs.id")
    step: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


__all__ = ["RUN_STATUSES", "RunCheckpoint", "RunMetric", "TrainingRun"]

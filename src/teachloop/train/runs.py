"""Run records: create, progress, metrics, checkpoints in the blob store, resume and finish.

``RunStore`` wraps the database and the blob store for the trainer. Every
method opens its own short transaction, so a killed process leaves the run as
of its last completed call: metrics are written per step, a checkpoint row only
after its blob is complete. ``resume_point`` returns the last checkpoint and
deletes the metric rows recorded after it, so a resumed run neither loses nor
repeats a step beyond the checkpoint. Every read is scoped to an organisation.

Statuses: ``created`` (the CLI, about to run), ``queued`` (waiting for a
worker), ``running``, ``cancelling`` (asked to stop; the trainer stops at the
next step boundary), and the final ``completed``, ``failed``, ``cancelled``.
``request_cancel`` cancels a run that has not started at once and marks a
running one ``cancelling``.

The watch (``train.watch``): ``save_best`` uploads the adapter of the best
held-out evaluation and records its step and score; ``record_alarm`` stores a
reward-hack alarm on the run; ``finish(stop_reason=...)`` says why a run ended
before its last step. ``RunInfo.alarm`` is what the loop reads to refuse a
candidate.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.core.training import RewardHackAlarm
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.runs import RunCheckpoint, RunMetric, TrainingRun
from teachloop.train.config import TrainConfig

#: The statuses a run never leaves.
FINAL_STATUSES = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class RunInfo:
    """A snapshot of a run record (detached from any session)."""

    id: str
    org_id: str
    name: str
    algorithm: str
    status: str
    base_model: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    step: int
    total_steps: int
    last_checkpoint_step: int | None
    last_checkpoint_key: str | None
    final_adapter_key: str | None
    error: str | None
    created_at: Any
    finished_at: Any
    #: Step of the best held-out evaluation after step 0 (its adapter is the final one with eval.keep_best).
    best_step: int | None = None
    #: Its held-out score (eval.metric).
    best_score: float | None = None
    #: Blob key of the best adapter (PEFT folder).
    best_adapter_key: str | None = None
    #: Why the run ended before its last step: ``early_stop``, ``reward_hack_alarm``; ``None`` otherwise.
    stop_reason: str | None = None
    #: The reward-hack alarm the run raised, if any (the loop never promotes such a run).
    alarm: RewardHackAlarm | None = None


def _info(row: TrainingRun) -> RunInfo:
    return RunInfo(row.id, row.org_id, row.name, row.algorithm, row.status, row.base_model, dict(row.config),
                   dict(row.inputs or {}), row.step, row.total_steps, row.last_checkpoint_step,
                   row.last_checkpoint_key, row.final_adapter_key, row.error, row.created_at, row.finished_at,
                   row.best_step, row.best_score, row.best_adapter_key, row.stop_reason,
                   RewardHackAlarm.model_validate(row.alarm) if row.alarm else None)


class RunStore:
    """Run records over ``database`` and checkpoints in ``blobs``."""

    def __init__(self, database: Database, blobs: BlobStore) -> None:
        self.db = database
        self.blobs = blobs

    # ------------------------------------------------------------------ records
    def create(self, org_id: str, config: TrainConfig, inputs: dict[str, Any], *, status: str = "created",
               session: Any = None) -> RunInfo:
        """A new run in ``status`` (``created``, or ``queued`` for a worker), in ``session`` when given."""
        if session is not None:
            return self._create(session, org_id, config, inputs, status)
        with self.db.session() as s:
            return self._create(s, org_id, config, inputs, status)

    @staticmethod
    def _create(s: Any, org_id: str, config: TrainConfig, inputs: dict[str, Any], status: str) -> RunInfo:
        if status not in ("created", "queued"):
            raise InvalidInput(f"a new run is created or queued, not {status!r}", param="status")
        row = TrainingRun(org_id=org_id, name=config.name, algorithm=config.algorithm, status=status,
                          base_model=config.model, config=config.to_dict(), inputs=inputs, step=0,
                          total_steps=config.steps)
        s.add(row)
        s.flush()
        return _info(row)

    def _row(self, s: Any, org_id: str, run_id: str) -> TrainingRun:
        row = s.execute(
            select(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.org_id == org_id)
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"run {run_id!r} not found")
        return row  # type: ignore[no-any-return]

    def get(self, org_id: str, run_id: str, *, session: Any = None) -> RunInfo:
        """The run (``NotFound`` when missing or another organisation's), read in ``session`` when given."""
        if session is not None:
            return _info(self._row(session, org_id, run_id))
        with self.db.session(write=False) as s:
            return _info(self._row(s, org_id, run_id))

    def list_runs(self, org_id: str, limit: int = 50) -> list[RunInfo]:
        """Newest runs first."""
        with self.db.session(write=False) as s:
            rows = s.execute(
                select(TrainingRun).where(TrainingRun.org_id == org_id)
                .order_by(TrainingRun.created_at.desc()).limit(limit)
            ).scalars()
            return [_info(r) for r in rows]

    def update(self, org_id: str, run_id: str, *, session: Any = None, **fields: Any) -> None:
        """Set fields of the run record (in ``session`` when given)."""
        if session is not None:
            row = self._row(session, org_id, run_id)
            for k, v in fields.items():
                setattr(row, k, v)
            session.flush()
            return
        with self.db.session() as s:
            self.update(org_id, run_id, session=s, **fields)

    def start(self, org_id: str, run_id: str) -> None:
        """Mark the run running."""
        self.update(org_id, run_id, status="running", started_at=utc_now(), error=None, finished_at=None)

    def finish(self, org_id: str, run_id: str, status: str, *, error: str | None = None,
               final_adapter_key: str | None = None, stop_reason: str | None = None) -> None:
        """Mark the run completed, failed or cancelled (``stop_reason``: why it ended before its last step)."""
        fields: dict[str, Any] = {"status": status, "error": error, "finished_at": utc_now()}
        if final_adapter_key is not None:
            fields["final_adapter_key"] = final_adapter_key
        if stop_reason is not None:
            fields["stop_reason"] = stop_reason
        self.update(org_id, run_id, **fields)

    def save_best(self, org_id: str, run_id: str, step: int, score: float, folder: Path) -> str:
        """Upload the adapter of the best held-out evaluation so far and record it; returns its blob key."""
        key = f"runs/{run_id}/best"
        self.blobs.put_dir(key, folder, overwrite=True)
        self.update(org_id, run_id, best_step=step, best_score=score, best_adapter_key=key)
        return key

    def record_alarm(self, org_id: str, run_id: str, alarm: RewardHackAlarm) -> None:
        """Store the run's reward-hack alarm."""
        self.update(org_id, run_id, alarm=alarm.model_dump(mode="json"))

    def request_cancel(self, org_id: str, run_id: str) -> RunInfo:
        """Cancel a queued run now, or ask a running one to stop (``cancelling``); ``Conflict`` once finished."""
        with self.db.session() as s:
            row = self._row(s, org_id, run_id)
            if row.status in FINAL_STATUSES:
                raise Conflict(f"run {run_id} already {row.status}; nothing to cancel", param="run_id")
            if row.status in ("created", "queued"):
                row.status, row.finished_at, row.error = "cancelled", utc_now(), "cancelled before it started"
            elif row.status == "running":
                row.status = "cancelling"
            s.flush()
            return _info(row)

    def cancel_requested(self, org_id: str, run_id: str) -> bool:
        """Whether the run was asked to stop (status ``cancelling`` or ``cancelled``)."""
        return self.get(org_id, run_id).status in ("cancelling", "cancelled")

    def checkpoints(self, org_id: str, run_id: str) -> list[tuple[int, str, Any]]:
        """The run's checkpoints as (step, blob key, created at), in step order."""
        with self.db.session(write=False) as s:
            self._row(s, org_id, run_id)
            rows = s.execute(select(RunCheckpoint).where(RunCheckpoint.run_id == run_id)
                             .order_by(RunCheckpoint.step)).scalars()
            return [(r.step, r.blob_key, r.created_at) for r in rows]

    # ------------------------------------------------------------------ metrics
    def record(self, org_id: str, run_id: str, step: int, phase: str, values: dict[str, Any]) -> None:
        """Store the figures of ``step`` (replacing a row of the same step and phase); train rows advance ``step``."""
        with self.db.session() as s:
            row = self._row(s, org_id, run_id)
            s.execute(delete(RunMetric).where(RunMetric.run_id == run_id, RunMetric.step == step,
                                              RunMetric.phase == phase))
            s.add(RunMetric(org_id=org_id, run_id=run_id, step=step, phase=phase, values=values))
            if phase == "train":
                row.step = max(row.step, step)

    def metrics(self, org_id: str, run_id: str, phase: str | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        """(step, phase, values) in step order."""
        with self.db.session(write=False) as s:
            self._row(s, org_id, run_id)
            q = select(RunMetric).where(RunMetric.run_id == run_id)
            if phase is not None:
                q = q.where(RunMetric.phase == phase)
            rows = s.execute(q.order_by(RunMetric.step, RunMetric.phase)).scalars()
            return [(r.step, r.phase, dict(r.values)) for r in rows]

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self, org_id: str, run_id: str, step: int, folder: Path) -> str:
        """Upload a checkpoint folder and record it as the run's latest; returns its blob key."""
        key = f"runs/{run_id}/checkpoints/{step:08d}"
        self.blobs.put_dir(key, folder, overwrite=True)
        with self.db.session() as s:
            row = self._row(s, org_id, run_id)
            s.execute(delete(RunCheckpoint).where(RunCheckpoint.run_id == run_id, RunCheckpoint.step == step))
            s.add(RunCheckpoint(org_id=org_id, run_id=run_id, step=step, blob_key=key))
            row.last_checkpoint_step = step
            row.last_checkpoint_key = key
        return key

    def save_adapter(self, org_id: str, run_id: str, folder: Path) -> str:
        """Upload the final adapter (PEFT folder); returns its blob key."""
        key = f"runs/{run_id}/adapter"
        self.blobs.put_dir(key, folder, overwrite=True)
        return key

    def resume_point(self, org_id: str, run_id: str, dest: Path) -> int:
        """Download the last checkpoint into ``dest``; drop metrics recorded after it; return its step.

        Returns 0 (and downloads nothing) for a run without a checkpoint.
        """
        run = self.get(org_id, run_id)
        if run.status == "completed":
            raise InvalidInput(f"run {run_id} already completed all {run.total_steps} steps", param="run")
        step = run.last_checkpoint_step or 0
        if run.last_checkpoint_key:
            self.blobs.get_dir(run.last_checkpoint_key, dest)
        with self.db.session() as s:
            row = self._row(s, org_id, run_id)
            s.execute(delete(RunMetric).where(RunMetric.run_id == run_id, RunMetric.step > step,
                                              RunMetric.phase == "train"))
            s.execute(delete(RunMetric).where(RunMetric.run_id == run_id, RunMetric.step > step,
                                              RunMetric.phase == "eval"))
            row.step = step
        return step

    def checkpoint_dir(self) -> tempfile.TemporaryDirectory[str]:
        """A scratch folder for writing a checkpoint before upload."""
        return tempfile.TemporaryDirectory(prefix="teachloop-ckpt-")


__all__ = ["FINAL_STATUSES", "RunInfo", "RunStore"]

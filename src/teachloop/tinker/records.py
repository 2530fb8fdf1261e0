"""The durable side of the Tinker API: sessions, training models and checkpoints in the store.

``Records`` wraps the database and the blob store. Every method opens its own
short transaction and is scoped to an organisation: another organisation's
session, model or checkpoint is ``NotFound`` (a published checkpoint may be
*read* by any organisation, never changed). A training model is also a
teachloop ``TrainingRun`` (algorithm ``tinker``), so it appears in the run
list and the console with its step counter and per-step metrics. Checkpoint
folders live in the blob store under ``tinker/{org}/{model}/{kind}/{name}``;
a checkpoint's row is written only after its folder is complete, and expired
checkpoints (``ttl_seconds``) are deleted lazily when listed or read.
``publish_adapter`` turns a checkpoint into the next version of a teachloop
adapter (``catalog.publish_adapter``), which ``teachloop deploy`` serves.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from teachloop.catalog.adapters import publish_adapter
from teachloop.core.errors import Conflict, Gone, InvalidInput, NotFound
from teachloop.core.tinker import CheckpointRecord, TinkerPath
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.runs import RunMetric, TrainingRun
from teachloop.store.schema.tinker import TinkerCheckpoint, TinkerModel, TinkerSession


@dataclass(frozen=True)
class ModelRow:
    """A training model's record (detached)."""

    model_id: str
    org_id: str
    session_id: str
    run_id: str
    base_model: str
    lora: dict[str, Any]
    user_metadata: dict[str, Any]
    step: int
    updated_at: datetime


@dataclass(frozen=True)
class SessionRow:
    """A session's record (detached)."""

    session_id: str
    org_id: str
    tags: list[Any]
    user_metadata: dict[str, Any]
    status: str
    created_at: datetime


def _model(row: TinkerModel) -> ModelRow:
    return ModelRow(row.id, row.org_id, row.session_id, row.run_id, row.base_model, dict(row.lora),
                    dict(row.user_metadata or {}), row.step, row.updated_at)


def _session(row: TinkerSession) -> SessionRow:
    return SessionRow(row.id, row.org_id, list(row.tags or []), dict(row.user_metadata or {}), row.status,
                      row.created_at)


def _checkpoint(row: TinkerCheckpoint) -> CheckpointRecord:
    return CheckpointRecord(
        path=str(TinkerPath(row.model_id, row.kind, row.name)),  # type: ignore[arg-type]
        kind=row.kind,  # type: ignore[arg-type]
        created_at=row.created_at, size_bytes=row.size_bytes, public=row.public, expires_at=row.expires_at,
        user_metadata={str(k): str(v) for k, v in (row.user_metadata or {}).items()} or None,
        adapter_version_id=row.adapter_version_id,
    )


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class Records:
    """Sessions, models and checkpoints of the Tinker API in ``database`` and ``blobs``."""

    def __init__(self, database: Database, blobs: BlobStore) -> None:
        self.db = database
        self.blobs = blobs

    # ---------------------------------------------------------------- sessions
    def create_session(self, org_id: str, *, tags: list[str], user_metadata: dict[str, Any],
                       sdk_version: str | None) -> str:
        """A new active session; its id."""
        with self.db.session() as s:
            row = TinkerSession(org_id=org_id, tags=list(tags), user_metadata=dict(user_metadata),
                                sdk_version=(sdk_version or "")[:40] or None, status="active", last_seen_at=utc_now())
            s.add(row)
            s.flush()
            return row.id

    def session(self, org_id: str, session_id: str) -> SessionRow:
        """The session ``session_id`` of ``org_id``; ``NotFound`` otherwise."""
        with self.db.session(write=False) as s:
            row = s.get(TinkerSession, session_id)
            if row is None or row.org_id != org_id:
                raise NotFound(f"session {session_id!r} not found", param="session_id")
            return _session(row)

    def touch_session(self, org_id: str, session_id: str) -> None:
        """Record a heartbeat; ``Gone`` for a finished session (the SDK then stops heartbeating)."""
        with self.db.session() as s:
            row = s.get(TinkerSession, session_id)
            if row is None or row.org_id != org_id:
                raise NotFound(f"session {session_id!r} not found", param="session_id")
            if row.status != "active":
                raise Gone(f"session {session_id!r} has finished ({row.status}"
                           f"{': ' + row.detail if row.detail else ''})", param="session_id")
            row.last_seen_at = utc_now()

    def finish_session(self, org_id: str, session_id: str, status: str, detail: str | None) -> tuple[str, list[str]]:
        """Mark the session finished (``success``, ``errored`` or ``interrupted``): (the status that stands, its
        model ids). The first finish wins: a finished session keeps its status, detail and runs."""
        run_status = {"success": "completed", "errored": "failed", "interrupted": "cancelled"}[status]
        with self.db.session() as s:
            row = s.get(TinkerSession, session_id)
            if row is None or row.org_id != org_id:
                raise NotFound(f"session {session_id!r} not found", param="session_id")
            if row.status != "active":
                return row.status, [m.id for m in s.scalars(select(TinkerModel)
                                                           .where(TinkerModel.session_id == session_id))]
            row.status, row.detail = status, detail
            models = s.scalars(select(TinkerModel).where(TinkerModel.session_id == session_id)).all()
            for model in models:
                run = s.get(TrainingRun, model.run_id)
                if run is not None and run.status == "running":
                    run.status, run.finished_at = run_status, utc_now()
                    run.error = detail if run_status in ("failed", "cancelled") else None
            return status, [m.id for m in models]

    def stale_sessions(self, before: datetime) -> list[tuple[str, str]]:
        """(org id, session id) of every active session with no heartbeat (nor creation) since ``before``."""
        with self.db.session(write=False) as s:
            seen = func.coalesce(TinkerSession.last_seen_at, TinkerSession.created_at)
            rows = s.execute(select(TinkerSession.org_id, TinkerSession.id).where(
                TinkerSession.status == "active", seen < before)).all()
            return [(org, sid) for org, sid in rows]

    def sessions(self, org_id: str, *, limit: int, offset: int) -> tuple[list[SessionRow], int]:
        """The organisation's sessions, newest first, and their total count."""
        with self.db.session(write=False) as s:
            q = select(TinkerSession).where(TinkerSession.org_id == org_id)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(TinkerSession.created_at.desc()).offset(offset).limit(limit)).all()
            return [_session(r) for r in rows], int(total)

    def session_models(self, org_id: str, session_id: str) -> list[str]:
        """Model ids of a session."""
        self.session(org_id, session_id)
        with self.db.session(write=False) as s:
            return list(s.scalars(select(TinkerModel.id).where(TinkerModel.session_id == session_id)))

    def checkpoint_count(self, org_id: str, session_id: str) -> tuple[int, int]:
        """(checkpoints, bytes) saved by a session's models."""
        with self.db.session(write=False) as s:
            row = s.execute(
                select(func.count(TinkerCheckpoint.id), func.coalesce(func.sum(TinkerCheckpoint.size_bytes), 0))
                .join(TinkerModel, TinkerModel.id == TinkerCheckpoint.model_id)
                .where(TinkerModel.session_id == session_id, TinkerCheckpoint.org_id == org_id)
            ).one()
            return int(row[0] or 0), int(row[1] or 0)

    # ------------------------------------------------------------------ models
    def create_model(self, org_id: str, model_id: str, *, session_id: str, base_model: str, lora: dict[str, Any],
                     user_metadata: dict[str, Any]) -> ModelRow:
        """The model's record and its ``TrainingRun`` (algorithm ``tinker``, status ``running``)."""
        with self.db.session() as s:
            session = s.get(TinkerSession, session_id)
            if session is None or session.org_id != org_id:
                raise NotFound(f"session {session_id!r} not found", param="session_id")
            if s.get(TinkerModel, model_id) is not None:
                raise Conflict(f"model {model_id!r} already exists", param="model_seq_id")
            run = TrainingRun(
                org_id=org_id, name=f"tinker {model_id}"[:200], algorithm="tinker", status="running",
                base_model=base_model, config={"tinker": {"model_id": model_id, "lora": lora,
                                                          "user_metadata": user_metadata}},
                inputs={}, step=0, total_steps=0, started_at=utc_now(),
            )
            s.add(run)
            s.flush()
            row = TinkerModel(id=model_id, org_id=org_id, session_id=session_id, run_id=run.id, base_model=base_model,
                              lora=lora, user_metadata=user_metadata, step=0)
            s.add(row)
            s.flush()
            return _model(row)

    def model(self, org_id: str, model_id: str) -> ModelRow:
        """The model ``model_id`` of ``org_id``; ``NotFound`` otherwise."""
        with self.db.session(write=False) as s:
            row = s.get(TinkerModel, model_id)
            if row is None or row.org_id != org_id:
                raise NotFound(f"training run {model_id!r} not found", param="model_id")
            return _model(row)

    def models(self, org_id: str, *, limit: int, offset: int) -> tuple[list[ModelRow], int]:
        """The organisation's models, newest first, and their total count."""
        with self.db.session(write=False) as s:
            q = select(TinkerModel).where(TinkerModel.org_id == org_id)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(TinkerModel.created_at.desc()).offset(offset).limit(limit)).all()
            return [_model(r) for r in rows], int(total)

    def record_step(self, org_id: str, model_id: str, step: int, metrics: dict[str, float]) -> None:
        """The model's (and its run's) step counter, and the step's metrics on the run."""
        with self.db.session() as s:
            row = s.get(TinkerModel, model_id)
            if row is None or row.org_id != org_id:
                return
            row.step = step
            run = s.get(TrainingRun, row.run_id)
            if run is not None:
                run.step = step
                run.total_steps = max(run.total_steps, step)
            existing = s.scalars(select(RunMetric).where(RunMetric.run_id == row.run_id, RunMetric.step == step,
                                                         RunMetric.phase == "train")).first()
            if existing is None:
                s.add(RunMetric(org_id=org_id, run_id=row.run_id, step=step, phase="train", values=dict(metrics)))
            else:
                existing.values = dict(metrics)

    # ------------------------------------------------------------- checkpoints
    def _blob_key(self, org_id: str, path: TinkerPath) -> str:
        return f"tinker/{org_id}/{path.model_id.replace(':', '-')}/{path.kind}/{path.name}"

    def _expire(self, s: Any) -> None:
        now = utc_now()
        for row in s.scalars(select(TinkerCheckpoint).where(TinkerCheckpoint.expires_at < now)).all():
            self.blobs.delete(row.blob_key)
            s.delete(row)

    def _row(self, s: Any, org_id: str, path: TinkerPath, *, readable: bool = False) -> TinkerCheckpoint:
        row = s.scalars(select(TinkerCheckpoint).where(
            TinkerCheckpoint.model_id == path.model_id, TinkerCheckpoint.kind == path.kind,
            TinkerCheckpoint.name == path.name)).first()
        if row is None or (row.org_id != org_id and not (readable and row.public)):
            raise NotFound(f"checkpoint {path} not found", param="path")
        return row

    def save_checkpoint(self, org_id: str, path: TinkerPath, folder: Path, *, ttl_seconds: int | None,
                        overwrite: bool, user_metadata: dict[str, Any] | None) -> CheckpointRecord:
        """Store ``folder`` as checkpoint ``path`` (``Conflict`` if it exists and not ``overwrite``)."""
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise InvalidInput("ttl_seconds must be positive", param="ttl_seconds")
        self.model(org_id, path.model_id)
        with self.db.session(write=False) as s:
            old = s.scalars(select(TinkerCheckpoint).where(
                TinkerCheckpoint.model_id == path.model_id, TinkerCheckpoint.kind == path.kind,
                TinkerCheckpoint.name == path.name)).first()
            if old is not None and not overwrite:
                raise Conflict(f"checkpoint {path} already exists; save with overwrite=True to replace it",
                               param="path")
        key = self._blob_key(org_id, path)
        self.blobs.put_dir(key, folder, overwrite=True)
        with self.db.session() as s:
            row = s.scalars(select(TinkerCheckpoint).where(
                TinkerCheckpoint.model_id == path.model_id, TinkerCheckpoint.kind == path.kind,
                TinkerCheckpoint.name == path.name)).first()
            if row is None:
                row = TinkerCheckpoint(org_id=org_id, model_id=path.model_id, kind=path.kind, name=path.name)
                s.add(row)
            row.blob_key, row.size_bytes, row.created_at = key, _folder_size(folder), utc_now()
            row.user_metadata = dict(user_metadata or {})
            row.expires_at = utc_now() + timedelta(seconds=ttl_seconds) if ttl_seconds else None
            row.public, row.adapter_version_id = False, None
            s.flush()
            return _checkpoint(row)

    def checkpoint(self, org_id: str, path: TinkerPath, *, readable: bool = True) -> CheckpointRecord:
        """The checkpoint at ``path`` (own, or published when ``readable``); ``NotFound`` otherwise."""
        with self.db.session() as s:
            self._expire(s)
            return _checkpoint(self._row(s, org_id, path, readable=readable))

    def source_model(self, org_id: str, path: TinkerPath) -> ModelRow:
        """The model that saved the checkpoint at ``path`` (own, or a published checkpoint's)."""
        with self.db.session() as s:
            self._expire(s)
            self._row(s, org_id, path, readable=True)
            row = s.get(TinkerModel, path.model_id)
            if row is None:
                raise NotFound(f"checkpoint {path} not found", param="path")
            return _model(row)

    def fetch(self, org_id: str, path: TinkerPath, dest: Path) -> Path:
        """Copy the checkpoint's folder into ``dest``."""
        with self.db.session() as s:
            self._expire(s)
            key = self._row(s, org_id, path, readable=True).blob_key
        return self.blobs.get_dir(key, dest)

    def checkpoints(self, org_id: str, model_id: str | None, *, limit: int = 1000,
                    offset: int = 0) -> tuple[list[CheckpointRecord], int]:
        """Checkpoints of a model (or of the whole organisation), newest first, and their total count."""
        if model_id is not None:
            self.model(org_id, model_id)
        with self.db.session() as s:
            self._expire(s)
            q = select(TinkerCheckpoint).where(TinkerCheckpoint.org_id == org_id)
            if model_id is not None:
                q = q.where(TinkerCheckpoint.model_id == model_id)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(TinkerCheckpoint.created_at.desc()).offset(offset).limit(limit)).all()
            return [_checkpoint(r) for r in rows], int(total)

    def delete_checkpoint(self, org_id: str, path: TinkerPath) -> None:
        """Delete the checkpoint and its folder."""
        with self.db.session() as s:
            row = self._row(s, org_id, path)
            key = row.blob_key
            s.delete(row)
        self.blobs.delete(key)

    def set_public(self, org_id: str, path: TinkerPath, public: bool) -> CheckpointRecord:
        """Publish or unpublish a checkpoint (``Conflict`` when it already is)."""
        with self.db.session() as s:
            row = self._row(s, org_id, path)
            if row.public == public:
                raise Conflict(f"checkpoint {path} is already {'public' if public else 'private'}", param="path")
            row.public = public
            return _checkpoint(row)

    def set_ttl(self, org_id: str, path: TinkerPath, ttl_seconds: int | None) -> CheckpointRecord:
        """Expire the checkpoint ``ttl_seconds`` from now (None: never)."""
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise InvalidInput("ttl_seconds must be positive (or null to keep the checkpoint)", param="ttl_seconds")
        with self.db.session() as s:
            row = self._row(s, org_id, path)
            row.expires_at = utc_now() + timedelta(seconds=ttl_seconds) if ttl_seconds else None
            return _checkpoint(row)

    def publish_adapter(self, org_id: str, path: TinkerPath, *, name: str, actor: str) -> tuple[str, int]:
        """Publish the checkpoint's adapter as the next version of teachloop adapter ``name``; (id, version)."""
        if path.kind == "external_weights":
            raise InvalidInput(f"{path} is a merged model, not an adapter; publish a weights or sampler_weights "
                               "checkpoint", param="path")
        model = self.model(org_id, path.model_id)
        with tempfile.TemporaryDirectory(prefix="teachloop-tinker-publish-") as tmp:
            folder = self.fetch(org_id, path, Path(tmp) / "ckpt")
            adapter = folder / "adapter" if (folder / "adapter").is_dir() else folder
            with self.db.session() as s:
                version, _ = publish_adapter(
                    s, self.blobs, org_id, name=name, folder=adapter, base_model=model.base_model,
                    source_run_id=model.run_id, info={"tinker_path": str(path)}, actor=actor,
                )
                row = self._row(s, org_id, path)
                row.adapter_version_id = version.id
                return version.id, int(version.version)


__all__ = ["ModelRow", "Records", "SessionRow"]

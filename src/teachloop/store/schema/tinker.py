"""The Tinker-compatible API's records: client sessions, training models and checkpoints.

A ``TinkerSession`` is one SDK ``ServiceClient`` session (heartbeats refresh
``last_seen_at``; ``finish`` records how it ended). A ``TinkerModel`` is one
training model (a Tinker *training run*), keyed by the SDK's own id
``{session_id}:train:{n}`` and tied to the teachloop ``TrainingRun`` that makes
it visible in the run list. A ``TinkerCheckpoint`` points at the blob-store
folder of one saved checkpoint (``weights``: adapter + optimizer state;
``sampler_weights``: adapter; ``external_weights``: a merged model). Every row
belongs to an organisation. This module knows nothing of engines or the wire
protocol.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, Timestamps, id_column, ref_column

#: length of a Tinker model id (``{session id}:train:{n}``)
MODEL_ID_LENGTH = 80


class TinkerSession(OrgOwned, Timestamps, Base):
    """One SDK session (``create_session``)."""

    __tablename__ = "tinker_sessions"

    id: Mapped[str] = id_column("tses")
    tags: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    user_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    sdk_version: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="active")
    detail: Mapped[str | None] = mapped_column(Text)
    last_seen_at: Mapped[datetime | None]


class TinkerModel(OrgOwned, Timestamps, Base):
    """One training model (a Tinker training run)."""

    __tablename__ = "tinker_models"

    id: Mapped[str] = mapped_column(String(MODEL_ID_LENGTH), primary_key=True)
    session_id: Mapped[str] = ref_column("tinker_sessions.id")
    run_id: Mapped[str] = ref_column("training_runs.id")
    base_model: Mapped[str] = mapped_column(String(300))
    lora: Mapped[dict[str, Any]] = mapped_column(JSONType)
    user_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    step: Mapped[int] = mapped_column(Integer, default=0)


class TinkerCheckpoint(OrgOwned, Base):
    """A checkpoint saved through the Tinker API, in the blob store."""

    __tablename__ = "tinker_checkpoints"
    __table_args__ = (UniqueConstraint("model_id", "kind", "name"),)

    id: Mapped[str] = id_column("tckp")
    model_id: Mapped[str] = mapped_column(String(MODEL_ID_LENGTH), ForeignKey("tinker_models.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(128))
    blob_key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    user_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    adapter_version_id: Mapped[str | None] = mapped_column(String(40))
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


__all__ = ["MODEL_ID_LENGTH", "TinkerCheckpoint", "TinkerModel", "TinkerSession"]

"""Dataset tables: immutable snapshots of training data with row-level lineage.

- ``Dataset``: one snapshot, numbered ``version`` 1, 2, ... within
  ``(org_id, name)``. ``kind`` says what its rows are (``chat``: OpenAI chat
  rows for SFT; ``pairs``: DPO preference pairs; ``prompts``: prompts with a
  reference answer for RL). ``digest`` is the content digest of the whole
  snapshot (every row's content, split and lineage, in order); the rows are
  also stored as one JSONL blob under ``blob_key``. ``split_counts`` counts
  rows per split (``train``/``holdout``); ``licenses`` lists the distinct row
  licenses; ``source`` records how it was made (loop, iteration, curation
  figures; or the imported file). ``origin`` says who made it: ``loop`` (an
  iteration's snapshot), ``import`` (rows the organisation imported and owns)
  or ``labels`` (expert labels: every row carries its ``expert_id``).
- ``DatasetRow``: one row, with its lineage: which trace, dataset row, expert
  or environment version it came from, its score, and its license.
- ``DatasetGrant``: an entitlement -- the owning organisation (``org_id``)
  lets ``grantee_org_id`` use its dataset ``dataset_name`` (one ``version``,
  or every version when it is null) under ``license``, until ``revoked_at``.

Snapshots and rows are immutable once written: a new snapshot is a new
version. This module knows nothing of curation, training or blobs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, Integer, String, UniqueConstraint, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, id_column, ref_column, utc_now

DATASET_KINDS = ("chat", "pairs", "prompts")
DATASET_SPLITS = ("train", "holdout")
ROW_SOURCES = ("feedback", "correction", "grader", "expert", "dataset", "import", "upstream")  # upstream: issue 17
DATASET_ORIGINS = ("loop", "import", "labels")


class Dataset(OrgOwned, Base):
    """One immutable dataset snapshot."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("org_id", "name", "version"),
        Index("ix_datasets_org_digest", "org_id", "digest"),
    )

    id: Mapped[str] = id_column("ds")
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10))
    digest: Mapped[str] = mapped_column(String(71))
    blob_key: Mapped[str] = mapped_column(String(300))
    row_count: Mapped[int] = mapped_column(Integer)
    split_counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    licenses: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    source: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    origin: Mapped[str] = mapped_column(String(20), default="loop", server_default="loop")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"


class DatasetRow(OrgOwned, Base):
    """One row of a snapshot and where it came from."""

    __tablename__ = "dataset_rows"
    __table_args__ = (UniqueConstraint("dataset_id", "position"),)

    id: Mapped[str] = id_column("dsr")
    dataset_id: Mapped[str] = ref_column("datasets.id")
    position: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(10))
    content: Mapped[dict[str, Any]] = mapped_column(JSONType)
    content_hash: Mapped[str] = mapped_column(String(71))
    source_kind: Mapped[str] = mapped_column(String(20))
    source_trace_id: Mapped[str | None] = ref_column("traces.id", nullable=True)
    source_row_id: Mapped[str | None] = ref_column("dataset_rows.id", nullable=True)
    expert_id: Mapped[str | None] = mapped_column(String(200))
    env_ref: Mapped[str | None] = mapped_column(String(300))
    env_version: Mapped[str | None] = mapped_column(String(100))
    env_digest: Mapped[str | None] = mapped_column(String(71))
    score: Mapped[float | None] = mapped_column(Float)
    license: Mapped[str] = mapped_column(String(100))


class DatasetGrant(OrgOwned, Base):
    """An entitlement: ``grantee_org_id`` may use the owner's (``org_id``) dataset under ``license``."""

    __tablename__ = "dataset_grants"
    __table_args__ = (Index("ix_dataset_grants_grantee_name", "grantee_org_id", "org_id", "dataset_name"),)

    id: Mapped[str] = id_column("dsg")
    dataset_name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int | None] = mapped_column(Integer)
    grantee_org_id: Mapped[str] = ref_column("organisations.id")
    license: Mapped[str] = mapped_column(String(100))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    revoked_at: Mapped[datetime | None]

    def covers(self, version: int) -> bool:
        """Whether the grant covers ``version`` of its dataset (and is not revoked)."""
        return self.revoked_at is None and (self.version is None or self.version == version)


def _refuse(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    raise PermissionError(f"{type(target).__name__} rows are immutable; refusing to change {target.id}")


for _immutable in (Dataset, DatasetRow):
    event.listen(_immutable, "before_update", _refuse)
    event.listen(_immutable, "before_delete", _refuse)


__all__ = ["DATASET_KINDS", "DATASET_ORIGINS", "DATASET_SPLITS", "ROW_SOURCES", "Dataset", "DatasetGrant",
           "DatasetRow"]

"""Dataset snapshots: encode, record and read immutable datasets with row-level lineage.

``encode_snapshot(kind, rows)`` is pure: it turns rows (content, split and
lineage) into the snapshot's canonical JSONL bytes and their digest
(``sha256:<hex>`` of those bytes), so the same rows in the same order always
give the same digest. The caller writes the bytes to the blob store
(``blobs.put_content``) *before* ``Datasets.create`` records the snapshot --
the database row is the commit point.

``Datasets(session)`` works inside a caller-owned session and never commits.
``create`` numbers versions 1, 2, ... per ``(org, name)``; recording rows whose
digest that name already has returns the existing version (idempotent).
Snapshots are never changed: the schema refuses updates and deletes. A
reference is ``name@N``, a bare ``name`` (its newest version) or a ``ds_...``
id; another organisation's dataset is ``NotFound`` like a missing one.

Every snapshot has an ``origin``: ``loop`` (an iteration's curated rows),
``import`` (rows the organisation imported; lineage ``source_kind = "import"``
and the license it declared) or ``labels`` (expert labels: ``expert_label``
builds such a row -- ``source_kind = "expert"`` and the expert's id -- and any
writer, the CLI import today and the workforce package later, records them
with ``create(..., origin="labels")``).

Licensed datasets: the owner records a grant (``grant``) letting another
organisation use a dataset (one version or all) under a license.
``resolve_usable(org, "OWNER/NAME[@N]")`` finds such a dataset only when an
active grant covers it; without one the error is the same ``NotFound`` as for
a dataset that does not exist, so nothing about it can be inferred. This
module knows nothing of curation, blobs or training.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.ids import is_id
from teachloop.core.rl import content_hash
from teachloop.store.repos.audit import AuditLog
from teachloop.store.repos.deployments import check_name
from teachloop.store.repos.tenancy import Tenancy
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.datasets import (
    DATASET_KINDS,
    DATASET_ORIGINS,
    DATASET_SPLITS,
    ROW_SOURCES,
    Dataset,
    DatasetGrant,
    DatasetRow,
)


@dataclass(frozen=True)
class NewRow:
    """One row of a snapshot to record, with its lineage.

    Attributes:
        content: the row itself (``{"messages": [...]}``, ``{"prompt", "chosen", "rejected"}``,
            or ``{"messages": [...], "answer": ...}`` for prompts).
        split: ``train`` or ``holdout``.
        source_kind: ``feedback``, ``correction``, ``grader``, ``expert``, ``dataset`` or ``import``.
        source_trace_id: the trace it came from.
        source_row_id: the dataset row it was copied from.
        expert_id: the expert who wrote or graded it.
        env_ref: the environment that scored it (reference as resolved).
        env_version: that environment's version.
        env_digest: that environment's content digest.
        score: the score that qualified it.
        license: the license it is used under (an SPDX id or ``LicenseRef-...``).
    """

    content: dict[str, Any]
    split: str
    source_kind: str
    source_trace_id: str | None = None
    source_row_id: str | None = None
    expert_id: str | None = None
    env_ref: str | None = None
    env_version: str | None = None
    env_digest: str | None = None
    score: float | None = None
    license: str = "LicenseRef-proprietary"

    def lineage(self) -> dict[str, Any]:
        """Everything but the content and split."""
        out = asdict(self)
        del out["content"], out["split"]
        return out


def expert_label(content: dict[str, Any], expert_id: str, *, license: str, split: str = "train",
                 score: float | None = None, source_trace_id: str | None = None) -> NewRow:
    """One expert label as a dataset row: ``source_kind = "expert"`` with the expert's id and the license.

    The shape every writer of label datasets uses (``create(..., origin="labels")``), so the loop's
    ``labels`` source reads them all alike.
    """
    if not isinstance(expert_id, str) or not expert_id.strip():
        raise InvalidInput("an expert label needs a non-empty expert_id", param="expert_id")
    return NewRow(content=content, split=split, source_kind="expert", source_trace_id=source_trace_id,
                  expert_id=expert_id.strip()[:200], score=score, license=license)


def encode_snapshot(kind: str, rows: Sequence[NewRow]) -> tuple[bytes, str]:
    """(canonical JSONL bytes, ``sha256:`` digest of them): one line per row with split, content and lineage."""
    if kind not in DATASET_KINDS:
        raise InvalidInput(f"dataset kind must be one of {', '.join(DATASET_KINDS)}, got {kind!r}", param="kind")
    lines = []
    for row in rows:
        line = {"split": row.split, "content": row.content, "lineage": row.lineage()}
        lines.append(json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    data = ("\n".join(lines) + "\n").encode() if lines else b""
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def decode_snapshot(data: bytes) -> list[NewRow]:
    """The rows of a snapshot's JSONL (inverse of ``encode_snapshot``)."""
    out = []
    for line in data.decode().splitlines():
        if line.strip():
            raw = json.loads(line)
            out.append(NewRow(content=raw["content"], split=raw["split"], **raw["lineage"]))
    return out


class Datasets:
    """Immutable dataset snapshots within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)

    def create(
        self,
        org_id: str,
        *,
        name: str,
        kind: str,
        rows: Sequence[NewRow],
        blob_key: str,
        source: dict[str, Any] | None = None,
        actor: str = "system",
        origin: str = "loop",
    ) -> tuple[Dataset, bool]:
        """Record a snapshot of ``rows`` as the next version of ``name``; returns (row, created).

        Write ``encode_snapshot(kind, rows)[0]`` to the blob store under ``blob_key`` first. A name
        keeps one origin: a version of another origin is refused. ``labels`` rows must all be
        ``expert_label`` rows.
        """
        check_name(name)
        if origin not in DATASET_ORIGINS:
            raise InvalidInput(f"dataset origin must be one of {', '.join(DATASET_ORIGINS)}, got {origin!r}",
                               param="origin")
        if not rows:
            raise InvalidInput("a dataset snapshot needs at least one row", param="rows")
        if origin == "labels":
            for i, row in enumerate(rows):
                if row.source_kind != "expert" or not row.expert_id:
                    raise InvalidInput(f"row {i}: a label dataset holds expert labels only (source_kind expert "
                                       "with an expert_id)", param="expert_id")
        previous = self.session.scalar(
            select(Dataset.origin).where(Dataset.org_id == org_id, Dataset.name == name).limit(1)
        )
        if previous is not None and previous != origin:
            raise InvalidInput(f"dataset {name!r} holds {previous} snapshots; choose another name for {origin} rows",
                               param="name")
        for i, row in enumerate(rows):
            if row.split not in DATASET_SPLITS:
                raise InvalidInput(f"row {i}: split must be train or holdout, got {row.split!r}", param="split")
            if row.source_kind not in ROW_SOURCES:
                raise InvalidInput(f"row {i}: source_kind must be one of {', '.join(ROW_SOURCES)}", param="source_kind")
            if not row.license:
                raise InvalidInput(f"row {i} has no license", param="license")
        _, digest = encode_snapshot(kind, rows)
        existing = self.session.scalar(
            select(Dataset).where(Dataset.org_id == org_id, Dataset.name == name, Dataset.digest == digest)
        )
        if existing is not None:
            return existing, False
        latest = self.session.scalar(
            select(func.max(Dataset.version)).where(Dataset.org_id == org_id, Dataset.name == name)
        )
        splits = {s: sum(1 for r in rows if r.split == s) for s in DATASET_SPLITS}
        dataset = Dataset(
            org_id=org_id, name=name, version=int(latest or 0) + 1, kind=kind, digest=digest, blob_key=blob_key,
            row_count=len(rows), split_counts=splits, licenses=sorted({r.license for r in rows}),
            source=dict(source or {}), created_by=actor, origin=origin,
        )
        self.session.add(dataset)
        self.session.flush()
        self.session.add_all(
            DatasetRow(
                org_id=org_id, dataset_id=dataset.id, position=i, split=r.split, content=r.content,
                content_hash=content_hash(r.content), source_kind=r.source_kind, source_trace_id=r.source_trace_id,
                source_row_id=r.source_row_id, expert_id=r.expert_id, env_ref=r.env_ref, env_version=r.env_version,
                env_digest=r.env_digest, score=r.score, license=r.license,
            )
            for i, r in enumerate(rows)
        )
        self.session.flush()
        self.audit.record(org_id, actor, "dataset.create", dataset.id,
                          {"ref": dataset.ref, "digest": digest, "rows": len(rows)})
        return dataset, True

    def get(self, org_id: str, dataset_id: str) -> Dataset:
        """The organisation's dataset with this id; ``NotFound`` otherwise."""
        row = self.session.get(Dataset, dataset_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"dataset {dataset_id!r} not found", param="dataset")
        return row

    def resolve(self, org_id: str, ref: str) -> Dataset:
        """The dataset ``ref`` names: ``ds_...``, ``name@N`` or ``name`` (newest); ``NotFound`` otherwise."""
        ref = (ref or "").strip()
        if is_id(ref, "ds"):
            return self.get(org_id, ref)
        name, _, pin = ref.partition("@")
        check_name(name, "dataset")
        query = select(Dataset).where(Dataset.org_id == org_id, Dataset.name == name)
        if pin:
            if not pin.isdigit():
                raise InvalidInput(f"dataset version must be a number: {ref!r} (use NAME@N)", param="dataset")
            row = self.session.scalar(query.where(Dataset.version == int(pin)))
        else:
            row = self.session.scalar(query.order_by(Dataset.version.desc()).limit(1))
        if row is None:
            raise NotFound(f"dataset {ref!r} not found", param="dataset")
        return row

    def resolve_usable(self, org_id: str, ref: str) -> tuple[Dataset, DatasetGrant | None]:
        """A dataset ``org_id`` may train on: its own (``resolve``), or ``OWNER/NAME[@N]`` under a grant.

        Returns (dataset, the grant or None for an own dataset). Without an active grant covering
        the version, ``NotFound`` -- the same error as for a dataset that does not exist.
        """
        ref = (ref or "").strip()
        owner, slash, rest = ref.partition("/")
        if not slash:
            return self.resolve(org_id, ref), None
        missing = NotFound(f"dataset {ref!r} not found", param="dataset")
        try:
            owner_id = Tenancy(self.session).find_org(owner).id
        except (NotFound, InvalidInput):
            raise missing from None
        if owner_id == org_id:
            return self.resolve(org_id, rest), None
        try:
            dataset = self.resolve(owner_id, rest)
        except (NotFound, InvalidInput):
            raise missing from None
        grant = self.grant_for(org_id, dataset)
        if grant is None:
            raise missing
        return dataset, grant

    def grant_for(self, org_id: str, dataset: Dataset) -> DatasetGrant | None:
        """The active grant letting ``org_id`` use ``dataset`` (another organisation's), or None."""
        grants = self.session.scalars(select(DatasetGrant).where(
            DatasetGrant.org_id == dataset.org_id, DatasetGrant.grantee_org_id == org_id,
            DatasetGrant.dataset_name == dataset.name, DatasetGrant.revoked_at.is_(None),
        ).order_by(DatasetGrant.created_at))
        return next((g for g in grants if g.covers(dataset.version)), None)

    def grant(self, org_id: str, name: str, grantee_org_id: str, *, license: str, version: int | None = None,
              actor: str = "system") -> DatasetGrant:
        """Let ``grantee_org_id`` use the organisation's dataset ``name`` (``version``, or every version)."""
        check_name(name, "dataset")
        if not license or len(license) > 100:
            raise InvalidInput("a grant needs a license (SPDX id or LicenseRef-..., at most 100 characters)",
                               param="license")
        query = select(Dataset.id).where(Dataset.org_id == org_id, Dataset.name == name)
        if version is not None:
            query = query.where(Dataset.version == version)
        if self.session.scalar(query.limit(1)) is None:
            raise NotFound(f"dataset {name}{'' if version is None else f'@{version}'} not found", param="dataset")
        Tenancy(self.session).get_org(grantee_org_id)
        if grantee_org_id == org_id:
            raise InvalidInput("an organisation needs no grant to use its own dataset", param="org")
        row = DatasetGrant(org_id=org_id, dataset_name=name, version=version, grantee_org_id=grantee_org_id,
                           license=license, created_by=actor)
        self.session.add(row)
        self.session.flush()
        self.audit.record(org_id, actor, "dataset.grant", row.id, {"dataset": name, "version": version,
                                                                   "grantee_org_id": grantee_org_id,
                                                                   "license": license})
        return row

    def revoke(self, org_id: str, grant_id: str, *, actor: str = "system") -> DatasetGrant:
        """End a grant of the organisation (loops of the grantee that name the dataset pause)."""
        row = self.session.get(DatasetGrant, grant_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"grant {grant_id!r} not found", param="grant")
        if row.revoked_at is None:
            row.revoked_at = utc_now()
            self.session.flush()
            self.audit.record(org_id, actor, "dataset.revoke", row.id, {"dataset": row.dataset_name})
        return row

    def grants(self, org_id: str, name: str | None = None) -> builtins.list[DatasetGrant]:
        """The grants the organisation gave (of dataset ``name``), oldest first."""
        query = select(DatasetGrant).where(DatasetGrant.org_id == org_id)
        if name is not None:
            query = query.where(DatasetGrant.dataset_name == name)
        return list(self.session.scalars(query.order_by(DatasetGrant.created_at, DatasetGrant.id)))

    def label_datasets(self, org_id: str) -> builtins.list[Dataset]:
        """The newest version of each of the organisation's label datasets (``origin = "labels"``)."""
        rows = self.session.scalars(select(Dataset).where(Dataset.org_id == org_id, Dataset.origin == "labels")
                                    .order_by(Dataset.name, Dataset.version.desc()))
        newest: dict[str, Dataset] = {}
        for d in rows:
            newest.setdefault(d.name, d)
        return list(newest.values())

    def first_seen(self, dataset: Dataset) -> dict[str, datetime]:
        """For each row content of ``dataset``: when a version of its name first held it (its arrival time)."""
        found = self.session.execute(
            select(DatasetRow.content_hash, func.min(Dataset.created_at))
            .join(Dataset, Dataset.id == DatasetRow.dataset_id)
            .where(Dataset.org_id == dataset.org_id, Dataset.name == dataset.name, Dataset.version <= dataset.version)
            .group_by(DatasetRow.content_hash)
        ).all()
        return {h: when for h, when in found}

    def list(self, org_id: str, name: str | None = None, *, limit: int = 200) -> list[Dataset]:
        """The organisation's snapshots (of ``name``), newest first."""
        query = select(Dataset).where(Dataset.org_id == org_id)
        if name is not None:
            query = query.where(Dataset.name == name)
        return list(self.session.scalars(query.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)))

    def rows(self, org_id: str, dataset_id: str, split: str | None = None) -> builtins.list[DatasetRow]:
        """The rows of a snapshot in order (of one split when given): an own or a granted dataset."""
        row = self.session.get(Dataset, dataset_id)
        if row is None or (row.org_id != org_id and self.grant_for(org_id, row) is None):
            raise NotFound(f"dataset {dataset_id!r} not found", param="dataset")
        if split is not None and split not in DATASET_SPLITS:
            raise InvalidInput(f"split must be train or holdout, got {split!r}", param="split")
        query = select(DatasetRow).where(DatasetRow.dataset_id == dataset_id)
        if split is not None:
            query = query.where(DatasetRow.split == split)
        return list(self.session.scalars(query.order_by(DatasetRow.position)))

    def with_trace(self, org_id: str, trace_id: str) -> builtins.list[Dataset]:
        """The snapshots that hold a row made from ``trace_id`` (lineage queries)."""
        ids = select(DatasetRow.dataset_id).where(DatasetRow.org_id == org_id, DatasetRow.source_trace_id == trace_id)
        return list(self.session.scalars(select(Dataset).where(Dataset.id.in_(ids)).order_by(Dataset.created_at)))


def new_row_of(row: DatasetRow) -> NewRow:
    """A stored row as a ``NewRow`` (to recompute a digest or copy it into another snapshot)."""
    return NewRow(content=dict(row.content), split=row.split, source_kind=row.source_kind,
                  source_trace_id=row.source_trace_id, source_row_id=row.source_row_id, expert_id=row.expert_id,
                  env_ref=row.env_ref, env_version=row.env_version, env_digest=row.env_digest, score=row.score,
                  license=row.license)


__all__ = ["Datasets", "NewRow", "decode_snapshot", "encode_snapshot", "expert_label", "new_row_of"]

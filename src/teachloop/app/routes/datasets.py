"""``/api/datasets``: dataset snapshots, their rows with lineage, imports and grants.

- ``GET /api/datasets`` (``?name=``), ``GET /api/datasets/{ref}``, ``GET
  /api/datasets/{ref}/rows`` (``?split=&offset=&limit=``): snapshots and their
  rows with lineage. ``{ref}`` is ``NAME@N``, ``NAME`` or a ``ds_...`` id.
- ``POST /api/datasets``: import rows the organisation owns, or expert labels
  (``DatasetImport``: ``rows`` or ``jsonl``) -- ``teachloop data import``; a
  bad row is refused with its line named, nothing written. 201 for a new
  version, 200 when the same rows were imported before.
- ``GET|POST /api/datasets/{name}/grants``, ``DELETE
  /api/datasets/{name}/grants/{grant_id}``: entitlements letting another
  organisation use a dataset (its loops name it ``OWNER/NAME[@N]``).

Every route is scoped to the caller's organisation; reads need a viewer key,
imports a member key, grants an admin key. The services live in
``catalog.imports`` and ``store.repos.datasets``; this module knows HTTP and
the request and response models only.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from teachloop.app.auth import Admin, Deps, Member, Viewer
from teachloop.catalog.export import dataset_json, grant_json, row_json
from teachloop.catalog.imports import check_license, import_dataset, read_jsonl
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.ids import is_id
from teachloop.store.repos.datasets import Datasets

router = APIRouter(prefix="/api", tags=["datasets"])


class _Strict(BaseModel):
    """Unknown fields and wrong types are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class DatasetImport(_Strict):
    """Rows to import as the next version of a dataset: give either ``rows`` or ``jsonl``."""

    name: str = Field(description="The dataset's name (the version number is assigned).")
    license: str = Field(description="SPDX id or expression (CC-BY-4.0, MIT OR Apache-2.0) or LicenseRef-....")
    format: str = Field(default="openai", description="openai (chat rows or preference pairs) or dpo (TRL pairs).")
    kind: str = Field(default="rows", description="rows (data the organisation owns) or labels (expert labels).")
    rows: list[Any] | None = Field(default=None, description="The rows, as JSON objects.")
    jsonl: str | None = Field(default=None, description="The rows as JSON Lines text.")


class GrantCreate(_Strict):
    """A grant of a dataset to another organisation."""

    org: str = Field(description="The grantee organisation's id (org_...; its members read it from GET /api/whoami).")
    license: str = Field(description="The license the grantee uses it under (SPDX id or LicenseRef-...).")
    version: int | None = Field(default=None, ge=1, description="One version; null grants every version.")


class DatasetOut(BaseModel):
    """A dataset snapshot's record (immutable)."""

    id: str = Field(description="Snapshot id (ds_...).")
    ref: str = Field(description="NAME@N.")
    name: str = Field(description="The dataset's name.")
    version: int = Field(description="The version number (1, 2, ...).")
    kind: str = Field(description="What its rows hold: chat, prompts or pairs.")
    digest: str = Field(description="sha256 over its rows' content and lineage.")
    rows: int = Field(description="How many rows it holds.")
    splits: dict[str, int] = Field(description="Rows per split (train, eval).")
    licenses: list[str] = Field(description="The licenses of its rows.")
    source: dict[str, Any] = Field(description="How it was made (an import, a loop iteration's curation, ...).")
    origin: str = Field(description="Where it came from: loop, import, labels, ...")
    blob_key: str = Field(description="Where its rows are stored in the blob store.")
    created_by: str = Field(description="The key or process that made it.")
    created_at: datetime = Field(description="When it was made.")


class DatasetImported(DatasetOut):
    """The snapshot an import made (or found)."""

    created: bool = Field(description="False when the same rows were already the newest version (nothing written).")


class DatasetList(BaseModel):
    """Dataset snapshots, newest first."""

    data: list[DatasetOut] = Field(description="The snapshots.")


class RowLineage(BaseModel):
    """Where a row came from."""

    source_kind: str = Field(description="trace, import, label, env, ...")
    source_trace_id: str | None = Field(description="The served trace it was made from.")
    source_row_id: str | None = Field(description="The row of another snapshot it was copied from.")
    expert_id: str | None = Field(description="The expert who labelled it.")
    env_ref: str | None = Field(description="The environment that graded it.")
    env_version: str | None = Field(description="That environment's version.")
    env_digest: str | None = Field(description="That environment's digest.")
    score: float | None = Field(description="Its reward or grade.")
    license: str = Field(description="The license it is used under.")


class DatasetRowOut(BaseModel):
    """One row of a snapshot."""

    id: str = Field(description="Row id (dsr_...).")
    position: int = Field(description="Its position in the snapshot.")
    split: str = Field(description="train or eval.")
    content: dict[str, Any] = Field(description="The row: messages, a prompt, or a preference pair.")
    content_hash: str = Field(description="sha256 of the content.")
    lineage: RowLineage


class DatasetRows(BaseModel):
    """A page of a snapshot's rows."""

    data: list[DatasetRowOut] = Field(description="The rows from offset, at most limit.")
    total: int = Field(description="Rows in the snapshot (in the split, when one is named).")


class GrantOut(BaseModel):
    """A grant (entitlement) as its owner sees it."""

    id: str = Field(description="Grant id (dsg_...).")
    dataset: str = Field(description="The dataset's name.")
    version: int | None = Field(description="The granted version; null for every version.")
    grantee_org_id: str = Field(description="The organisation that may use it.")
    license: str = Field(description="The license it is used under.")
    created_by: str = Field(description="The key that made the grant.")
    created_at: datetime = Field(description="When it was made.")
    revoked_at: datetime | None = Field(description="When it ended, if it has.")


class GrantList(BaseModel):
    """The grants of a dataset."""

    data: list[GrantOut] = Field(description="The grants, revoked ones included.")


@router.get("/datasets", response_model=DatasetList)
def list_datasets(principal: Viewer, deps: Deps, name: str | None = None,
                  limit: int = Query(100, ge=1, le=1000)) -> DatasetList:
    """The organisation's dataset snapshots, newest first."""
    with deps.database.session(write=False) as s:
        rows = [dataset_json(d) for d in Datasets(s).list(principal.org_id, name, limit=limit)]
    return DatasetList(data=[DatasetOut.model_validate(d) for d in rows])


@router.get("/datasets/{ref}", response_model=DatasetOut)
def get_dataset(ref: str, principal: Viewer, deps: Deps) -> DatasetOut:
    """One snapshot's record (digest, counts, licenses, how it was made)."""
    with deps.database.session(write=False) as s:
        return DatasetOut.model_validate(dataset_json(Datasets(s).resolve(principal.org_id, ref)))


@router.get("/datasets/{ref}/rows", response_model=DatasetRows)
def dataset_rows(ref: str, principal: Viewer, deps: Deps, split: str | None = None,
                 offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> DatasetRows:
    """Rows of a snapshot with their lineage, in order."""
    with deps.database.session(write=False) as s:
        repo = Datasets(s)
        dataset = repo.resolve(principal.org_id, ref)
        rows = repo.rows(principal.org_id, dataset.id, split)
        page = [row_json(r) for r in rows[offset : offset + limit]]
    return DatasetRows(data=[DatasetRowOut.model_validate(r) for r in page], total=len(rows))


@router.post("/datasets", status_code=201, response_model=DatasetImported,
             responses={200: {"model": DatasetImported, "description": "The same rows were imported before."}})
async def import_rows(body: DatasetImport, principal: Member, deps: Deps, response: Response) -> DatasetImported:
    """Import rows (or expert labels) as the next immutable version of a dataset the organisation owns."""
    if (body.rows is None) == (body.jsonl is None):
        raise InvalidInput("give the rows as either rows (a list of objects) or jsonl (a string)", param="rows")
    if body.rows is not None:
        records, param = list(enumerate(body.rows, start=1)), "rows"
    else:
        records, param = read_jsonl(body.jsonl or "", param="jsonl"), "jsonl"
    dataset, created = await asyncio.to_thread(
        import_dataset, deps.database, deps.blobs, principal.org_id, records, name=body.name,
        license=body.license, fmt=body.format, kind=body.kind, actor=principal.key_id, param=param)
    response.status_code = 201 if created else 200
    return DatasetImported.model_validate({**dataset_json(dataset), "created": created})


@router.get("/datasets/{name}/grants", response_model=GrantList)
def list_grants(name: str, principal: Viewer, deps: Deps) -> GrantList:
    """The grants the organisation gave on dataset ``name``."""
    with deps.database.session(write=False) as s:
        grants = [grant_json(g) for g in Datasets(s).grants(principal.org_id, name)]
    return GrantList(data=[GrantOut.model_validate(g) for g in grants])


@router.post("/datasets/{name}/grants", status_code=201, response_model=GrantOut)
def create_grant(name: str, body: GrantCreate, principal: Admin, deps: Deps) -> GrantOut:
    """Let another organisation use dataset ``name`` (one version, or all) under a license.

    The grantee is named by its organisation id (``org_...``, which its members read from
    ``GET /api/whoami``), never by name: ids are unguessable, so the answer (201 or 404) tells
    nobody whether an organisation called X exists.
    """
    if not is_id(body.org, "org"):
        raise InvalidInput("org must be the grantee organisation's id (org_...; its members see it in "
                           "GET /api/whoami)", param="org")
    license = check_license(body.license)
    with deps.database.session() as s:  # the grant looks up the dataset first, then the grantee
        grant = Datasets(s).grant(principal.org_id, name, body.org, license=license, version=body.version,
                                  actor=principal.key_id)
        return GrantOut.model_validate(grant_json(grant))


@router.delete("/datasets/{name}/grants/{grant_id}", response_model=GrantOut)
def revoke_grant(name: str, grant_id: str, principal: Admin, deps: Deps) -> GrantOut:
    """End a grant of dataset ``name``."""
    with deps.database.session() as s:
        repo = Datasets(s)
        if not any(g.id == grant_id for g in repo.grants(principal.org_id, name)):
            raise NotFound(f"grant {grant_id!r} not found", param="grant")
        return GrantOut.model_validate(grant_json(repo.revoke(principal.org_id, grant_id, actor=principal.key_id)))


__all__ = [
    "DatasetImport",
    "DatasetImported",
    "DatasetList",
    "DatasetOut",
    "DatasetRowOut",
    "DatasetRows",
    "GrantCreate",
    "GrantList",
    "GrantOut",
    "RowLineage",
    "router",
]

"""The loop and dataset REST API under ``/api``.

- ``GET /api/loops``; ``PUT /api/loops/{deployment}`` (the loop config as
  JSON; refused with the field named, nothing changed, when invalid or when it
  names a missing deployment, environment or dataset); ``GET
  /api/loops/{deployment}`` (status: phase, serving state, online figures,
  latest iteration); ``GET /api/loops/{deployment}/iterations``;
  ``POST /api/loops/{deployment}/pause|resume``; ``POST
  /api/loops/{deployment}/tick`` (queue one tick for the worker).
- ``GET /api/datasets`` (``?name=``), ``GET /api/datasets/{ref}``, ``GET
  /api/datasets/{ref}/rows`` (``?split=&offset=&limit=``): snapshots and their
  rows with lineage. ``{ref}`` is ``NAME@N``, ``NAME`` or a ``ds_...`` id.
- ``POST /api/datasets``: import rows the organisation owns, or expert
  labels (``{"name", "license", "format": "openai"|"dpo", "kind":
  "rows"|"labels", "rows": [...]}`` or ``"jsonl": "..."`` instead of
  ``rows``) -- ``teachloop data import``; a bad row is refused with its line
  named, nothing written.
- ``GET|POST /api/datasets/{name}/grants``, ``DELETE
  /api/datasets/{name}/grants/{grant_id}``: entitlements letting another
  organisation use a dataset (its loops name it ``OWNER/NAME[@N]``).

Every route is scoped to the caller's organisation; reads need a viewer key,
imports a member key, grants an admin key. The app authenticates first (``request.state.principal``)
and keeps its dependencies on ``app.state.deps`` (``database``, ``blobs``,
``settings``, ``queue``); this module reads them there and never imports the
app. It knows HTTP shapes only.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from teachloop.catalog.export import dataset_json, grant_json, row_json
from teachloop.catalog.imports import check_license, import_dataset, read_jsonl
from teachloop.core.errors import InvalidInput, NotFound, ServiceUnavailable, Unauthorized
from teachloop.core.ids import is_id
from teachloop.core.tenancy import Principal, Role
from teachloop.loop import service
from teachloop.store.db import Database
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.deployments import Deployments
from teachloop.store.repos.loops import Loops

router = APIRouter(prefix="/api", tags=["loop"])


def _principal(request: Request, role: Role, action: str) -> Principal:
    from teachloop.core.errors import Forbidden

    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise Unauthorized("this route needs an API key (Authorization: Bearer <key>)")
    if not principal.role.at_least(role):
        raise Forbidden(f"{action} needs the {role.value} role or higher; this key has {principal.role.value}")
    return principal


def reader(request: Request) -> Principal:
    """The caller, at least a viewer."""
    return _principal(request, Role.VIEWER, "reading loops and datasets")


def writer(request: Request) -> Principal:
    """The caller, at least a member."""
    return _principal(request, Role.MEMBER, "changing a loop or importing a dataset")


def admin(request: Request) -> Principal:
    """The caller, at least an admin."""
    return _principal(request, Role.ADMIN, "granting a dataset to another organisation")


class _Ctx:
    def __init__(self, request: Request) -> None:
        deps = getattr(request.app.state, "deps", None)
        database = getattr(deps, "database", None)
        if not isinstance(database, Database):
            raise ServiceUnavailable("the loop API is not configured on this server")
        self.database: Database = database
        self.blobs = deps.blobs  # type: ignore[union-attr]
        self.settings = deps.settings  # type: ignore[union-attr]
        self.queue = deps.queue  # type: ignore[union-attr]


Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]
Admin = Annotated[Principal, Depends(admin)]
Ctx = Annotated[_Ctx, Depends(_Ctx)]


@router.get("/loops")
def list_loops(principal: Reader, ctx: Ctx) -> dict[str, Any]:
    """The organisation's loops."""
    with ctx.database.session(write=False) as s:
        deps = {d.id: d.name for d in Deployments(s).list(principal.org_id)}
        return {"data": [service.loop_json(lp, deps.get(lp.deployment_id, "?")) for lp in Loops(s).list(principal.org_id)]}


@router.put("/loops/{deployment}")
async def put_loop(deployment: str, principal: Writer, ctx: Ctx,
                   body: dict[str, Any] = Body(..., description="The loop config (see docs/loop.md).")) -> dict[str, Any]:
    """Create or replace the loop of ``deployment``; a bad config is refused with the field named."""
    given = body.get("deployment", deployment)
    if given != deployment:
        raise InvalidInput(f"config field deployment: {given!r} does not match the path's {deployment!r}",
                           param="deployment")
    raw = {**body, "deployment": deployment}
    out, created = await asyncio.to_thread(
        service.configure_loop, ctx.database, ctx.blobs, principal.org_id, raw,
        cache=ctx.settings.home / "envs", actor=principal.key_id)
    return {**out, "created": created}


@router.get("/loops/{deployment}")
def get_loop(deployment: str, principal: Reader, ctx: Ctx) -> dict[str, Any]:
    """The loop's status: phase, what the deployment serves, online figures, latest iteration."""
    return service.status(ctx.database, principal.org_id, deployment)


@router.get("/loops/{deployment}/iterations")
def list_iterations(deployment: str, principal: Reader, ctx: Ctx,
                    limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
    """Every iteration, newest first: data, run, eval figures, decision and reason."""
    return {"data": service.history(ctx.database, principal.org_id, deployment, limit=limit)}


@router.post("/loops/{deployment}/pause")
def pause_loop(deployment: str, principal: Writer, ctx: Ctx) -> dict[str, Any]:
    """Stop starting iterations (a candidate in canary or watch is still judged when resumed)."""
    return service.set_enabled(ctx.database, principal.org_id, deployment, False)


@router.post("/loops/{deployment}/resume")
def resume_loop(deployment: str, principal: Writer, ctx: Ctx) -> dict[str, Any]:
    """Start ticking again."""
    return service.set_enabled(ctx.database, principal.org_id, deployment, True)


@router.post("/loops/{deployment}/tick", status_code=202)
def tick_loop(deployment: str, principal: Writer, ctx: Ctx) -> dict[str, Any]:
    """Queue one tick of the loop for a worker (the worker queues the following ones)."""
    with ctx.database.session(write=False) as s:
        service.find_loop(s, principal.org_id, deployment)
    return {"job_id": service.enqueue_tick(ctx.queue, principal.org_id, deployment)}


@router.get("/datasets")
def list_datasets(principal: Reader, ctx: Ctx, name: str | None = None,
                  limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    """The organisation's dataset snapshots, newest first."""
    with ctx.database.session(write=False) as s:
        return {"data": [dataset_json(d) for d in Datasets(s).list(principal.org_id, name, limit=limit)]}


@router.get("/datasets/{ref}")
def get_dataset(ref: str, principal: Reader, ctx: Ctx) -> dict[str, Any]:
    """One snapshot's record (digest, counts, licenses, how it was made)."""
    with ctx.database.session(write=False) as s:
        return dataset_json(Datasets(s).resolve(principal.org_id, ref))


@router.get("/datasets/{ref}/rows")
def dataset_rows(ref: str, principal: Reader, ctx: Ctx, split: str | None = None,
                 offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    """Rows of a snapshot with their lineage, in order."""
    with ctx.database.session(write=False) as s:
        repo = Datasets(s)
        dataset = repo.resolve(principal.org_id, ref)
        rows = repo.rows(principal.org_id, dataset.id, split)
        return {"data": [row_json(r) for r in rows[offset : offset + limit]], "total": len(rows)}


@router.post("/datasets")
async def import_rows(principal: Writer, ctx: Ctx, response: Response,
                      body: dict[str, Any] = Body(..., description="name, license, format, kind, rows | jsonl.")
                      ) -> dict[str, Any]:
    """Import rows (or expert labels) as the next immutable version of a dataset the organisation owns."""
    allowed = {"name", "license", "format", "kind", "rows", "jsonl"}
    for key in body:
        if key not in allowed:
            raise InvalidInput(f"unknown field {key!r}", param=key)
    for key in ("name", "license"):
        if not isinstance(body.get(key), str):
            raise InvalidInput(f"{key} is required (a string)", param=key)
    if ("rows" in body) == ("jsonl" in body):
        raise InvalidInput("give the rows as either rows (a list of objects) or jsonl (a string)", param="rows")
    if "rows" in body:
        if not isinstance(body["rows"], list):
            raise InvalidInput("rows must be a list of objects", param="rows")
        records, param = list(enumerate(body["rows"], start=1)), "rows"
    else:
        if not isinstance(body["jsonl"], str):
            raise InvalidInput("jsonl must be a string", param="jsonl")
        records, param = read_jsonl(body["jsonl"], param="jsonl"), "jsonl"
    dataset, created = await asyncio.to_thread(
        import_dataset, ctx.database, ctx.blobs, principal.org_id, records, name=body["name"],
        license=body["license"], fmt=str(body.get("format", "openai")), kind=str(body.get("kind", "rows")),
        actor=principal.key_id, param=param)
    response.status_code = 201 if created else 200
    return {**dataset_json(dataset), "created": created}


@router.get("/datasets/{name}/grants")
def list_grants(name: str, principal: Reader, ctx: Ctx) -> dict[str, Any]:
    """The grants the organisation gave on dataset ``name``."""
    with ctx.database.session(write=False) as s:
        return {"data": [grant_json(g) for g in Datasets(s).grants(principal.org_id, name)]}


@router.post("/datasets/{name}/grants", status_code=201)
def create_grant(name: str, principal: Admin, ctx: Ctx,
                 body: dict[str, Any] = Body(..., description="org (the grantee's id), license, version (optional).")
                 ) -> dict[str, Any]:
    """Let another organisation use dataset ``name`` (one version, or all) under a license.

    The grantee is named by its organisation id (``org_...``, which its members read from
    ``GET /api/whoami``), never by name: ids are unguessable, so the answer (201 or 404) tells
    nobody whether an organisation called X exists.
    """

    for key in body:
        if key not in {"org", "license", "version"}:
            raise InvalidInput(f"unknown field {key!r}", param=key)
    if not isinstance(body.get("org"), str) or not is_id(body["org"], "org"):
        raise InvalidInput("org must be the grantee organisation's id (org_...; its members see it in "
                           "GET /api/whoami)", param="org")
    version = body.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise InvalidInput("version must be a positive integer", param="version")
    license = check_license(str(body.get("license") or ""))
    with ctx.database.session() as s:  # the grant looks up the dataset first, then the grantee
        return grant_json(Datasets(s).grant(principal.org_id, name, body["org"], license=license, version=version,
                                            actor=principal.key_id))


@router.delete("/datasets/{name}/grants/{grant_id}")
def revoke_grant(name: str, grant_id: str, principal: Admin, ctx: Ctx) -> dict[str, Any]:
    """End a grant of dataset ``name``."""
    with ctx.database.session() as s:
        repo = Datasets(s)
        if not any(g.id == grant_id for g in repo.grants(principal.org_id, name)):
            raise NotFound(f"grant {grant_id!r} not found", param="grant")
        return grant_json(repo.revoke(principal.org_id, grant_id, actor=principal.key_id))


__all__ = ["admin", "reader", "router", "writer"]

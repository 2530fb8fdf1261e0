"""``/api/envs``: environments over REST -- list, info, versions, stored results, checks, publish, yank.

- ``GET /api/envs``: the environments installed on the server and the
  organisation's published versions.
- ``GET /api/envs/{ref}``: one environment -- ``NAME@VERSION`` (or a bare
  published ``NAME``: its newest live version) with its manifest, or an
  installed name with its description -- plus its newest stored results.
- ``GET /api/envs/{name}/versions``, ``GET /api/envs/{name}/evals`` (stored
  evaluation results, from ``teachloop env eval`` or ``/api/evals``).
- ``POST /api/envs/{ref}/check``: run ``teachloop env check``'s checks on the server.
- ``GET /api/envs/{ref}/checks``: the checks a published version passed when it was published.
- ``POST /api/envs`` (multipart, file field ``package``: a ``.tar.gz`` or ``.zip`` of
  the package folder, bounded by the server's body limit): ``teachloop env
  publish`` on the server -- every check, then the immutable version (201; 200
  with ``created`` false when the same content is already that version). A
  failing check is a 400 naming each failing check, and nothing is stored; the
  same version with other content is a 409. Names are organisation-scoped: a
  name another organisation uses is free here.
- ``POST /api/envs/{ref}/yank`` ``{"reason": ...}``: training and evaluation refuse it from then on.

Publishing and yanking are ``catalog.environments``' (the CLI calls the same functions).

References from the API are untrusted: names, ``rg:``, ``vf:`` and published
versions resolve; paths and ``module:attr`` are 400. Another organisation's
published environment is a 404 exactly like a missing one. Reads need a
viewer key; checks, publishing and yanks a member key.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Query, Response, UploadFile

from teachloop.app.auth import Deps, Member, Viewer
from teachloop.core.api import (
    CheckOutcome,
    EnvCheck,
    EnvInfo,
    EnvList,
    EnvPublished,
    EnvVersion,
    EnvVersionList,
    EvalResult,
    EvalResultList,
    InstalledEnv,
    YankRequest,
)
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.store.repos.environments import EnvironmentRegistry, split_ref
from teachloop.store.schema.environments import EnvironmentEval, EnvironmentVersion

router = APIRouter(prefix="/api", tags=["environments"])


def version_out(row: EnvironmentVersion) -> EnvVersion:
    """The wire form of a published version."""
    return EnvVersion(ref=f"{row.name}@{row.version}", name=row.name, version=row.version, digest=row.digest,
                      yanked=row.yanked, yank_reason=row.yank_reason, published_by=row.published_by,
                      created_at=row.created_at)


def result_out(row: EnvironmentEval) -> EvalResult:
    """The wire form of a stored evaluation."""
    return EvalResult(id=row.id, env_name=row.env_name, env_version=row.env_version, env_digest=row.env_digest,
                      model=row.model, n_tasks=row.n_tasks, n_episodes=row.n_episodes, mean=row.mean,
                      ci_low=row.ci_low, ci_high=row.ci_high, created_by=row.created_by, created_at=row.created_at)


def check_out(target: str, report: dict[str, Any]) -> EnvCheck:
    """The wire form of a check report (``CheckReport.to_dict()``, stored with a version or just run)."""
    return EnvCheck(target=target, ok=bool(report.get("ok")), seconds=float(report.get("seconds") or 0.0),
                    results=[CheckOutcome(name=str(r["name"]), status=str(r["status"]), message=str(r["message"]))
                             for r in report.get("results", [])])


def _published(deps: Any, org_id: str, ref: str) -> EnvironmentVersion | None:
    """The published version ``ref`` names in the organisation (NAME@VERSION, or a NAME it has published)."""
    with deps.database.session(write=False) as session:
        registry = EnvironmentRegistry(session)
        if "@" in ref:
            return registry.resolve(org_id, ref)
        try:
            name, _ = split_ref(ref)
        except InvalidInput:  # rg:..., vf:...: not a registry name
            return None
        return registry.resolve(org_id, name) if registry.versions(org_id, name) else None


@router.get("/envs", response_model=EnvList)
def list_envs(principal: Viewer, deps: Deps) -> EnvList:
    """Installed environments and the organisation's published versions."""
    from teachloop.envs import available

    installed = [InstalledEnv(name=e.name, version=e.version, source=e.source, target=e.target)
                 for e in available().values()]
    with deps.database.session(write=False) as session:
        published = [version_out(r) for r in EnvironmentRegistry(session).versions(principal.org_id)]
    return EnvList(installed=installed, published=published)


@router.get("/envs/{name}/versions", response_model=EnvVersionList)
def env_versions(name: str, principal: Viewer, deps: Deps) -> EnvVersionList:
    """The published versions of ``name``, newest first (404 when the organisation has none)."""
    split_ref(name)
    with deps.database.session(write=False) as session:
        rows = EnvironmentRegistry(session).versions(principal.org_id, name)
    if not rows:
        raise NotFound(f"environment {name!r} has no published versions", param="name")
    return EnvVersionList(data=[version_out(r) for r in rows])


@router.get("/envs/{name}/evals", response_model=EvalResultList)
def env_evals(name: str, principal: Viewer, deps: Deps, limit: int = Query(50, ge=1, le=1000)) -> EvalResultList:
    """Stored evaluation results of ``name``, newest first."""
    with deps.database.session(write=False) as session:
        rows = EnvironmentRegistry(session).evals(principal.org_id, name, limit=limit)
        return EvalResultList(data=[result_out(r) for r in rows])


@router.get("/envs/{ref}", response_model=EnvInfo)
def env_info(ref: str, principal: Viewer, deps: Deps) -> EnvInfo:
    """One environment: a published version with its manifest, or an installed one with its description."""
    row = _published(deps, principal.org_id, ref)
    with deps.database.session(write=False) as session:
        registry = EnvironmentRegistry(session)
        if row is not None:
            evals = [result_out(e) for e in registry.evals(principal.org_id, row.name, limit=20)
                     if e.env_digest == row.digest][:5]
            return EnvInfo(ref=f"{row.name}@{row.version}", name=row.name, version=row.version, digest=row.digest,
                           yanked=row.yanked, yank_reason=row.yank_reason, manifest=row.manifest, description=None,
                           recent_evals=evals, checks=check_out(row.ref, row.checks) if row.checks else None)
    from teachloop.catalog.envref import resolve_env

    resolved = resolve_env(ref, trusted=False)
    with deps.database.session(write=False) as session:
        evals = [result_out(e) for e in EnvironmentRegistry(session).evals(principal.org_id, resolved.ref, limit=20)
                 if e.env_digest == resolved.digest][:5]
    return EnvInfo(ref=resolved.ref, name=resolved.name, version=None, digest=resolved.digest, yanked=False,
                   yank_reason=None, manifest=None, description=resolved.env.describe(), recent_evals=evals)


@router.post("/envs/{ref}/check", response_model=EnvCheck)
async def check_env(ref: str, principal: Member, deps: Deps) -> EnvCheck:
    """Run the environment checks (``teachloop env check``) on the server and return every outcome."""
    from teachloop.catalog.envref import fetch_package, resolve_env
    from teachloop.envs import check_environment

    def locate() -> str:
        row = _published(deps, principal.org_id, ref)
        if row is not None:
            return str(fetch_package(deps.blobs, row.blob_key, row.digest, deps.settings.home / "envs"))
        resolve_env(ref, trusted=False)  # refuses paths and module:attr before anything runs
        return ref

    target = await asyncio.to_thread(locate)
    report = await check_environment(target, offline=False)
    return EnvCheck(target=ref, ok=report.ok, seconds=report.seconds,
                    results=[CheckOutcome(name=r.name, status=str(r.status), message=r.message)
                             for r in report.results])


@router.get("/envs/{ref}/checks", response_model=EnvCheck)
def env_checks(ref: str, principal: Viewer, deps: Deps) -> EnvCheck:
    """The checks a published version (NAME@VERSION, or NAME: its newest live one) passed when it was published."""
    with deps.database.session(write=False) as session:
        row = EnvironmentRegistry(session).resolve(principal.org_id, ref)
    if not row.checks:
        raise NotFound(f"{row.ref} was published before check results were stored; run POST /api/envs/{row.ref}/check "
                       "to check it now", param="ref")
    return check_out(row.ref, row.checks)


@router.post("/envs", status_code=201, response_model=EnvPublished)
async def publish_env(
    principal: Member,
    deps: Deps,
    response: Response,
    package: UploadFile = File(description="A .tar.gz or .zip of the environment package folder (its files at the "
                               "top, or in one top folder), as `teachloop env publish --remote` sends it."),
) -> EnvPublished:
    """Check and publish an environment package as an immutable version of the organisation."""
    from teachloop.catalog.environments import publish_package, unpack_package

    data = await package.read()
    work = Path(tempfile.mkdtemp(prefix="teachloop-upload-"))
    try:
        folder = await asyncio.to_thread(unpack_package, data, work / "package", filename=package.filename or "")
        published = await publish_package(deps.database, deps.blobs, principal.org_id, folder, actor=principal.key_id)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    if not published.created:
        response.status_code = 200
    row = published.version
    return EnvPublished(created=published.created, version=version_out(row),
                        checks=check_out(row.ref, published.report.to_dict()))


@router.post("/envs/{ref}/yank", response_model=EnvVersion)
def yank_env(ref: str, principal: Member, deps: Deps, body: YankRequest | None = None) -> EnvVersion:
    """Yank a published NAME@VERSION: training and evaluation refuse it from now on."""
    from teachloop.catalog.environments import yank_version

    row = yank_version(deps.database, principal.org_id, ref, reason=body.reason if body else None,
                       actor=principal.key_id)
    return version_out(row)


__all__ = ["check_out", "result_out", "router", "version_out"]

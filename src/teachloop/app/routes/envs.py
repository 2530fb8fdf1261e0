"""``/api/envs``: environments over REST -- list, info, versions, stored results, checks, yank.

- ``GET /api/envs``: the environments installed on the server and the
  organisation's published versions.
- ``GET /api/envs/{ref}``: one environment -- ``NAME@VERSION`` (or a bare
  published ``NAME``: its newest live version) with its manifest, or an
  installed name with its description -- plus its newest stored results.
- ``GET /api/envs/{name}/versions``, ``GET /api/envs/{name}/evals`` (stored
  evaluation results, from ``teachloop env eval`` or ``/api/evals``).
- ``POST /api/envs/{ref}/check``: run ``teachloop env check``'s checks on the server.
- ``POST /api/envs/{ref}/yank`` ``{"reason": ...}``: training and evaluation refuse it from then on.

References from the API are untrusted: names, ``rg:``, ``vf:`` and published
versions resolve; paths and ``module:attr`` are 400. Another organisation's
published environment is a 404 exactly like a missing one. Reads need a
viewer key, checks and yanks a member key.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query

from teachloop.app.auth import Deps, Member, Viewer
from teachloop.core.api import (
    CheckOutcome,
    EnvCheck,
    EnvInfo,
    EnvList,
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
                           recent_evals=evals)
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


@router.post("/envs/{ref}/yank", response_model=EnvVersion)
def yank_env(ref: str, principal: Member, deps: Deps, body: YankRequest | None = None) -> EnvVersion:
    """Yank a published NAME@VERSION: training and evaluation refuse it from now on."""
    with deps.database.session() as session:
        row = EnvironmentRegistry(session).yank(principal.org_id, ref, reason=body.reason if body else None,
                                                actor=principal.key_id)
        return version_out(row)


__all__ = ["result_out", "router", "version_out"]

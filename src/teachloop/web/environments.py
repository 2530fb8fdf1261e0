"""Environment pages: ``/environments`` (every published version and stored evaluation) and ``/environments/{name}``.

- ``/environments``: each published version of the organisation's registry
  (name, version, content digest, description, licence, who published it and
  when, yanked or not) with the newest stored evaluation of that exact digest,
  and the newest ``EVALS`` stored evaluations of any environment (published or
  built in: ``teachloop env eval --store``, ``POST /api/evals``).
- ``/environments/{name}``: every version of one environment with its manifest
  (protocol, entry point, reward range, turns, tools, resources, price, tags)
  and every stored evaluation of it.

Checks: ``teachloop env publish`` runs every publish-time check
(``envs.check``) and refuses a package that fails one, so each published
version passed them all at publish; no other check result is stored.

Read through ``store.EnvironmentRegistry``, scoped to the signed-in member's
organisation: another organisation's environment is a 404 page like a missing
one. Needs the viewer role; nothing here changes the registry.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from teachloop.core.errors import NotFound
from teachloop.core.tenancy import Role
from teachloop.store.repos.environments import EnvironmentRegistry
from teachloop.store.schema.environments import EnvironmentEval
from teachloop.web.auth import SignedIn, app_deps, require, require_csrf
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

EVALS = 50


def latest_by_digest(evals: list[EnvironmentEval]) -> dict[str, EnvironmentEval]:
    """The newest evaluation of each environment digest (``evals`` newest first)."""
    out: dict[str, EnvironmentEval] = {}
    for e in evals:
        out.setdefault(e.env_digest, e)
    return out


@router.get("/environments")
def environment_list(request: Request, viewer: SignedIn) -> Response:
    """Published environment versions with their latest scores, and recent evaluations."""
    require(viewer, Role.VIEWER, "reading environments")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as session:
        registry = EnvironmentRegistry(session)
        versions = registry.versions(org)
        evals = registry.evals(org, limit=EVALS)
        scores = latest_by_digest(registry.evals(org, limit=1000))
    return page(request, "environments.html", versions=versions, evals=evals, scores=scores, limit=EVALS)


@router.get("/environments/{name}")
def environment_detail(request: Request, viewer: SignedIn, name: str) -> Response:
    """One environment: every version with its manifest, and every stored evaluation of it."""
    require(viewer, Role.VIEWER, "reading environments")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as session:
        registry = EnvironmentRegistry(session)
        versions = registry.versions(org, name)
        if not versions:
            raise NotFound(f"environment {name!r} not found", param="name")
        evals = registry.evals(org, name, limit=200)
    return page(request, "environment.html", name=versions[0].name, versions=versions, evals=evals)


__all__ = ["EVALS", "latest_by_digest", "router"]

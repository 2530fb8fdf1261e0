"""Deployment pages: the list, one deployment's state and revisions, and three changes behind a confirmation.

- ``/deployments``: every deployment with its adapter version, canary and split.
- ``/deployments/{name}``: the state in force and every revision (action,
  adapter, canary, split, who, when).
- ``/deployments/{name}/rollback`` (``?to_revision=N`` optional),
  ``/deployments/{name}/promote`` (the canary becomes the primary version for
  everyone), ``/deployments/{name}/split`` (``?percent=N``, the canary's share):
  GET shows what will change and a confirm button; only the POST changes it.

The changes go through ``store.Deployments`` exactly as ``/api/deployments``
does (rollback as ``POST /api/deployments/{name}/rollback``; promote and split
as a ``PATCH`` of versions the deployment already serves, so there is nothing
new to preload) and then resync this server's adapters, so the next request is
served by the new state. Reading needs the viewer role, changing member.
Another organisation's deployment is a 404 page like a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from teachloop.core.errors import Conflict, InvalidInput
from teachloop.core.tenancy import Role
from teachloop.store.repos.deployments import AdapterVersions, Deployments, DeploymentState
from teachloop.store.schema.deployments import AdapterVersion, Deployment
from teachloop.web.auth import SignedIn, Viewer, app_deps, require, require_csrf, serving_of
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])


@dataclass(frozen=True)
class StateView:
    """A deployment state with its versions named (``name@N``; None: the base model alone / no canary)."""

    base_model: str
    adapter: str | None
    canary: str | None
    canary_percent: int


def _ref(versions: dict[str, AdapterVersion], version_id: str | None) -> str | None:
    if version_id is None:
        return None
    found = versions.get(version_id)
    return found.ref if found is not None else version_id


def _state_view(session: Session, org_id: str, state: DeploymentState) -> StateView:
    ids = {i for i in (state.adapter_version_id, state.canary_version_id) if i}
    versions = AdapterVersions(session).by_ids(org_id, ids)
    return StateView(state.base_model, _ref(versions, state.adapter_version_id),
                     _ref(versions, state.canary_version_id), state.canary_percent)


def deployment_rows(session: Session, org_id: str) -> list[tuple[Deployment, StateView]]:
    """The organisation's deployments with their states named (shared with the overview)."""
    return [(d, _state_view(session, org_id, DeploymentState.of(d))) for d in Deployments(session).list(org_id)]


@router.get("/deployments")
def deployment_list(request: Request, viewer: SignedIn) -> Response:
    """Every deployment of the organisation."""
    require(viewer, Role.VIEWER, "reading deployments")
    with app_deps(request).database.session(write=False) as session:
        rows = deployment_rows(session, viewer.principal.org_id)
    return page(request, "deployments.html", rows=rows)


def _detail(session: Session, org_id: str, name: str) -> dict[str, Any]:
    repo = Deployments(session)
    row = repo.get(org_id, name)
    history = [(c, _state_view(session, org_id, DeploymentState(**c.state))) for c in repo.history(org_id, name)]
    return {"deployment": row, "name": row.name, "revision": row.revision, "history": history,
            "state": _state_view(session, org_id, DeploymentState.of(row))}


@router.get("/deployments/{name}")
def deployment_detail(request: Request, viewer: SignedIn, name: str, done: str = "") -> Response:
    """One deployment: its state and revisions, and the changes one can make."""
    require(viewer, Role.VIEWER, "reading deployments")
    with app_deps(request).database.session(write=False) as session:
        context = _detail(session, viewer.principal.org_id, name)
    return page(request, "deployment.html", done=done, can_write=viewer.can(Role.MEMBER), **context)


def _change(session: Session, viewer: Viewer, name: str, action: str, to_revision: int | None,
            percent: int | None) -> tuple[Deployment, str]:
    """Make ``action`` in ``session`` (the confirmation page runs it in a read session, which never persists)."""
    org, actor = viewer.principal.org_id, viewer.principal.key_id
    repo = Deployments(session)
    if action == "rollback":
        row = repo.rollback(org, name, to_revision=to_revision, actor=actor)
        restored = repo.history(org, name)[0].restored_from
        return row, f"restore the state of revision {restored}"
    current = DeploymentState.of(repo.get(org, name))
    if current.canary_version_id is None:
        raise Conflict(f"deployment {name!r} has no canary to {'promote' if action == 'promote' else 'split'}",
                       param="canary")
    if action == "promote":
        state = replace(current, adapter_version_id=current.canary_version_id, upstream_id=None,  # issue 17
                        canary_version_id=None, canary_upstream_id=None, canary_percent=0)
        sentence = "serve the canary version to everyone and end the canary"
    else:
        if percent is None or not 1 <= percent <= 99:
            raise InvalidInput("the canary's share must be 1-99 %", param="percent")
        state = replace(current, canary_percent=percent)  # keeps an upstream arm, the shadow and prices (issue 17)
        sentence = f"serve the canary to {percent} % of users"
    row, _ = repo.update(org, name, state, actor=actor)
    return row, sentence


_ACTIONS = {"rollback": "Roll back", "promote": "Promote the canary", "split": "Change the canary split"}


def _action(action: str) -> str:
    if action not in _ACTIONS:
        raise InvalidInput(f"unknown change {action!r}", param="action")
    return action


@router.get("/deployments/{name}/{action}")
def confirm_change(
    request: Request, viewer: SignedIn, name: str, action: str, to_revision: str = "", percent: str = ""
) -> Response:
    """What the change would do, and the button that does it."""
    require(viewer, Role.MEMBER, "changing a deployment")
    action = _action(action)
    revision = _int(to_revision, "to_revision")
    share = _int(percent, "percent")
    with app_deps(request).database.session(write=False) as session:
        context = _detail(session, viewer.principal.org_id, name)
        row, sentence = _change(session, viewer, name, action, revision, share)  # a dry run: rolled back
        after = _state_view(session, viewer.principal.org_id, DeploymentState.of(row))
    return page(request, "confirm_deployment.html", action=action, title=_ACTIONS[action], sentence=sentence,
                after=after, to_revision=revision, percent=share, **context)


def _int(raw: str, param: str) -> int | None:
    if not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{param} must be a whole number, got {raw!r}", param=param) from None


@router.post("/deployments/{name}/{action}")
def apply_change(
    request: Request,
    viewer: SignedIn,
    name: str,
    action: str,
    to_revision: Annotated[str, Form(max_length=12)] = "",
    percent: Annotated[str, Form(max_length=12)] = "",
) -> Response:
    """Make the confirmed change, then resync this server's adapters."""
    require(viewer, Role.MEMBER, "changing a deployment")
    action = _action(action)
    revision = _int(to_revision, "to_revision")
    share = _int(percent, "percent")
    with app_deps(request).database.session() as session:
        row, _ = _change(session, viewer, name, action, revision, share)
        revision_now = row.revision
    serving_of(request).sync_adapters()
    return RedirectResponse(f"/deployments/{name}?done={action}-{revision_now}", status_code=303)


__all__ = ["StateView", "deployment_rows", "router"]

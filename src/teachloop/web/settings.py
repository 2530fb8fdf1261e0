"""Organisation settings: members and roles, invitations, API keys (created -- secret shown once -- and revoked).

Everything here needs the admin role (owner or admin), the role
``teachloop admin`` work stands for. Keys are made with ``store.ApiKeys``
exactly as ``teachloop admin keys create`` makes them: a key for the member
themselves (its role at most theirs) or a service key tied to no user. The
secret is in the one response that created it and nowhere else. An
invitation is a single-use link (``store.SigninLinks``, 7 days) shown once;
only an owner may invite an owner. Revoking another organisation's key or
invitation is a 404 page like a missing one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response

from teachloop.core.errors import Forbidden
from teachloop.core.tenancy import Role
from teachloop.store.repos.keys import ApiKeys, CreatedKey
from teachloop.store.repos.sessions import NewLink, SigninLinks
from teachloop.store.repos.tenancy import Tenancy, parse_role
from teachloop.web.auth import SignedIn, Viewer, app_deps, require, require_csrf
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

#: roles a member can be given from the console (the operator role is not an organisation role)
ORG_ROLES = [r.value for r in Role if r is not Role.OPERATOR]


def _settings_page(request: Request, viewer: Viewer, *, status: int = 200, new_key: CreatedKey | None = None,
                   new_link: NewLink | None = None, done: str = "") -> Response:
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as session:
        members = Tenancy(session).list_members(org)
        keys = ApiKeys(session).list(org)
        invites = SigninLinks(session).pending_invites(org)
    emails = {user.id: user.email for _, user in members}
    link_url = str(request.base_url).rstrip("/") + f"/signin/link/{new_link.token}" if new_link else None
    return page(request, "settings.html", status=status, members=members, keys=keys, emails=emails,
                invites=invites, roles=ORG_ROLES, new_key=new_key, new_link=new_link, link_url=link_url, done=done)


@router.get("/settings")
def settings(request: Request, viewer: SignedIn, done: str = "") -> Response:
    """Members, invitations and API keys of the organisation."""
    require(viewer, Role.ADMIN, "organisation settings")
    return _settings_page(request, viewer, done=done)


@router.post("/settings/keys")
def create_key(
    request: Request,
    viewer: SignedIn,
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=16)] = "",
    service: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Create an API key and show its secret once."""
    require(viewer, Role.ADMIN, "creating API keys")
    principal = viewer.principal
    with app_deps(request).database.session() as session:
        created = ApiKeys(session).create_key(
            principal.org_id, None if service else principal.user_id, role or principal.role.value, name,
            actor=principal.key_id,
        )
    return _settings_page(request, viewer, status=201, new_key=created)


@router.post("/settings/keys/{key_id}/revoke")
def revoke_key(request: Request, viewer: SignedIn, key_id: str) -> Response:
    """Revoke one of the organisation's keys from now on."""
    require(viewer, Role.ADMIN, "revoking API keys")
    with app_deps(request).database.session() as session:
        ApiKeys(session).revoke(viewer.principal.org_id, key_id, actor=viewer.principal.key_id)
    return RedirectResponse("/settings?done=key-revoked", status_code=303)


@router.post("/settings/invitations")
def invite(
    request: Request,
    viewer: SignedIn,
    email: Annotated[str, Form(max_length=320)] = "",
    role: Annotated[str, Form(max_length=16)] = "member",
) -> Response:
    """Invite an e-mail address to join with a role; the single-use link is shown once."""
    require(viewer, Role.ADMIN, "inviting members")
    wanted = parse_role(role)
    if wanted is Role.OWNER and viewer.role is not Role.OWNER:
        raise Forbidden("only an owner may invite another owner", param="role")
    with app_deps(request).database.session() as session:
        link = SigninLinks(session).create_invite(viewer.principal.org_id, email, wanted,
                                                  actor=viewer.principal.key_id)
    return _settings_page(request, viewer, status=201, new_link=link)


@router.post("/settings/invitations/{link_id}/revoke")
def revoke_invitation(request: Request, viewer: SignedIn, link_id: str) -> Response:
    """Withdraw a pending invitation."""
    require(viewer, Role.ADMIN, "withdrawing invitations")
    with app_deps(request).database.session() as session:
        SigninLinks(session).revoke(viewer.principal.org_id, link_id, actor=viewer.principal.key_id)
    return RedirectResponse("/settings?done=invitation-revoked", status_code=303)


__all__ = ["ORG_ROLES", "router"]

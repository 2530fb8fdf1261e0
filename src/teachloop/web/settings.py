"""Organisation settings: members and roles, invitations, API keys (created -- secret shown once -- and revoked).

Everything here needs the admin role (owner or admin), the role
``teachloop admin`` work stands for. Keys are made with ``store.ApiKeys``
exactly as ``teachloop admin keys create`` makes them: a key for the member
themselves (its role at most theirs) or a service key tied to no user. The
secret is in the one response that created it and nowhere else. An
invitation is a single-use link (``store.SigninLinks``, 7 days) shown once;
only an owner may invite an owner. Revoking another organisation's key or
invitation is a 404 page like a missing one.

Members: ``/settings/members/{user_id}/role?role=R`` and
``/settings/members/{user_id}/remove`` show what will change (a dry run of the
change in a read session, so a refused change is refused before the button)
and only their POST changes it. Only an owner may change or remove an owner or
make someone one; the organisation's last owner can be neither demoted nor
removed (``Conflict``, 409; the owners are locked while counted). A demoted
member's API keys whose role the new role could not create are revoked with
the change (the confirmation lists them); a removed member's sessions and
keys stop working at once (both check the membership on every request).
Another organisation's member is a 404 page like a missing one. The rules are
``Tenancy.set_role``/``Tenancy.remove_member``'s; this module only renders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from teachloop.core.errors import Forbidden, InvalidInput
from teachloop.core.tenancy import Role
from teachloop.store.repos.keys import ApiKeys, CreatedKey, may_grant
from teachloop.store.repos.sessions import NewLink, SigninLinks
from teachloop.store.repos.tenancy import Tenancy, parse_role
from teachloop.store.schema.tenancy import ApiKey, User
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


def key_within(member: Role, key: Role) -> bool:
    """Whether a member of role ``member`` may hold a key of role ``key`` (the rule ``ApiKeys.create_key`` applies)."""
    return may_grant(member, key)


@dataclass(frozen=True)
class MemberChange:
    """A change of one membership, as made (or, in a read session, as it would be made)."""

    user: User
    before: Role
    after: Role | None
    revoked_keys: list[ApiKey]

    @property
    def sentence(self) -> str:
        """What the change does, in words."""
        if self.after is None:
            return f"remove {self.user.email} from the organisation: their sessions and API keys stop working now"
        return f"make {self.user.email} {self.after.value} instead of {self.before.value}"


def change_member(session: Session, viewer: Viewer, user_id: str, role: Role | None) -> MemberChange:
    """Give the member ``role``, or remove them (``role`` None), in ``session``; the rules are ``Tenancy``'s."""
    org, actor = viewer.principal.org_id, viewer.principal.key_id
    tenancy = Tenancy(session)
    change = (tenancy.remove_member(org, user_id, by=viewer.role, actor=actor) if role is None
              else tenancy.set_role(org, user_id, role, by=viewer.role, actor=actor))
    return MemberChange(change.user, change.before, change.after, change.revoked_keys)


def _member_role(action: str, role: str) -> Role | None:
    if action == "remove":
        return None
    if action != "role":
        raise InvalidInput(f"unknown change {action!r}", param="action")
    wanted = parse_role(role)
    if wanted.value not in ORG_ROLES:
        raise InvalidInput(f"{wanted.value} is not an organisation role", param="role")
    return wanted


@router.get("/settings/members/{user_id}/{action}")
def confirm_member(request: Request, viewer: SignedIn, user_id: str, action: str, role: str = "") -> Response:
    """What changing or removing the member would do, and the button that does it."""
    require(viewer, Role.ADMIN, "changing members")
    wanted = _member_role(action, role)
    with app_deps(request).database.session(write=False) as session:
        change = change_member(session, viewer, user_id, wanted)  # a dry run: a read session never persists
        return page(request, "confirm_member.html", change=change, action=action, user_id=user_id,
                    role=wanted.value if wanted else "")


@router.post("/settings/members/{user_id}/{action}")
def apply_member(
    request: Request,
    viewer: SignedIn,
    user_id: str,
    action: str,
    role: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Make the confirmed change of a member."""
    require(viewer, Role.ADMIN, "changing members")
    wanted = _member_role(action, role)
    with app_deps(request).database.session() as session:
        change_member(session, viewer, user_id, wanted)
    return RedirectResponse(f"/settings?done={'member-removed' if wanted is None else 'role-changed'}",
                            status_code=303)


__all__ = ["ORG_ROLES", "MemberChange", "change_member", "key_within", "router"]

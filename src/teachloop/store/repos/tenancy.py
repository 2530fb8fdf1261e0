"""Organisations, users and memberships.

``Tenancy(session)`` works inside a session the caller owns (``with db.session()
as s: Tenancy(s)...``) and never commits. Reads of tenant rows take the
``org_id`` and filter by it: a membership of another organisation is
``NotFound`` exactly like a missing one. Organisations and users are global,
so their listings (``list_orgs``) are operator views.

Membership changes (``set_role``, ``remove_member``) keep two rules: the
organisation's last owner can be neither demoted nor removed (``Conflict``;
the owners are locked while counted), and, given the acting role ``by``,
only an owner may change or remove an owner or make someone one
(``Forbidden``). A member's API keys that their new role could not create
(``keys.may_grant``) are revoked with the change; a removed member's are all
revoked. Both return a ``RoleChange`` naming what changed; in a read session
they are a dry run (nothing persists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from teachloop.core.ids import is_id
from teachloop.core.tenancy import Role
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.tenancy import ApiKey, Membership, Organisation, User

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def parse_role(value: Role | str, *, param: str = "role") -> Role:
    """``value`` as a ``Role``; ``InvalidInput`` listing the roles otherwise."""
    try:
        return Role(value)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise InvalidInput(f"unknown role {value!r}; use one of {roles}", param=param) from None


def _clean_name(value: str, what: str, param: str) -> str:
    name = value.strip()
    if not 1 <= len(name) <= 200 or any(ord(ch) < 32 for ch in name):
        raise InvalidInput(f"{what} must be 1-200 printable characters, got {value!r}", param=param)
    return name


def clean_email(value: str) -> str:
    """``value`` stripped and lower-cased; ``InvalidInput`` unless it looks like an e-mail address."""
    email = value.strip().lower()
    if len(email) > 320 or not _EMAIL_RE.match(email):
        raise InvalidInput(f"not an e-mail address: {value!r}", param="email")
    return email


@dataclass(frozen=True, slots=True)
class OrgSummary:
    """An organisation with its head counts, for operator listings."""

    org: Organisation
    members: int
    active_keys: int


@dataclass(frozen=True, slots=True)
class RoleChange:
    """A change of one membership as made: the user, their role before and after (None: removed), keys revoked."""

    user: User
    before: Role
    after: Role | None
    revoked_keys: list[ApiKey]


class Tenancy:
    """Organisations, users and memberships within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)

    # -- organisations --------------------------------------------------------------------------

    def create_org(self, name: str, *, actor: str = "system") -> Organisation:
        """A new organisation; ``Conflict`` if the name is taken."""
        name = _clean_name(name, "an organisation name", "name")
        if self.session.scalar(select(Organisation.id).where(Organisation.name == name)) is not None:
            raise Conflict(f"organisation {name!r} already exists", param="name")
        org = Organisation(name=name)
        self.session.add(org)
        self.session.flush()
        self.audit.record(org.id, actor, "org.create", org.id, {"name": name})
        return org

    def get_org(self, org_id: str) -> Organisation:
        """The organisation with this id; ``NotFound`` otherwise."""
        org = self.session.get(Organisation, org_id)
        if org is None:
            raise NotFound(f"organisation {org_id!r} not found", param="org_id")
        return org

    def find_org(self, ref: str) -> Organisation:
        """The organisation named or identified by ``ref`` (operator look-up); ``NotFound`` otherwise."""
        if is_id(ref, "org"):
            return self.get_org(ref)
        org = self.session.scalar(select(Organisation).where(Organisation.name == ref.strip()))
        if org is None:
            raise NotFound(f"organisation {ref!r} not found", param="org")
        return org

    def list_orgs(self) -> list[Organisation]:
        """Every organisation, oldest first (operator view)."""
        return list(
            self.session.scalars(select(Organisation).order_by(Organisation.created_at, Organisation.id))
        )

    def count_orgs(self) -> int:
        """How many organisations exist."""
        return int(self.session.scalar(select(func.count()).select_from(Organisation)) or 0)

    def summarise_orgs(self) -> list[OrgSummary]:
        """Every organisation with member and active-key counts (operator view)."""
        members: dict[str, int] = {
            org_id: count
            for org_id, count in self.session.execute(
                select(Membership.org_id, func.count()).group_by(Membership.org_id)
            )
        }
        active = (
            select(ApiKey.org_id, func.count()).where(ApiKey.revoked_at.is_(None)).group_by(ApiKey.org_id)
        )
        keys: dict[str, int] = {org_id: count for org_id, count in self.session.execute(active)}
        return [OrgSummary(org, members.get(org.id, 0), keys.get(org.id, 0)) for org in self.list_orgs()]

    # -- users --------------------------------------------------------------------------------

    def create_user(self, email: str, name: str = "") -> User:
        """A new user; ``Conflict`` if the e-mail address is taken."""
        email = clean_email(email)
        if self.find_user(email) is not None:
            raise Conflict(f"a user with e-mail {email!r} already exists", param="email")
        user = User(email=email, name=name.strip()[:200])
        self.session.add(user)
        self.session.flush()
        return user

    def find_user(self, email: str) -> User | None:
        """The user with this e-mail address, if any."""
        return self.session.scalar(select(User).where(User.email == clean_email(email)))

    def ensure_user(self, email: str, name: str = "") -> tuple[User, bool]:
        """The user with this e-mail address, created if missing; and whether it was created."""
        user = self.find_user(email)
        return (user, False) if user is not None else (self.create_user(email, name), True)

    # -- memberships ----------------------------------------------------------------------------

    def add_member(self, org_id: str, user_id: str, role: Role | str, *, actor: str = "system") -> Membership:
        """Make a user a member of an organisation; ``Conflict`` if they already are."""
        role = parse_role(role)
        self.get_org(org_id)
        if self.session.get(User, user_id) is None:
            raise NotFound(f"user {user_id!r} not found", param="user_id")
        existing = self.session.scalar(
            select(Membership).where(Membership.org_id == org_id, Membership.user_id == user_id)
        )
        if existing is not None:
            raise Conflict(
                f"user {user_id} is already a member ({existing.role}) of {org_id}", param="user_id"
            )
        membership = Membership(org_id=org_id, user_id=user_id, role=role.value)
        self.session.add(membership)
        self.session.flush()
        self.audit.record(org_id, actor, "member.add", user_id, {"role": role.value})
        return membership

    def get_membership(self, org_id: str, user_id: str) -> Membership:
        """The user's membership in this organisation; ``NotFound`` if they are not a member."""
        membership = self.session.scalar(
            select(Membership).where(Membership.org_id == org_id, Membership.user_id == user_id)
        )
        if membership is None:
            raise NotFound(f"user {user_id!r} not found in this organisation", param="user_id")
        return membership

    def list_members(self, org_id: str) -> list[tuple[Membership, User]]:
        """The organisation's members with their users, oldest membership first."""
        rows = self.session.execute(
            select(Membership, User)
            .join(User, User.id == Membership.user_id)
            .where(Membership.org_id == org_id)
            .order_by(Membership.created_at, Membership.id)
        )
        return [(membership, user) for membership, user in rows]

    def first_owner(self, org_id: str) -> User:
        """The organisation's oldest owner; ``NotFound`` if it has none."""
        for membership, user in self.list_members(org_id):
            if membership.role == Role.OWNER.value:
                return user
        raise NotFound(f"organisation {org_id} has no owner", param="org_id")

    def set_role(
        self, org_id: str, user_id: str, role: Role | str, *, by: Role | None = None, actor: str = "system"
    ) -> RoleChange:
        """Give the member ``role``, revoking their keys the new role could not create (module docstring rules).

        ``InvalidInput`` if they already have it or it is not an organisation role; ``NotFound`` if they
        are not a member; ``Forbidden``/``Conflict`` for the owner rules. A refused change changes nothing.
        """
        wanted = parse_role(role)
        if wanted is Role.OPERATOR:
            raise InvalidInput("operator is not an organisation role", param="role")
        return self._change(org_id, user_id, wanted, by, actor)

    def remove_member(self, org_id: str, user_id: str, *, by: Role | None = None, actor: str = "system") -> RoleChange:
        """Remove the member and revoke every key of theirs (their sessions check the membership and stop too)."""
        return self._change(org_id, user_id, None, by, actor)

    def _change(self, org_id: str, user_id: str, role: Role | None, by: Role | None, actor: str) -> RoleChange:
        from teachloop.store.repos.keys import ApiKeys, may_grant  # keys imports this module

        membership = self.get_membership(org_id, user_id)
        user = self.session.get(User, user_id)
        assert user is not None  # the membership references it
        before = membership.role_enum
        if role is not None and role is before:
            raise InvalidInput(f"{user.email} is already {before.value}", param="role")
        if by is not None and Role.OWNER in (before, role) and by is not Role.OWNER:
            raise Forbidden("only an owner may change or remove an owner, or make someone an owner", param="role")
        if before is Role.OWNER:
            owners = self.session.scalars(select(Membership.id).where(
                Membership.org_id == org_id, Membership.role == Role.OWNER.value).with_for_update()).all()
            if len(owners) <= 1:
                what = "removed" if role is None else "demoted"
                raise Conflict(f"{user.email} is the organisation's last owner and cannot be {what}; make another "
                               "member owner first", param="role")
        keys = ApiKeys(self.session)
        held = [k for k in keys.list(org_id, include_revoked=False) if k.user_id == user_id]
        revoked = held if role is None else [k for k in held if not may_grant(role, k.role_enum)]
        for key in revoked:
            keys.revoke(org_id, key.id, actor=actor)
        if role is None:
            self.session.delete(membership)
            self.audit.record(org_id, actor, "member.remove", user_id, {"role": before.value})
        else:
            membership.role = role.value
            self.audit.record(org_id, actor, "member.role", user_id, {"from": before.value, "to": role.value})
        self.session.flush()
        return RoleChange(user, before, role, revoked)


__all__ = ["OrgSummary", "RoleChange", "Tenancy", "clean_email", "parse_role"]

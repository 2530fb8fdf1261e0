"""Console sign-in: passwords, sessions, single-use links and invitations, the attempt limit, server secrets.

Every class works inside a caller-owned session and never commits; every
method returns frozen snapshots, never ORM rows.

- ``Passwords``: argon2id hashes (``argon2-cffi``, its RFC 9106 defaults) on
  ``users.password_hash``. ``check`` answers the same ``None`` for an unknown
  e-mail, a user without a password, a wrong password and a user in no
  organisation, and spends the same hashing work on each (a dummy hash), so
  neither the answer nor its timing tells which.
- ``ConsoleSessions``: a session is a random token; the row keeps its sha256.
  ``resolve`` turns a token into a ``SessionInfo`` with the member's role *as it
  is now* (a changed role applies at once; a removed member's session stops
  working); expired, revoked and unknown tokens are all ``None``.
- ``SigninLinks``: single-use links stored as sha256. ``kind="signin"`` signs a
  member in; ``kind="invite"`` makes an e-mail a member with a role. ``consume``
  marks the link used with one conditional UPDATE (two concurrent uses: one
  wins) and refuses unknown, expired, revoked and used links alike
  (``LinkRefused``, 410). Reads take the ``org_id``: another organisation's
  invitation is ``NotFound`` like a missing one.
- ``SigninAttempts``: failed password sign-ins per (e-mail, client) and per
  client within ``ATTEMPT_WINDOW``; ``check`` raises ``TooManyAttempts`` (429)
  once ``MAX_PAIR_FAILURES`` / ``MAX_CLIENT_FAILURES`` are reached, before any
  password is checked. The counts live in the database, so every server process
  of an install shares them.
- ``server_secret``: a named random secret created once per install (the key
  that signs console cookies and CSRF tokens).

This module knows nothing of HTTP or cookies.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, InvalidInput, NotFound, TeachloopError
from teachloop.core.tenancy import Role
from teachloop.store.repos.audit import AuditLog
from teachloop.store.repos.tenancy import Tenancy, clean_email, parse_role
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.console import ConsoleSession, ServerSecret, SigninAttempt, SigninLink
from teachloop.store.schema.tenancy import Membership, Organisation, User

SESSION_TTL = timedelta(days=7)
SIGNIN_LINK_TTL = timedelta(hours=1)
INVITE_TTL = timedelta(days=7)
ATTEMPT_WINDOW = timedelta(minutes=1)
MAX_PAIR_FAILURES = 5
MAX_CLIENT_FAILURES = 30
MIN_PASSWORD = 10
MAX_PASSWORD = 1024

_hasher = PasswordHasher()
_DUMMY = _hasher.hash("teachloop: no such user")


class LinkRefused(TeachloopError, PermissionError):
    """A sign-in link or invitation that is unknown, expired, revoked or already used (HTTP 410)."""

    status = 410
    code = "link_refused"


class TooManyAttempts(TeachloopError, PermissionError):
    """Too many failed sign-ins from this client, or for this e-mail from this client (HTTP 429)."""

    status = 429
    code = "rate_limited"


def hash_token(token: str) -> str:
    """The hex sha256 stored for a session or link token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A live console session: who, in which organisation, with which role now."""

    id: str
    org_id: str
    org_name: str
    user_id: str
    email: str
    role: Role
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session just created and its token (for the cookie; stored nowhere)."""

    info: SessionInfo
    token: str

    def __repr__(self) -> str:
        return f"NewSession(id={self.info.id!r}, token='…')"


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A sign-in link or invitation, as a page shows it."""

    id: str
    org_id: str
    org_name: str
    kind: str
    email: str
    role: Role | None
    created_by: str
    created_at: datetime
    expires_at: datetime
    user_has_password: bool


@dataclass(frozen=True, slots=True)
class NewLink:
    """A link just created and its token (shown once; stored as a hash)."""

    info: LinkInfo
    token: str

    def __repr__(self) -> str:
        return f"NewLink(id={self.info.id!r}, token='…')"


def check_password_rules(password: str) -> str:
    """``password`` if it is acceptable (``MIN_PASSWORD``-``MAX_PASSWORD`` characters); ``InvalidInput`` otherwise."""
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(
            f"a password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters long", param="password"
        )
    return password


class Passwords:
    """Users' console passwords within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def set(self, user_id: str, password: str) -> None:
        """Store a new argon2id hash for the user (``InvalidInput`` for a password that breaks the rules)."""
        user = self.session.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id!r} not found", param="user_id")
        user.password_hash = _hasher.hash(check_password_rules(password))
        self.session.flush()

    def check(self, email: str, password: str) -> tuple[str, str] | None:
        """(org_id, user_id) of the user's oldest membership when the password is right; else None (see module)."""
        try:
            user = Tenancy(self.session).find_user(email)
        except InvalidInput:
            user = None
        stored = user.password_hash if user is not None and user.password_hash else _DUMMY
        try:
            ok = _hasher.verify(stored, password) and stored is not _DUMMY
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user is None:
            return None
        membership = self.session.scalar(
            select(Membership).where(Membership.user_id == user.id).order_by(Membership.created_at, Membership.id)
        )
        if membership is None:
            return None
        if _hasher.check_needs_rehash(stored):
            user.password_hash = _hasher.hash(password)
            self.session.flush()
        return membership.org_id, user.id


class ConsoleSessions:
    """Console sessions within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)

    def create(self, org_id: str, user_id: str, *, ttl: timedelta = SESSION_TTL) -> NewSession:
        """A new session of a member of ``org_id`` (``NotFound`` if they are not one)."""
        Tenancy(self.session).get_membership(org_id, user_id)
        token = _new_token()
        row = ConsoleSession(org_id=org_id, user_id=user_id, token_hash=hash_token(token),
                             expires_at=utc_now() + ttl)
        self.session.add(row)
        self.session.flush()
        self.audit.record(org_id, user_id, "session.create", row.id)
        info = self._info(row)
        assert info is not None  # the membership was checked above
        return NewSession(info, token)

    def resolve(self, token: str | None) -> SessionInfo | None:
        """The live session a token names; None for an unknown, expired or revoked one or a departed member."""
        if not token:
            return None
        row = self.session.scalar(select(ConsoleSession).where(ConsoleSession.token_hash == hash_token(token)))
        if row is None or row.revoked_at is not None or row.expires_at <= utc_now():
            return None
        return self._info(row)

    def revoke(self, token: str | None) -> bool:
        """End the session a token names (sign-out); whether a live one was ended."""
        if not token:
            return False
        row = self.session.scalar(select(ConsoleSession).where(ConsoleSession.token_hash == hash_token(token)))
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utc_now()
        self.session.flush()
        self.audit.record(row.org_id, row.user_id, "session.revoke", row.id)
        return True

    def _info(self, row: ConsoleSession) -> SessionInfo | None:
        found = self.session.execute(
            select(Membership.role, User.email, Organisation.name)
            .join(User, User.id == Membership.user_id)
            .join(Organisation, Organisation.id == Membership.org_id)
            .where(Membership.org_id == row.org_id, Membership.user_id == row.user_id)
        ).first()
        if found is None:
            return None
        role, email, org_name = found
        return SessionInfo(row.id, row.org_id, org_name, row.user_id, email, Role(role), row.expires_at)


class SigninLinks:
    """Single-use sign-in links and invitations within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)
        self.tenancy = Tenancy(session)

    def create_signin(self, org_id: str, email: str, *, actor: str, ttl: timedelta = SIGNIN_LINK_TTL) -> NewLink:
        """A link that signs the member ``email`` in to ``org_id`` once (``NotFound`` for a non-member)."""
        user = self.tenancy.find_user(email)
        if user is None:
            raise NotFound(f"no member with e-mail {clean_email(email)!r} in this organisation", param="email")
        self.tenancy.get_membership(org_id, user.id)
        return self._insert(org_id, "signin", user.email, None, actor, ttl)

    def create_invite(
        self, org_id: str, email: str, role: Role | str, *, actor: str, ttl: timedelta = INVITE_TTL
    ) -> NewLink:
        """An invitation for ``email`` to join ``org_id`` as ``role`` (``Conflict`` if already a member)."""
        email = clean_email(email)
        wanted = parse_role(role)
        if wanted is Role.OPERATOR:
            raise InvalidInput("the operator role is not an organisation role", param="role")
        self.tenancy.get_org(org_id)
        user = self.tenancy.find_user(email)
        if user is not None and self.session.scalar(
            select(Membership.id).where(Membership.org_id == org_id, Membership.user_id == user.id)
        ):
            raise Conflict(f"{email} is already a member of this organisation", param="email")
        return self._insert(org_id, "invite", email, wanted, actor, ttl)

    def peek(self, token: str) -> LinkInfo:
        """The usable link a token names; ``LinkRefused`` for an unknown, expired, revoked or used one."""
        row = self.session.scalar(select(SigninLink).where(SigninLink.token_hash == hash_token(token or "")))
        if row is None or row.used_at is not None or row.revoked_at is not None or row.expires_at <= utc_now():
            raise LinkRefused("this sign-in link is unknown, expired or already used; ask for a new one")
        return self._info(row)

    def consume(self, token: str, *, password: str | None = None, name: str = "") -> tuple[str, str]:
        """Use a link once: (org_id, user_id) of the member it signs in, creating the membership of an invitation.

        ``password`` (checked first, so a refused password leaves the link usable)
        becomes the user's password; it is required when the user has none yet.
        """
        link = self.peek(token)
        if password is not None:
            check_password_rules(password)
        elif not link.user_has_password:
            raise InvalidInput("choose a password to finish signing in", param="password")
        done = self.session.execute(
            update(SigninLink)
            .where(SigninLink.id == link.id, SigninLink.used_at.is_(None), SigninLink.revoked_at.is_(None),
                   SigninLink.expires_at > utc_now())
            .values(used_at=utc_now())
        )
        if getattr(done, "rowcount", 0) != 1:
            raise LinkRefused("this sign-in link is unknown, expired or already used; ask for a new one")
        user, _ = self.tenancy.ensure_user(link.email, name)
        if link.kind == "invite":
            assert link.role is not None
            self.tenancy.add_member(link.org_id, user.id, link.role, actor=link.created_by)
        else:
            self.tenancy.get_membership(link.org_id, user.id)
        if password is not None:
            Passwords(self.session).set(user.id, password)
        self.audit.record(link.org_id, user.id, f"{link.kind}.use", link.id, {"email": link.email})
        return link.org_id, user.id

    def pending_invites(self, org_id: str) -> list[LinkInfo]:
        """The organisation's invitations not yet used, revoked or expired, newest first."""
        rows = self.session.scalars(
            select(SigninLink)
            .where(SigninLink.org_id == org_id, SigninLink.kind == "invite", SigninLink.used_at.is_(None),
                   SigninLink.revoked_at.is_(None), SigninLink.expires_at > utc_now())
            .order_by(SigninLink.created_at.desc(), SigninLink.id.desc())
        )
        return [self._info(r) for r in rows]

    def revoke(self, org_id: str, link_id: str, *, actor: str) -> None:
        """Revoke one of the organisation's links (``NotFound`` for another organisation's or a missing one)."""
        row = self.session.get(SigninLink, link_id) if isinstance(link_id, str) else None
        if row is None or row.org_id != org_id:
            raise NotFound(f"invitation {link_id!r} not found", param="link_id")
        if row.revoked_at is None and row.used_at is None:
            row.revoked_at = utc_now()
            self.session.flush()
            self.audit.record(org_id, actor, f"{row.kind}.revoke", row.id, {"email": row.email})

    def _insert(self, org_id: str, kind: str, email: str, role: Role | None, actor: str, ttl: timedelta) -> NewLink:
        if ttl <= timedelta(0):
            raise InvalidInput("a link must live for a positive time", param="ttl")
        token = _new_token()
        row = SigninLink(org_id=org_id, kind=kind, email=email, role=role.value if role else None,
                         token_hash=hash_token(token), created_by=actor, expires_at=utc_now() + ttl)
        self.session.add(row)
        self.session.flush()
        detail = {"email": email, **({"role": role.value} if role else {})}
        self.audit.record(org_id, actor, f"{kind}.create", row.id, detail)
        return NewLink(self._info(row), token)

    def _info(self, row: SigninLink) -> LinkInfo:
        org = self.tenancy.get_org(row.org_id)
        user = self.tenancy.find_user(row.email)
        return LinkInfo(
            row.id, row.org_id, org.name, row.kind, row.email, Role(row.role) if row.role else None, row.created_by,
            row.created_at, row.expires_at, bool(user is not None and user.password_hash),
        )


class SigninAttempts:
    """Failed password sign-ins, for the rate limit (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def _keys(email: str, client: str) -> tuple[str, str]:
        pair = hashlib.sha256(f"{email.strip().lower()}\0{client}".encode()).hexdigest()
        return pair, hashlib.sha256(f"client\0{client}".encode()).hexdigest()

    def check(self, email: str, client: str) -> None:
        """``TooManyAttempts`` once this (e-mail, client) or this client failed too often within the window."""
        pair, who = self._keys(email, client)
        since = utc_now() - ATTEMPT_WINDOW
        count = select(func.count()).select_from(SigninAttempt).where(SigninAttempt.at > since)
        if int(self.session.scalar(count.where(SigninAttempt.pair_hash == pair)) or 0) >= MAX_PAIR_FAILURES or int(
            self.session.scalar(count.where(SigninAttempt.client_hash == who)) or 0
        ) >= MAX_CLIENT_FAILURES:
            seconds = int(ATTEMPT_WINDOW.total_seconds())
            raise TooManyAttempts(f"too many failed sign-ins; wait {seconds} seconds and try again")

    def record_failure(self, email: str, client: str) -> None:
        """Count one failed sign-in (and drop rows older than the window)."""
        pair, who = self._keys(email, client)
        self.session.execute(delete(SigninAttempt).where(SigninAttempt.at <= utc_now() - ATTEMPT_WINDOW))
        self.session.add(SigninAttempt(pair_hash=pair, client_hash=who))
        self.session.flush()

    def clear(self, email: str, client: str) -> None:
        """Forget this (e-mail, client)'s failures after a successful sign-in."""
        pair, _ = self._keys(email, client)
        self.session.execute(delete(SigninAttempt).where(SigninAttempt.pair_hash == pair))


def server_secret(session: Session, name: str) -> str:
    """The install's secret called ``name``, created (256 random bits) the first time it is asked for.

    Two processes creating it at once: one insert fails with ``Conflict`` when the
    session commits; the caller retries and reads the winner's.
    """
    row = session.get(ServerSecret, name)
    if row is None:
        row = ServerSecret(name=name, value=secrets.token_urlsafe(32))
        session.add(row)
        session.flush()
    return row.value


__all__ = [
    "ATTEMPT_WINDOW",
    "INVITE_TTL",
    "MAX_CLIENT_FAILURES",
    "MAX_PAIR_FAILURES",
    "MIN_PASSWORD",
    "SESSION_TTL",
    "SIGNIN_LINK_TTL",
    "ConsoleSessions",
    "LinkInfo",
    "LinkRefused",
    "NewLink",
    "NewSession",
    "Passwords",
    "SessionInfo",
    "SigninAttempts",
    "SigninLinks",
    "TooManyAttempts",
    "check_password_rules",
    "hash_token",
    "server_secret",
]

"""API keys: create (secret shown once), authenticate, revoke, list.

A key reads ``tl_<prefix>_<secret>``: a 12-character lookup prefix and 52
characters (256 bits from ``secrets``) of secret, both lower-case base32. The
database holds the prefix and the sha256 of the whole key, never the key; for
a secret of 256 random bits a plain hash is as strong as a slow one. The
plaintext exists only in the ``CreatedKey`` returned by ``create_key``.

``authenticate`` compares hashes in constant time and fails with a distinct
``Unauthorized`` message for a missing, malformed, unknown or revoked key, or
one whose user has left the organisation. Every other read takes the
``org_id``; another organisation's key is ``NotFound`` like a missing one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput, NotFound, Unauthorized
from teachloop.core.tenancy import Principal, Role
from teachloop.store.repos.audit import AuditLog
from teachloop.store.repos.tenancy import Tenancy, parse_role
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.tenancy import ApiKey, Membership

KEY_RE = re.compile(r"^tl_([a-z2-7]{12})_([a-z2-7]{52})$")
#: ``last_used_at`` is refreshed at most this often, so authentication is rarely a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)
_CREATE_HINT = "create one with `teachloop admin keys create`"
_DUMMY_HASH = hashlib.sha256(b"teachloop: no such key").hexdigest()


#: The key named by a prefix, with its user's membership in the key's organisation (None when it has left).
_AUTH = (
    select(ApiKey.id, ApiKey.org_id, ApiKey.user_id, ApiKey.role, ApiKey.secret_hash, ApiKey.revoked_at,
           ApiKey.last_used_at, Membership.id.label("membership_id"))
    .outerjoin(Membership, and_(Membership.org_id == ApiKey.org_id, Membership.user_id == ApiKey.user_id))
    .where(ApiKey.prefix == bindparam("prefix"))
)


def _b32(nbytes: int) -> str:
    return base64.b32encode(secrets.token_bytes(nbytes)).decode().rstrip("=").lower()


def hash_key(plaintext: str) -> str:
    """The hex sha256 stored for a key."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just created: the row, and the plaintext ``secret`` (shown once, stored nowhere)."""

    key: ApiKey
    secret: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"CreatedKey(key={self.key.id!r}, secret='tl_{self.key.prefix}_…')"


class ApiKeys:
    """API keys within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)
        self._last_used: dict[str, datetime | None] = {}  # key id -> last_used_at, as authenticate read it

    def create_key(
        self, org_id: str, user_id: str | None, role: Role | str, name: str, *, actor: str = "system"
    ) -> CreatedKey:
        """A new key for ``user_id`` (None: a service key) in ``org_id`` with ``role``.

        The user must be a member, and the key's role may not exceed theirs
        (admins and owners may grant any organisation role). Returns the plaintext once.
        The operator role is refused here: only ``create_operator_key`` mints it.
        """
        role = parse_role(role)
        if role is Role.OPERATOR:
            raise InvalidInput(
                "an operator key is minted only with `teachloop admin keys operator`", param="role"
            )
        name = _key_name(name)
        tenancy = Tenancy(self.session)
        tenancy.get_org(org_id)
        if user_id is not None:
            member_role = tenancy.get_membership(org_id, user_id).role_enum
            if not may_grant(member_role, role):
                raise InvalidInput(
                    f"cannot create a {role.value!r} key for a user whose role is {member_role.value!r}",
                    param="role",
                )
        return self._insert(org_id, user_id, role, name, actor)

    def create_operator_key(self, org_id: str, name: str, *, actor: str = "system") -> CreatedKey:
        """A new platform operator key (a service key with ``Role.OPERATOR``), filed under ``org_id``.

        It sees server-wide figures only, never the organisation's data (``core.tenancy``).
        For the operator's tools (``teachloop admin``), never for an organisation's callers.
        """
        name = _key_name(name)
        Tenancy(self.session).get_org(org_id)
        return self._insert(org_id, None, Role.OPERATOR, name, actor)

    def _insert(self, org_id: str, user_id: str | None, role: Role, name: str, actor: str) -> CreatedKey:
        prefix = _b32(8)[:12]
        while self.session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is not None:
            prefix = _b32(8)[:12]  # pragma: no cover - 60 random bits
        plaintext = f"tl_{prefix}_{_b32(32)}"
        key = ApiKey(
            org_id=org_id,
            user_id=user_id,
            name=name,
            role=role.value,
            prefix=prefix,
            secret_hash=hash_key(plaintext),
        )
        self.session.add(key)
        self.session.flush()
        self.audit.record(org_id, actor, "api_key.create", key.id, {"name": name, "role": role.value})
        return CreatedKey(key, plaintext)

    def authenticate(self, plaintext: str | None, *, touch: bool = True) -> Principal:
        """The principal a key stands for; ``Unauthorized`` with the reason otherwise.

        With ``touch`` (in a write session) it also refreshes ``last_used_at``, at
        most once a minute; with ``touch=False`` it only reads (see ``touch``).
        One statement (``authenticate_key``) on the session's connection: this runs for every API request.
        """
        principal, last_used = authenticate_key(self.session.connection(), plaintext)
        self._last_used[principal.key_id] = last_used
        if touch:
            self.touch(principal.key_id)
        return principal

    def is_stale(self, key_id: str) -> bool:
        """Whether the key's ``last_used_at`` is due a refresh (no read right after ``authenticate``)."""
        if key_id in self._last_used:
            last = self._last_used[key_id]
        else:
            last = self.session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
        return is_due(last)

    def touch(self, key_id: str) -> None:
        """Record that the key was used now, if it is stale (for callers that authenticated read-only)."""
        if self.is_stale(key_id):
            now = utc_now()
            self.session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
            self._last_used[key_id] = now

    def get(self, org_id: str, key_id: str) -> ApiKey:
        """The organisation's key with this id; ``NotFound`` otherwise."""
        key = self.session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
        if key is None:
            raise NotFound(f"API key {key_id!r} not found", param="key_id")
        return key

    def list(self, org_id: str, *, include_revoked: bool = True) -> list[ApiKey]:
        """The organisation's keys, oldest first (rows only: the secrets are not stored)."""
        query = select(ApiKey).where(ApiKey.org_id == org_id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        return list(self.session.scalars(query.order_by(ApiKey.created_at, ApiKey.id)))

    def revoke(self, org_id: str, key_id: str, *, actor: str = "system") -> ApiKey:
        """Revoke a key from now on; revoking a revoked key changes nothing."""
        key = self.get(org_id, key_id)
        if key.revoked_at is None:
            key.revoked_at = utc_now()
            self.session.flush()
            self.audit.record(org_id, actor, "api_key.revoke", key.id)
        return key


def authenticate_key(conn: Connection, plaintext: str | None) -> tuple[Principal, datetime | None]:
    """The principal a key stands for, and the key's ``last_used_at`` (for ``is_due``); ``Unauthorized`` with
    the reason for a missing, malformed, unknown or revoked key, or one whose user has left the organisation.

    One Core statement (the key and its user's membership, ``_AUTH``) on ``conn``, in whatever transaction
    it is in (``Database.connection(write=False)`` on the request path: no ORM session per request).
    """
    if not plaintext or not plaintext.strip():
        raise Unauthorized(
            f"missing API key; send `Authorization: Bearer <key>` ({_CREATE_HINT}, or run `teachloop admin init`)"
        )
    match = KEY_RE.match(plaintext.strip())
    if match is None:
        raise Unauthorized(f"malformed API key: expected tl_<prefix>_<secret>; {_CREATE_HINT}")
    key = conn.execute(_AUTH, {"prefix": match.group(1)}).first()
    stored = key.secret_hash if key is not None else _DUMMY_HASH
    if not hmac.compare_digest(stored, hash_key(plaintext.strip())) or key is None:
        raise Unauthorized(f"unknown API key; check TEACHLOOP_API_KEY or {_CREATE_HINT}")
    if key.revoked_at is not None:
        raise Unauthorized(f"API key revoked; {_CREATE_HINT}")
    if key.user_id is not None and key.membership_id is None:
        raise Unauthorized(f"the API key's user is no longer in its organisation; {_CREATE_HINT}")
    return Principal(org_id=key.org_id, user_id=key.user_id, key_id=key.id, role=Role(key.role)), key.last_used_at


def is_due(last_used: datetime | None) -> bool:
    """Whether a key last used at ``last_used`` is due a ``last_used_at`` refresh (``LAST_USED_RESOLUTION``)."""
    return last_used is None or utc_now() - last_used >= LAST_USED_RESOLUTION


def _key_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidInput(f"a key name must be 1-200 characters, got {name!r}", param="name")
    return name


def may_grant(member: Role, wanted: Role) -> bool:
    """Whether a member of role ``member`` may create (and keep) a key of role ``wanted``.

    Their own role, or a lower one on the owner > admin > member > viewer scale; admins and owners any
    role (``create_key`` refuses the operator role before asking). ``Tenancy.set_role`` revokes the keys
    a new role fails this for.
    """
    if member == wanted or member.at_least(Role.ADMIN):
        return True
    ranked = {Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER}
    return member in ranked and wanted in ranked and member.at_least(wanted)


__all__ = ["KEY_RE", "ApiKeys", "CreatedKey", "authenticate_key", "hash_key", "is_due", "may_grant"]

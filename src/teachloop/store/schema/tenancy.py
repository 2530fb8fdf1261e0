"""Tenancy tables: organisations, users, memberships and API keys.

Organisations and users are global (a user, e.g. an expert, may belong to
several organisations); memberships and API keys belong to one organisation.
An API key row stores the sha256 of the secret and its lookup prefix, never the
secret itself. Roles are stored as the string value of ``core.tenancy.Role``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.core.tenancy import Role
from teachloop.store.schema.base import GLOBAL_TABLE, Base, OrgOwned, Timestamps, id_column, ref_column


class Organisation(Timestamps, Base):
    """A tenant: every tenant-owned row points at one."""

    __tablename__ = "organisations"
    __table_args__ = GLOBAL_TABLE

    id: Mapped[str] = id_column("org")
    name: Mapped[str] = mapped_column(String(200), unique=True)


class User(Timestamps, Base):
    """A person, identified by e-mail; joins organisations through memberships."""

    __tablename__ = "users"
    __table_args__ = GLOBAL_TABLE

    id: Mapped[str] = id_column("usr")
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    #: argon2id hash of the console password (``store.repos.sessions``); None: signs in by link only
    password_hash: Mapped[str | None] = mapped_column(String(200))


class Membership(OrgOwned, Timestamps, Base):
    """A user's role in one organisation (at most one membership per pair)."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("org_id", "user_id"),)

    id: Mapped[str] = id_column("mem")
    user_id: Mapped[str] = ref_column("users.id")
    role: Mapped[str] = mapped_column(String(16))

    @property
    def role_enum(self) -> Role:
        """``role`` as a ``Role``."""
        return Role(self.role)


class ApiKey(OrgOwned, Timestamps, Base):
    """An organisation-scoped API key: ``tl_<prefix>_<secret>``, stored as prefix + sha256."""

    __tablename__ = "api_keys"

    id: Mapped[str] = id_column("key")
    user_id: Mapped[str | None] = ref_column("users.id", nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    @property
    def role_enum(self) -> Role:
        """``role`` as a ``Role``."""
        return Role(self.role)

    @property
    def display(self) -> str:
        """The public part of the key, safe to show: ``tl_<prefix>_…``."""
        return f"tl_{self.prefix}_…"


__all__ = ["ApiKey", "Membership", "Organisation", "User"]

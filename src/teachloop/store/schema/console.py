"""Console sign-in tables: sessions, sign-in links and invitations, failed attempts, server secrets.

- ``ConsoleSession``: one signed-in browser. The cookie carries a random secret;
  the row keeps only its sha256 (``token_hash``), so a stolen database holds no
  usable session. A session belongs to one organisation (the one signed in to)
  and one user; ``revoked_at`` ends it (sign-out), ``expires_at`` bounds it.
- ``SigninLink``: a single-use link, stored as the sha256 of its token:
  ``kind="signin"`` signs an existing member in (``teachloop up`` and
  ``teachloop admin signin-link`` print one); ``kind="invite"`` makes ``email``
  a member with ``role`` when it is accepted. ``used_at`` is set exactly once.
- ``SigninAttempt``: one failed password sign-in, keyed by hashes of
  (e-mail, client address) and of the client address alone, for the rate limit.
  Global: the e-mail may name no user at all.
- ``ServerSecret``: named random secrets shared by every server process of an
  install (the key that signs console cookies). Global.

This module knows nothing of HTTP, cookies or password hashing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import GLOBAL_TABLE, Base, OrgOwned, id_column, ref_column, utc_now

LINK_KINDS = ("signin", "invite")


class ConsoleSession(OrgOwned, Base):
    """A signed-in browser session (the cookie holds the secret; this row its sha256)."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = id_column("ses")
    user_id: Mapped[str] = ref_column("users.id")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class SigninLink(OrgOwned, Base):
    """A single-use sign-in link or invitation (the sha256 of its token)."""

    __tablename__ = "signin_links"

    id: Mapped[str] = id_column("sil")
    kind: Mapped[str] = mapped_column(String(10))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str | None] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class SigninAttempt(Base):
    """One failed password sign-in (for the rate limit; rows older than the window are pruned)."""

    __tablename__ = "signin_attempts"
    __table_args__ = (
        Index("ix_signin_attempts_pair_at", "pair_hash", "at"),
        Index("ix_signin_attempts_client_at", "client_hash", "at"),
        GLOBAL_TABLE,
    )

    id: Mapped[str] = id_column("sia")
    pair_hash: Mapped[str] = mapped_column(String(64))
    client_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utc_now, index=True)


class ServerSecret(Base):
    """A named random secret shared by the install's server processes."""

    __tablename__ = "server_secrets"
    __table_args__ = GLOBAL_TABLE

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


__all__ = ["LINK_KINDS", "ConsoleSession", "ServerSecret", "SigninAttempt", "SigninLink"]

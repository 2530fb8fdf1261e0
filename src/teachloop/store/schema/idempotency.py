"""Idempotency keys: a retried POST with the same key gets the first request's resource.

An ``IdempotencyKey`` row remembers, per organisation and ``scope`` (the
route, e.g. ``runs.create``), the client's key, a digest of the request body
and the id of the resource the first request made. The row is written in the
same transaction as the resource, so a key exists iff its resource does.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import Base, OrgOwned, id_column, utc_now


class IdempotencyKey(OrgOwned, Base):
    """One used ``Idempotency-Key`` of an organisation on one route."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("org_id", "scope", "key"),)

    id: Mapped[str] = id_column("idem")
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    request_digest: Mapped[str] = mapped_column(String(71))
    resource_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


__all__ = ["IdempotencyKey"]

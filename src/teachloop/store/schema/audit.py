"""The append-only audit log: who did what to which object, when.

Rows are only ever inserted; the ORM refuses to update or delete them (a
``before_update``/``before_delete`` hook raises). ``actor`` is an id (``usr_...``,
``key_...``) or a system name (``cli``, ``system``); ``target`` is the id of the
object acted on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, id_column, utc_now


class AuditEvent(OrgOwned, Base):
    """One audited action."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_org_at", "org_id", "at"),)

    id: Mapped[str] = id_column("aud")
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(80))
    target: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    at: Mapped[datetime] = mapped_column(default=utc_now)


def _refuse(mapper: Mapper[Any], connection: Connection, target: AuditEvent) -> None:
    raise PermissionError(f"the audit log is append-only; refusing to change {target.id}")


event.listen(AuditEvent, "before_update", _refuse)
event.listen(AuditEvent, "before_delete", _refuse)


__all__ = ["AuditEvent"]

"""The audit log repository: append events, read them back per organisation.

There is no update or delete here, by design; the table refuses them too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput
from teachloop.store.schema.audit import AuditEvent


class AuditLog:
    """Append-only access to ``audit_events`` within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def record(
        self,
        org_id: str,
        actor: str,
        action: str,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event (flushed, committed with the caller's session)."""
        if not actor or not action:
            raise InvalidInput(
                "an audit event needs an actor and an action", param="action" if actor else "actor"
            )
        event = AuditEvent(org_id=org_id, actor=actor, action=action, target=target, detail=detail)
        self.session.add(event)
        self.session.flush()
        return event

    def list(self, org_id: str, *, action: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The organisation's events, newest first (optionally one action only)."""
        if not 1 <= limit <= 10_000:
            raise InvalidInput(f"limit must be 1..10000, got {limit}", param="limit")
        query = select(AuditEvent).where(AuditEvent.org_id == org_id)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        query = query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
        return list(self.session.scalars(query))


__all__ = ["AuditLog"]

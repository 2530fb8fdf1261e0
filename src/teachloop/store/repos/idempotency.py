"""``IdempotencyKeys``: what a retried POST with the same ``Idempotency-Key`` gets back.

Use inside the write transaction that creates the resource: ``seen`` first --
the id of the resource the key already made (same request digest), ``Conflict``
when the key was used with a different body, None when it is new -- then
``remember`` after creating the resource, so key and resource commit together.
Keys are scoped per organisation and per ``scope`` (the route). Never commits.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, InvalidInput
from teachloop.store.schema.idempotency import IdempotencyKey

_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def request_digest(body: Any) -> str:
    """``sha256:<hex>`` of a JSON-able request body (keys sorted, so field order does not matter)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def check_key(key: str) -> str:
    """``key`` if it is 1-200 printable ASCII characters without spaces, else ``InvalidInput``."""
    if not _KEY.match(key):
        raise InvalidInput("Idempotency-Key must be 1-200 printable ASCII characters without spaces",
                           param="Idempotency-Key")
    return key


class IdempotencyKeys:
    """Used idempotency keys, within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def seen(self, org_id: str, scope: str, key: str, digest: str) -> str | None:
        """The resource id this key made with the same body; None for a new key; ``Conflict`` for another body."""
        row = self.session.scalars(select(IdempotencyKey).where(
            IdempotencyKey.org_id == org_id, IdempotencyKey.scope == scope, IdempotencyKey.key == check_key(key),
        )).first()
        if row is None:
            return None
        if row.request_digest != digest:
            raise Conflict(f"Idempotency-Key {key!r} was already used with a different request body "
                           f"(it made {row.resource_id}); use a new key for a new request", param="Idempotency-Key")
        return row.resource_id

    def remember(self, org_id: str, scope: str, key: str, digest: str, resource_id: str) -> None:
        """Record that ``key`` made ``resource_id`` (in the caller's transaction)."""
        self.session.add(IdempotencyKey(org_id=org_id, scope=scope, key=check_key(key), request_digest=digest,
                                        resource_id=resource_id))
        self.session.flush()


__all__ = ["IdempotencyKeys", "check_key", "request_digest"]

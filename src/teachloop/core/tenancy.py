"""Tenancy: roles and the authenticated principal every request runs as.

Every row in the store belongs to one organisation; every API call runs as a
``Principal`` resolved from an organisation-scoped API key. Roles are ordered
for the admin-ish checks (``Role.at_least``); marketplace and workforce roles
(expert, buyer, broker) are capabilities rather than ranks and are checked by
membership, not by order.

``Role.OPERATOR`` is the platform operator's: it sees server-wide figures
(``/metrics``, ``/api/operator/stats``) and nothing else -- it ranks below
viewer on the organisation scale, so an operator key (typically the one a
Prometheus server holds) can neither read nor change any organisation's data.
Only ``teachloop admin keys operator`` mints one; no organisation role can.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """A member's role in an organisation."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"
    EXPERT = "expert"
    BUYER = "buyer"
    BROKER = "broker"
    OPERATOR = "operator"

    def at_least(self, other: Role) -> bool:
        """Whether this role includes the powers of ``other`` on the owner > admin > member > viewer scale."""
        return _RANK.get(self, 0) >= _RANK.get(other, 0)


_RANK = {Role.OWNER: 4, Role.ADMIN: 3, Role.MEMBER: 2, Role.VIEWER: 1}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling.

    Attributes:
        org_id: the organisation every read and write is scoped to.
        user_id: the user the key belongs to (None for a service key).
        key_id: id of the API key used.
        role: the role granted by that key.
    """

    org_id: str
    user_id: str | None
    key_id: str
    role: Role


__all__ = ["Principal", "Role"]

"""Billing tables: the operator's price table, organisations' quotas, and invoices.

- ``BillingPrice`` (global: the operator's, not an organisation's): one price per
  ``(meter, scope)`` in millionths of a minor unit (``core.billing``).
- ``BillingQuota``: one limit per ``(org_id, name)``.
- ``BillingInvoice``: one invoice per ``(org_id, period)``, with its lines and the
  ledger entry that posted it (``entry_id``; null when nothing was due). Written once.

This module knows nothing of meters or the ledger's rules; ``market.billing`` does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import GLOBAL_TABLE, Base, JSONType, OrgOwned, id_column, ref_column, utc_now


class BillingPrice(Base):
    """An operator-set price: ``micro_minor`` per ``Meter.per`` units of ``meter`` within ``scope``."""

    __tablename__ = "billing_prices"
    __table_args__ = (UniqueConstraint("meter", "scope"), GLOBAL_TABLE)

    id: Mapped[str] = id_column("price")
    meter: Mapped[str] = mapped_column(String(40))
    scope: Mapped[str] = mapped_column(String(320))
    currency: Mapped[str] = mapped_column(String(3))
    micro_minor: Mapped[int] = mapped_column(BigInteger)
    set_by: Mapped[str] = mapped_column(String(200), default="system")
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class BillingQuota(OrgOwned, Base):
    """One quota of an organisation (tokens per day, concurrent runs, spend per month)."""

    __tablename__ = "billing_quotas"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[str] = id_column("quota")
    name: Mapped[str] = mapped_column(String(40))
    limit: Mapped[int] = mapped_column(BigInteger)
    set_by: Mapped[str] = mapped_column(String(200), default="system")
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class BillingInvoice(OrgOwned, Base):
    """The invoice of one organisation for one period (a calendar month, ``YYYY-MM``)."""

    __tablename__ = "billing_invoices"
    __table_args__ = (UniqueConstraint("org_id", "period"),)

    id: Mapped[str] = id_column("inv")
    period: Mapped[str] = mapped_column(String(7))
    currency: Mapped[str | None] = mapped_column(String(3))
    total: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[list[Any]] = mapped_column(JSONType)
    entry_id: Mapped[str | None] = ref_column("ledger_entries.id", nullable=True, index=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


__all__ = ["BillingInvoice", "BillingPrice", "BillingQuota"]

"""Marketplace tables: listings, offers, orders, entitlements and the usage meter.

- ``MarketListing``: a seller organisation's (``org_id``) listing of one version it owns
  (``kind`` dataset / environment / adapter, ``resource_id``); ``digest`` is pinned at
  publication with the card, the Croissant JSON-LD and the effective licence computed then.
- ``MarketOffer``: a price (minor units + currency) per licence, row, training use or
  environment run, and what the licence grants (``use``, ``derivatives``).
- ``MarketOrder``: a buyer's (``org_id``) purchase under its idempotency key
  (``request_hash`` of the body); ``entry_id`` is the ledger entry of the sale,
  ``settle_entry_id`` the one that made earnings payable when the refund window closed,
  ``refund_entry_id`` its reversal; ``shares`` records the royalty split's inputs and parts.
- ``MarketEntitlement``: what the buyer may do with the version (``actions``) until
  ``revoked_at``; for datasets ``grant_id`` is the ``DatasetGrant`` that lets the buyer's
  loops and training runs read it (``Datasets.resolve_usable``).
- ``MarketUsage``: every entitlement check (allowed or refused) -- the access log and the
  meter; usage-priced offers are billed from its unbilled allowed rows (``billed_entry_id``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, id_column, ref_column, utc_now


class MarketListing(OrgOwned, Base):
    """A listing of one version the seller owns."""

    __tablename__ = "market_listings"

    id: Mapped[str] = id_column("lst")
    kind: Mapped[str] = mapped_column(String(20))
    resource_id: Mapped[str] = mapped_column(String(40))
    resource_ref: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(5000))
    status: Mapped[str] = mapped_column(String(20), default="draft")
    digest: Mapped[str | None] = mapped_column(String(71))
    card: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    croissant: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    licence: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    published_at: Mapped[datetime | None]


class MarketOffer(OrgOwned, Base):
    """A price for a licence of a listing."""

    __tablename__ = "market_offers"

    id: Mapped[str] = id_column("off")
    listing_id: Mapped[str] = ref_column("market_listings.id")
    pricing: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    use: Mapped[str] = mapped_column(String(20))
    derivatives: Mapped[bool] = mapped_column(Boolean)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class MarketOrder(OrgOwned, Base):
    """A purchase of an offer by the buyer organisation ``org_id``."""

    __tablename__ = "market_orders"
    __table_args__ = (UniqueConstraint("org_id", "idem_key"), Index("ix_market_orders_seller", "seller_org_id"))

    id: Mapped[str] = id_column("ord")
    seller_org_id: Mapped[str] = ref_column("organisations.id", index=False)
    offer_id: Mapped[str] = ref_column("market_offers.id")
    listing_id: Mapped[str] = ref_column("market_listings.id", index=False)
    idem_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(71))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default="paid")
    entry_id: Mapped[str | None] = mapped_column(String(40))
    settle_entry_id: Mapped[str | None] = mapped_column(String(40))
    refund_entry_id: Mapped[str | None] = mapped_column(String(40))
    shares: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    refundable_until: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class MarketEntitlement(OrgOwned, Base):
    """What the buyer ``org_id`` may do with a bought version."""

    __tablename__ = "market_entitlements"
    __table_args__ = (Index("ix_market_entitlements_resource", "org_id", "resource_id"),)

    id: Mapped[str] = id_column("etl")
    seller_org_id: Mapped[str] = ref_column("organisations.id", index=False)
    listing_id: Mapped[str] = ref_column("market_listings.id", index=False)
    order_id: Mapped[str] = ref_column("market_orders.id")
    kind: Mapped[str] = mapped_column(String(20))
    resource_id: Mapped[str] = mapped_column(String(40))
    actions: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    use: Mapped[str] = mapped_column(String(20))
    pricing: Mapped[str] = mapped_column(String(20))
    grant_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    revoked_at: Mapped[datetime | None]


class MarketUsage(OrgOwned, Base):
    """One entitlement check: the access log and the usage meter."""

    __tablename__ = "market_usage"
    __table_args__ = (Index("ix_market_usage_entitlement", "entitlement_id"),)

    id: Mapped[str] = id_column("use")
    entitlement_id: Mapped[str | None] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(20))
    allowed: Mapped[bool] = mapped_column(Boolean)
    units: Mapped[int] = mapped_column(Integer, default=1)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    billed_entry_id: Mapped[str | None] = mapped_column(String(40))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


__all__ = ["MarketEntitlement", "MarketListing", "MarketOffer", "MarketOrder", "MarketUsage"]

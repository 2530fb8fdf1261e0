"""Marketplace domain types: listings, offers, orders, entitlements, royalty shares (frozen pydantic).

Amounts are integers in the currency's minor unit (``core.money``). Enumerations name the
states and pricing models the services in ``teachloop.market`` use; the tables live in
``store.schema.market``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ResourceKind(StrEnum):
    """What a listing sells a licence to."""

    DATASET = "dataset"
    ENVIRONMENT = "environment"
    ADAPTER = "adapter"


class ListingStatus(StrEnum):
    """draft -> published -> withdrawn (withdrawal stops new sales; paid entitlements stay)."""

    DRAFT = "draft"
    PUBLISHED = "published"
    WITHDRAWN = "withdrawn"


class Pricing(StrEnum):
    """How an offer is priced: once per licence, per row, per training use or per environment run."""

    LICENCE = "licence"
    ROW = "row"
    TRAINING_USE = "training_use"
    ENV_RUN = "env_run"

    @property
    def usage(self) -> bool:
        """Whether the offer is billed from the meter (per use) rather than at purchase."""
        return self in (Pricing.TRAINING_USE, Pricing.ENV_RUN)


class Action(StrEnum):
    """What an entitlement lets the buyer do."""

    DOWNLOAD = "download"
    TRAIN = "train"
    RUN = "run"


class OrderStatus(StrEnum):
    """paid -> settled (refund window closed, earnings payable) | refunded."""

    PAID = "paid"
    SETTLED = "settled"
    REFUNDED = "refunded"


class Listing(BaseModel):
    """A published (or draft) licence listing of one version the seller owns."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Listing id, ``lst_...``.")
    org_id: str = Field(description="The seller organisation (owns the resource).")
    kind: ResourceKind = Field(description="dataset, environment or adapter.")
    resource_id: str = Field(description="The version sold: ``ds_...``, ``envv_...`` or ``av_...``.")
    resource_ref: str = Field(description="Its human reference (``name@version``).")
    title: str = Field(description="Short title.")
    description: str = Field(description="What it is, for buyers.")
    status: ListingStatus = Field(description="draft, published or withdrawn.")
    digest: str | None = Field(description="The content digest pinned at publication (None while draft).")
    card: dict[str, Any] = Field(description="The card: schema, size, preview rows, quality and lineage summaries.")
    croissant: dict[str, Any] | None = Field(description="Croissant JSON-LD (datasets, written at publication).")
    licence: dict[str, Any] = Field(description="The effective licence computed at publication (terms, sources).")
    created_at: datetime = Field(description="When it was created (UTC).")
    published_at: datetime | None = Field(description="When it was published (UTC).")


class Offer(BaseModel):
    """A price for a licence of a listing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Offer id, ``off_...``.")
    listing_id: str = Field(description="The listing it sells.")
    org_id: str = Field(description="The seller organisation.")
    pricing: Pricing = Field(description="licence, row, training_use or env_run.")
    amount: int = Field(description="Price in minor units (per licence, row, training use or run).")
    currency: str = Field(description="ISO 4217 code.")
    use: str = Field(description="What the licence grants: research, non-commercial or commercial.")
    derivatives: bool = Field(description="Whether the buyer may share adapted material.")
    active: bool = Field(description="Whether it can still be bought.")
    created_at: datetime = Field(description="When it was made (UTC).")


class RoyaltyShare(BaseModel):
    """One part of a sale's revenue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    party: str = Field(description="``platform``, ``broker:<org>``, ``org:<org>`` or ``expert:<id>``.")
    weight: str = Field(description="Its exact share of the price, as a fraction text (``3/10``).")
    amount: int = Field(description="Minor units after largest-remainder rounding.")


class Order(BaseModel):
    """A purchase of an offer by a buyer organisation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Order id, ``ord_...``.")
    org_id: str = Field(description="The buyer organisation.")
    seller_org_id: str = Field(description="The seller organisation.")
    offer_id: str = Field(description="The offer bought.")
    listing_id: str = Field(description="Its listing.")
    key: str = Field(description="The buyer's idempotency key.")
    amount: int = Field(description="What was charged at purchase, minor units (0 for usage pricing).")
    currency: str = Field(description="ISO 4217 code.")
    status: OrderStatus = Field(description="paid, settled or refunded.")
    entry_id: str | None = Field(description="The ledger entry of the sale (None when nothing was charged).")
    entitlement_id: str = Field(description="The entitlement granted.")
    refundable_until: datetime = Field(description="End of the refund window; earnings are pending until then.")
    shares: tuple[RoyaltyShare, ...] = Field(description="How the revenue was split.")
    created_at: datetime = Field(description="When it was bought (UTC).")
    replayed: bool = Field(default=False, description="True when this answers a repeated idempotency key.")


class Entitlement(BaseModel):
    """What a buyer may do with a bought version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Entitlement id, ``etl_...``.")
    org_id: str = Field(description="The grantee (buyer) organisation.")
    seller_org_id: str = Field(description="The seller organisation.")
    listing_id: str = Field(description="The listing bought.")
    order_id: str = Field(description="The order that granted it.")
    kind: ResourceKind = Field(description="dataset, environment or adapter.")
    resource_id: str = Field(description="The version it covers.")
    actions: tuple[str, ...] = Field(description="download, train, run.")
    use: str = Field(description="The licence's use: research, non-commercial or commercial.")
    pricing: Pricing = Field(description="How it is priced (usage pricing is billed from the meter).")
    active: bool = Field(description="False once revoked (refund).")
    uses: int = Field(description="Metered uses so far.")
    created_at: datetime = Field(description="When it was granted (UTC).")


class UsageRecord(BaseModel):
    """One metered use of a bought version: a download, a training use or an environment run.

    The buyer sees its own uses with ``detail`` (which run or evaluation); the seller sees the uses
    of what it sold, without ``detail`` (the buyer's run ids are the buyer's business).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Use id, ``use_...``.")
    buyer_org_id: str = Field(description="The organisation that used it.")
    seller_org_id: str = Field(description="The organisation that sold it.")
    listing_id: str = Field(description="The listing bought.")
    entitlement_id: str = Field(description="The entitlement that allowed it.")
    resource_id: str = Field(description="The version used.")
    action: str = Field(description="download, train or run.")
    units: int = Field(description="Units metered (one per run, download or training use).")
    billed: bool = Field(description="Whether a usage-priced offer has billed it already.")
    detail: dict[str, Any] | None = Field(default=None, description="Buyer view only: what the use was for.")
    created_at: datetime = Field(description="When (UTC).")


__all__ = [
    "Action",
    "Entitlement",
    "Listing",
    "ListingStatus",
    "Offer",
    "Order",
    "OrderStatus",
    "Pricing",
    "ResourceKind",
    "RoyaltyShare",
    "UsageRecord",
]

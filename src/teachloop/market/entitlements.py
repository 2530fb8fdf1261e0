"""Entitlements: what a buyer may do with what it bought, checked, metered and logged at every use.

``grant_entitlement`` (called by ``orders.buy``) records the buyer's ``MarketEntitlement``
(actions: a dataset ``download`` and ``train``; an adapter ``download``; an environment
``run``). For a dataset it also records a ``DatasetGrant`` (``store``), the table ``catalog``
and the loop/training code already read through ``Datasets.resolve_usable`` -- that is how
``train``/``loop`` (which may not import ``market``) honour a purchase: a refund revokes the
grant with the entitlement.

``require(session, org, resource, action)`` is the check every download, training run or loop
iteration on a bought dataset, and every run of a bought environment, calls: it writes one
``MarketUsage`` row (the access log and the meter) whether allowed or not, and raises
``Forbidden`` (403) naming why when no active entitlement covers the action. ``bill_usage``
bills usage-priced entitlements (per training use, per environment run) from the meter's
unbilled allowed uses: one sale entry split by lineage like a purchase.

``MarketUsageGate`` is ``catalog.usage.UsageGate`` over ``require``: the process wiring (``app``,
``cli``) installs it with ``catalog.usage.install_usage_gate`` so the loop's iterations on a bought
dataset (and whatever else meters through ``catalog.usage``) are checked and metered without
importing ``market``. A resource the organisation never bought on the marketplace is not its
business (answered False, nothing written); a usage-priced entitlement is billed at each metered use.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import Forbidden, InvalidInput
from teachloop.core.market import Action, Entitlement, Pricing, ResourceKind, UsageRecord
from teachloop.store.repos.datasets import Datasets
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.datasets import Dataset, DatasetGrant
from teachloop.store.schema.market import (
    MarketEntitlement,
    MarketListing,
    MarketOffer,
    MarketOrder,
    MarketUsage,
)

_ACTIONS = {ResourceKind.DATASET: (Action.DOWNLOAD, Action.TRAIN), ResourceKind.ADAPTER: (Action.DOWNLOAD,),
            ResourceKind.ENVIRONMENT: (Action.RUN,)}


def entitlement_view(session: Session, row: MarketEntitlement) -> Entitlement:
    """The domain view of an entitlement row, with its metered uses."""
    uses = len(list(session.scalars(select(MarketUsage.id).where(MarketUsage.entitlement_id == row.id,
                                                                  MarketUsage.allowed))))
    return Entitlement(id=row.id, org_id=row.org_id, seller_org_id=row.seller_org_id, listing_id=row.listing_id,
                       order_id=row.order_id, kind=ResourceKind(row.kind), resource_id=row.resource_id,
                       actions=tuple(row.actions), use=row.use, pricing=Pricing(row.pricing),
                       active=row.revoked_at is None, uses=uses, created_at=row.created_at)


def grant_entitlement(session: Session, order: MarketOrder, listing: MarketListing, offer: MarketOffer, *,
                      actor: str = "system") -> MarketEntitlement:
    """Record the buyer's entitlement for a paid order (and, for a dataset, the catalog's grant)."""
    kind = ResourceKind(listing.kind)
    grant_id = None
    if kind is ResourceKind.DATASET:
        d = session.get(Dataset, listing.resource_id)
        assert d is not None
        licence = "LicenseRef-market-" + offer.use
        grant_id = Datasets(session).grant(listing.org_id, d.name, order.org_id, license=licence, version=d.version,
                                           actor=actor).id
    row = MarketEntitlement(org_id=order.org_id, seller_org_id=listing.org_id, listing_id=listing.id,
                            order_id=order.id, kind=kind.value, resource_id=listing.resource_id,
                            actions=[a.value for a in _ACTIONS[kind]], use=offer.use, pricing=offer.pricing,
                            grant_id=grant_id)
    session.add(row)
    session.flush()
    return row


def revoke_entitlement(session: Session, order_id: str) -> None:
    """Revoke the entitlement of an order (refund) and its dataset grant."""
    for row in session.scalars(select(MarketEntitlement).where(MarketEntitlement.order_id == order_id)):
        if row.revoked_at is None:
            row.revoked_at = utc_now()
            if row.grant_id:
                grant = session.get(DatasetGrant, row.grant_id)
                if grant is not None:
                    Datasets(session).revoke(grant.org_id, grant.id)
    session.flush()


def entitlement_of_order(session: Session, order_id: str) -> str:
    """The id of the entitlement an order granted."""
    return str(session.scalar(select(MarketEntitlement.id).where(MarketEntitlement.order_id == order_id)))


def list_entitlements(session: Session, org_id: str) -> list[Entitlement]:
    """The organisation's entitlements, oldest first."""
    rows = session.scalars(select(MarketEntitlement).where(MarketEntitlement.org_id == org_id)
                           .order_by(MarketEntitlement.created_at, MarketEntitlement.id))
    return [entitlement_view(session, r) for r in rows]


def require(session: Session, org_id: str, resource_id: str, action: str, *, actor: str = "system",
            detail: dict[str, Any] | None = None, units: int = 1) -> MarketEntitlement:
    """The active entitlement letting ``org_id`` do ``action`` on ``resource_id``; metered and logged.

    ``Forbidden`` (403) when none covers it; the refusal is logged too.
    """
    try:
        act = Action(action)
    except ValueError:
        raise InvalidInput(f"action must be download, train or run, got {action!r}", param="action") from None
    rows = list(session.scalars(select(MarketEntitlement).where(
        MarketEntitlement.org_id == org_id, MarketEntitlement.resource_id == resource_id,
    ).order_by(MarketEntitlement.created_at)))
    found = next((r for r in rows if r.revoked_at is None and act.value in r.actions), None)
    session.add(MarketUsage(org_id=org_id, entitlement_id=found.id if found else None, resource_id=resource_id,
                            action=act.value, allowed=found is not None, units=units, detail=dict(detail or {}),
                            created_by=actor))
    session.flush()
    if found is None:
        why = ("the entitlement was revoked (refunded)" if any(r.revoked_at for r in rows)
               else "this organisation holds no entitlement for it" if not rows
               else f"the entitlement does not include {act.value}")
        raise Forbidden(f"{act.value} of {resource_id} refused: {why}; buy an offer of its listing first")
    return found


def bill_usage(session: Session, org_id: str, entitlement_id: str) -> tuple[str | None, int]:
    """Bill the unbilled metered uses of a usage-priced entitlement; returns (entry id or None, units billed)."""
    from teachloop.market.orders import post_sale

    ent = session.get(MarketEntitlement, entitlement_id)
    if ent is None or ent.org_id != org_id:
        from teachloop.core.errors import NotFound

        raise NotFound(f"entitlement {entitlement_id!r} not found", param="entitlement")
    if not Pricing(ent.pricing).usage:
        return None, 0
    uses = list(session.scalars(select(MarketUsage).where(MarketUsage.entitlement_id == ent.id, MarketUsage.allowed,
                                                           MarketUsage.billed_entry_id.is_(None))
                                .order_by(MarketUsage.created_at, MarketUsage.id)))
    units = sum(u.units for u in uses)
    if not units:
        return None, 0
    order = session.get(MarketOrder, ent.order_id)
    offer = session.get(MarketOffer, order.offer_id) if order else None
    listing = session.get(MarketListing, ent.listing_id)
    assert order is not None and offer is not None and listing is not None
    entry_id, _ = post_sale(session, org_id, ent.seller_org_id, listing, offer.amount * units, offer.currency,
                            f"market:usage:{ent.id}:{uses[-1].id}", kind="order.usage",
                            fee_bps=int(order.shares.get("fee_bps", 1000)),
                            memo=f"{units} x {offer.pricing} of {listing.resource_ref}")
    for u in uses:
        u.billed_entry_id = entry_id
    session.flush()
    return entry_id, units


def list_uses(session: Session, org_id: str, *, as_seller: bool = False, limit: int = 200) -> list[UsageRecord]:
    """The allowed, metered uses newest first: of what ``org_id`` bought, or (``as_seller``) of what it sold.

    The seller's view leaves out ``detail`` (which of the buyer's runs or evaluations used it).
    """
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"limit must be between 1 and 1000, got {limit}", param="limit")
    side = MarketEntitlement.seller_org_id if as_seller else MarketEntitlement.org_id
    rows = session.execute(
        select(MarketUsage, MarketEntitlement).join(MarketEntitlement, MarketEntitlement.id == MarketUsage.entitlement_id)
        .where(side == org_id, MarketUsage.allowed)
        .order_by(MarketUsage.created_at.desc(), MarketUsage.id.desc()).limit(limit)).all()
    return [UsageRecord(id=u.id, buyer_org_id=u.org_id, seller_org_id=e.seller_org_id, listing_id=e.listing_id,
                entitlement_id=e.id, resource_id=u.resource_id, action=u.action, units=u.units,
                billed=u.billed_entry_id is not None, detail=None if as_seller else dict(u.detail or {}),
                created_at=u.created_at) for u, e in rows]


class MarketUsageGate:
    """``catalog.usage.UsageGate`` answered from the marketplace's entitlements (see the module docstring).

    ``bill`` (default True): bill a usage-priced entitlement (``bill_usage``) right after each metered use.
    """

    def __init__(self, *, bill: bool = True, actor: str = "system") -> None:
        self.bill = bill
        self.actor = actor

    @staticmethod
    def _bought(session: Session, org_id: str, resource_id: str) -> bool:
        return session.scalar(select(MarketEntitlement.id).where(
            MarketEntitlement.org_id == org_id, MarketEntitlement.resource_id == resource_id).limit(1)) is not None

    def check_and_meter(self, session: Session, org_id: str, kind: str, resource_id: str, action: str, *,
                        units: int = 1, detail: dict[str, Any] | None = None) -> bool:
        """``require`` for a resource bought on the marketplace; False (nothing written) for any other."""
        if not self._bought(session, org_id, resource_id):
            return False
        ent = require(session, org_id, resource_id, action, actor=self.actor, detail=detail, units=units)
        if self.bill and Pricing(ent.pricing).usage:
            bill_usage(session, org_id, ent.id)
        return True

    def entitled(self, session: Session, org_id: str, kind: str, resource_id: str, action: str) -> bool:
        """Whether an active (not revoked) entitlement of ``org_id`` covers ``action`` (read-only)."""
        rows = session.scalars(select(MarketEntitlement).where(
            MarketEntitlement.org_id == org_id, MarketEntitlement.resource_id == resource_id))
        return any(r.revoked_at is None and action in r.actions for r in rows)

    def refusal(self, session: Session, org_id: str, kind: str, resource_id: str, action: str) -> str | None:
        """Why ``require`` would refuse (read-only); None when allowed or never bought here."""
        rows = list(session.scalars(select(MarketEntitlement).where(
            MarketEntitlement.org_id == org_id, MarketEntitlement.resource_id == resource_id)))
        if not rows or any(r.revoked_at is None and action in r.actions for r in rows):
            return None
        if any(r.revoked_at for r in rows):
            return f"{action} refused: the entitlement was revoked (refunded); buy an offer of its listing again"
        return f"{action} refused: the entitlement does not include {action}"


__all__ = ["MarketUsageGate", "bill_usage", "entitlement_of_order", "entitlement_view", "grant_entitlement", "list_entitlements",
           "list_uses", "require", "revoke_entitlement"]

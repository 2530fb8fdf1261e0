"""Offers: prices for a licence of a published listing, refused when they grant more than its licence.

``create_offer(session, org, listing, pricing=, amount=, currency=, use=, derivatives=)``: the
listing must be the organisation's and published (its effective licence is computed then);
``amount`` is a positive integer of minor units (``core.money.check_minor``: zero, negative and
fractional amounts are refused; ``to_minor`` turns decimal text into minor units and refuses a
fraction of a minor unit); ``currency`` an ISO 4217 code. The grant (``use``, ``derivatives``,
plus the sources' duties) is checked against the listing's sources with
``catalog.licences.check_grant``: an offer of commercial use of rows from a non-commercial
source is refused, naming those sources. ``row`` pricing is for datasets, ``env_run`` for
environments, ``training_use`` for datasets and adapters.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.catalog.licences import LicenceTerms, Use, check_grant
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.market import Offer, Pricing, ResourceKind
from teachloop.core.money import check_currency, check_minor
from teachloop.market.listings import get_listing_row
from teachloop.store.schema.market import MarketOffer

_FOR = {Pricing.LICENCE: set(ResourceKind), Pricing.ROW: {ResourceKind.DATASET},
        Pricing.TRAINING_USE: {ResourceKind.DATASET, ResourceKind.ADAPTER}, Pricing.ENV_RUN: {ResourceKind.ENVIRONMENT}}


def offer_view(row: MarketOffer) -> Offer:
    """The domain view of an offer row."""
    return Offer(id=row.id, listing_id=row.listing_id, org_id=row.org_id, pricing=Pricing(row.pricing),
                 amount=row.amount, currency=row.currency, use=row.use, derivatives=row.derivatives,
                 active=row.active, created_at=row.created_at)


def create_offer(session: Session, org_id: str, listing_id: str, *, pricing: str, amount: object, currency: str,
                 use: str = "commercial", derivatives: bool = False) -> Offer:
    """A new offer on the organisation's published listing (see the module docstring)."""
    listing = get_listing_row(session, listing_id, org_id=org_id)
    try:
        model = Pricing(pricing)
    except ValueError:
        raise InvalidInput(f"pricing must be one of {', '.join(p.value for p in Pricing)}, got {pricing!r}",
                           param="pricing") from None
    currency = check_currency(currency)
    minor = check_minor(amount, "amount", positive=True)
    if ResourceKind(listing.kind) not in _FOR[model]:
        raise InvalidInput(f"{model.value} pricing does not apply to a {listing.kind} listing", param="pricing")
    if listing.status != "published":
        raise InvalidInput(f"listing {listing.id} is {listing.status}; publish it first (its licence is computed "
                           "then)", param="listing")
    if not isinstance(derivatives, bool):
        raise InvalidInput("derivatives must be true or false", param="derivatives")
    allowed = listing.licence["terms"]
    grant = LicenceTerms(use=Use.parse(use), derivatives=derivatives, attribution=allowed["attribution"],
                         share_alike=allowed["share_alike"])
    check_grant(grant, listing.licence["sources"], param="use")
    row = MarketOffer(org_id=org_id, listing_id=listing.id, pricing=model.value, amount=minor, currency=currency,
                      use=grant.use.label, derivatives=derivatives, active=True)
    session.add(row)
    session.flush()
    return offer_view(row)


def get_offer_row(session: Session, offer_id: str) -> MarketOffer:
    """An active offer of a published listing (any seller's); ``NotFound`` otherwise."""
    row = session.get(MarketOffer, offer_id) if isinstance(offer_id, str) else None
    if row is None or not row.active:
        raise NotFound(f"offer {offer_id!r} not found", param="offer")
    get_listing_row(session, row.listing_id, published=True)
    return row


def list_offers(session: Session, listing_id: str, org_id: str) -> list[Offer]:
    """The active offers of a listing the caller may see."""
    get_listing_row(session, listing_id, org_id=org_id, published=True)
    rows = session.scalars(select(MarketOffer).where(MarketOffer.listing_id == listing_id, MarketOffer.active)
                           .order_by(MarketOffer.created_at, MarketOffer.id))
    return [offer_view(r) for r in rows]


__all__ = ["create_offer", "get_offer_row", "list_offers", "offer_view"]

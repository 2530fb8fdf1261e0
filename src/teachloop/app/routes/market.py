"""``/api/market``: listings, offers, orders, entitlements, signed downloads, refunds, earnings, payouts.

- ``POST /api/market/listings`` (member): a draft listing of a dataset, environment or adapter
  version the caller's organisation owns (another organisation's is 404 like a missing one);
  ``POST /api/market/listings/{listing_id}/publish`` computes the card, the effective licence and
  (datasets) Croissant, and pins the digest.
- ``GET /api/market/listings`` (viewer): the catalogue of published listings (``?kind=&use=&q=``),
  or the organisation's own, drafts too (``?mine=true``); ``GET .../{listing_id}`` the card (schema,
  size, preview rows, quality, lineage) and licence; ``GET .../{listing_id}/croissant`` its
  Croissant JSON-LD; ``GET .../{listing_id}/offers`` its active offers.
- ``POST /api/market/listings/{listing_id}/offers`` (member): a price; a grant beyond the listing's
  effective licence is 400 (``param: use``) naming the sources that forbid it.
- ``POST /api/market/orders`` (member, ``Idempotency-Key`` header required): buy an offer from the
  organisation's prepaid balance. The same key and body answer the first order (200, ``replayed``);
  the same key with another body is 409; too little balance is 409 ``insufficient_funds``. Nothing
  is posted for a refused call. ``GET /api/market/orders``; ``POST .../{order_id}/refund`` while the
  refund window is open.
- ``GET /api/market/entitlements`` (viewer): the organisation's own.
- ``GET /api/market/uses?side=buyer|seller`` (viewer): metered uses of what it bought, or of what
  it sold (an environment maker sees each buyer's runs, without the buyer's run details).
- ``POST /api/market/entitlements/{entitlement_id}/links`` (member): a signed download link
  (``format``: openai, dpo, parquet, hf) valid ``LINK_TTL`` seconds; ``GET
  /api/market/downloads/{token}`` (viewer) answers the file. The link is bound to the buyer
  organisation and is still presented with one of its keys: a tampered link is 403, another
  organisation's 403, an expired one 410.
- ``GET /api/market/earnings`` (viewer): the organisation's royalty accounts, pending and payable.
- ``POST /api/market/payouts`` (admin): release matured earnings (``royalties.settle_due``, driven by
  the clock alone) and pay the organisation's payable accounts out (``ledger.Payouts``, the test
  provider until a real one is configured).

The services live in ``teachloop.market``; this module knows HTTP and the request and response
models only.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from teachloop.app.auth import Admin, Deps, Member, Viewer
from teachloop.catalog.licences import Use
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.market import Entitlement, Listing, Offer, Order, ResourceKind, UsageRecord
from teachloop.ledger import Ledger, Payouts, TestProvider
from teachloop.market import downloads, entitlements, listings, offers, orders, royalties
from teachloop.store.schema.base import utc_now

router = APIRouter(prefix="/api/market", tags=["market"])

_KEY_HELP = ("Your idempotency key for this purchase (1-255 printable ASCII characters, no spaces): the same key "
             "and body answer the first order; the same key with another body is 409.")


class _Strict(BaseModel):
    """Unknown fields and wrong types are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ------------------------------------------------------------------------------------------ requests


class ListingCreate(_Strict):
    """A draft listing of a version the caller's organisation owns."""

    kind: str = Field(description="What is sold: dataset, environment or adapter.")
    ref: str = Field(description="The version: a dataset NAME@N, an environment NAME@VERSION, an adapter NAME@N, "
                                 "or its id.")
    title: str = Field(description="Short title (1-200 characters).")
    description: str = Field(default="", description="What it is, for buyers (at most 5000 characters).")


class OfferCreate(_Strict):
    """A price for a licence of a published listing."""

    pricing: str = Field(default="licence", description="licence (once), row (per dataset row), training_use or "
                                                        "env_run (billed per use from the meter).")
    amount: int = Field(description="Price in minor units of the currency (cents for USD); positive.")
    currency: str = Field(description="ISO 4217 code, e.g. USD.")
    use: str = Field(default="commercial", description="What the licence grants: research, non-commercial or "
                                                       "commercial; refused when the listing's licence forbids it.")
    derivatives: bool = Field(default=False, description="Whether the buyer may share adapted material.")


class OrderCreate(_Strict):
    """A purchase of an offer."""

    offer: str = Field(description="The offer to buy (off_...).")


class LinkCreate(_Strict):
    """A signed download link for an entitlement."""

    format: str = Field(default="openai", description="openai (chat JSONL), dpo (TRL pairs JSONL), parquet or hf "
                                                      "(a Hugging Face datasets folder, tar.gz).")


class PayoutRun(_Strict):
    """A payout batch."""

    batch: str = Field(default="", description="Batch name; rerunning a batch pays nothing twice (default: "
                                               "today's date).")


# ------------------------------------------------------------------------------------------ responses


class LicenceOut(BaseModel):
    """A listing's effective licence, computed from its lineage at publication."""

    use: str | None = Field(description="research, non-commercial or commercial (None while draft).")
    derivatives: bool | None = Field(description="Whether adapted material may be shared.")
    attribution: bool | None = Field(description="Whether attribution is required.")
    share_alike: bool | None = Field(description="Whether adapted material must keep the licence.")
    summary: str = Field(description="A short human text of the terms.")
    sources: dict[str, int] = Field(description="Each source licence and how many rows (or parts) carry it.")


class ListingOut(BaseModel):
    """A listing: its card (schema, size, preview rows, quality, lineage) and its licence."""

    id: str = Field(description="Listing id (lst_...).")
    org_id: str = Field(description="The seller organisation.")
    kind: str = Field(description="dataset, environment or adapter.")
    resource_id: str = Field(description="The version sold (ds_..., envv_..., av_...).")
    resource_ref: str = Field(description="Its human reference (name@version).")
    title: str = Field(description="Short title.")
    description: str = Field(description="What it is, for buyers.")
    status: str = Field(description="draft, published or withdrawn.")
    digest: str | None = Field(description="The content digest pinned at publication (None while draft).")
    card: dict[str, Any] = Field(description="schema, size, preview (up to 3 rows), quality and lineage summaries.")
    licence: LicenceOut = Field(description="The effective licence.")
    has_croissant: bool = Field(description="Whether Croissant JSON-LD is available (published datasets).")
    created_at: datetime = Field(description="When it was created (UTC).")
    published_at: datetime | None = Field(description="When it was published (UTC).")


class ListingList(BaseModel):
    """Listings, oldest first."""

    data: list[ListingOut] = Field(description="The listings.")


class CroissantOut(BaseModel):
    """Croissant 1.0 JSON-LD of a published dataset listing (further Croissant properties included as they are)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    context: dict[str, Any] = Field(alias="@context", description="The JSON-LD context.")
    type: str = Field(alias="@type", description="sc:Dataset.")
    name: str = Field(description="The dataset snapshot's name (NAME-vN).")
    description: str = Field(description="What it is.")
    conformsTo: str = Field(description="The Croissant version it conforms to.")
    license: list[str] = Field(description="Its rows' licences (SPDX URLs or LicenseRef-...).")
    distribution: list[dict[str, Any]] = Field(description="The file objects (JSONL, with sha256).")
    recordSet: list[dict[str, Any]] = Field(description="The record sets and their fields.")


class OfferOut(BaseModel):
    """An offer: a price for a licence of a listing."""

    id: str = Field(description="Offer id (off_...).")
    listing_id: str = Field(description="The listing it sells.")
    org_id: str = Field(description="The seller organisation.")
    pricing: str = Field(description="licence, row, training_use or env_run.")
    amount: int = Field(description="Price in minor units (per licence, row, training use or run).")
    currency: str = Field(description="ISO 4217 code.")
    use: str = Field(description="What the licence grants: research, non-commercial or commercial.")
    derivatives: bool = Field(description="Whether the buyer may share adapted material.")
    active: bool = Field(description="Whether it can still be bought.")
    created_at: datetime = Field(description="When it was made (UTC).")


class OfferList(BaseModel):
    """Offers, oldest first."""

    data: list[OfferOut] = Field(description="The offers.")


class ShareOut(BaseModel):
    """One part of a sale's revenue."""

    party: str = Field(description="platform, broker:<org>, org:<org> or expert:<id>.")
    weight: str = Field(description="Its exact share of the price, as a fraction text (3/10).")
    amount: int = Field(description="Minor units after largest-remainder rounding.")


class OrderOut(BaseModel):
    """A purchase."""

    id: str = Field(description="Order id (ord_...).")
    org_id: str = Field(description="The buyer organisation.")
    seller_org_id: str = Field(description="The seller organisation.")
    offer_id: str = Field(description="The offer bought.")
    listing_id: str = Field(description="Its listing.")
    key: str = Field(description="The buyer's idempotency key.")
    amount: int = Field(description="What was charged, minor units (0 for usage pricing, billed from the meter).")
    currency: str = Field(description="ISO 4217 code.")
    status: str = Field(description="paid, settled or refunded.")
    entry_id: str | None = Field(description="The ledger entry of the sale (None when nothing was charged).")
    entitlement_id: str = Field(description="The entitlement granted.")
    refundable_until: datetime = Field(description="End of the refund window.")
    shares: list[ShareOut] = Field(description="How the revenue was split.")
    created_at: datetime = Field(description="When it was bought (UTC).")
    replayed: bool = Field(description="True when this answers a repeated idempotency key.")


class OrderList(BaseModel):
    """Orders, oldest first."""

    data: list[OrderOut] = Field(description="The organisation's orders.")


class EntitlementOut(BaseModel):
    """What the organisation may do with a version it bought."""

    id: str = Field(description="Entitlement id (etl_...).")
    seller_org_id: str = Field(description="The seller organisation.")
    listing_id: str = Field(description="The listing bought.")
    order_id: str = Field(description="The order that granted it.")
    kind: str = Field(description="dataset, environment or adapter.")
    resource_id: str = Field(description="The version it covers.")
    actions: list[str] = Field(description="download, train, run.")
    use: str = Field(description="research, non-commercial or commercial.")
    pricing: str = Field(description="How it is priced (usage pricing is billed from the meter).")
    active: bool = Field(description="False once revoked (refund).")
    uses: int = Field(description="Metered uses so far.")
    created_at: datetime = Field(description="When it was granted (UTC).")


class EntitlementList(BaseModel):
    """Entitlements, oldest first."""

    data: list[EntitlementOut] = Field(description="The organisation's entitlements.")


class UseList(BaseModel):
    """Metered uses, newest first (``core.market.UsageRecord``)."""

    data: list[UsageRecord] = Field(description="Uses of what the organisation bought, or (side=seller) of what it sold.")


class LinkOut(BaseModel):
    """A signed download link."""

    url: str = Field(description="Where to GET the file (with one of the organisation's keys).")
    token: str = Field(description="The signed token in the URL.")
    format: str = Field(description="The format it renders.")
    expires_at: datetime = Field(description="When it stops working (UTC); afterwards 410.")


class EarningsAccount(BaseModel):
    """One royalty account in the organisation's books."""

    account: str = Field(description="The ledger account name (royalty:<state>:<party>:<CUR>).")
    party: str = Field(description="Who it is owed to: org:<id> or expert:<id>.")
    state: str = Field(description="pending (refund window open) or payable.")
    currency: str = Field(description="ISO 4217 code.")
    amount: int = Field(description="What it holds, minor units.")


class Earnings(BaseModel):
    """The organisation's royalty balances."""

    accounts: list[EarningsAccount] = Field(description="Every royalty account in its books.")
    pending: dict[str, int] = Field(description="Total pending per currency (minor units).")
    payable: dict[str, int] = Field(description="Total payable per currency (minor units).")


class PayoutOut(BaseModel):
    """One payout of a payable account."""

    account_id: str = Field(description="The payable account paid from.")
    destination: str = Field(description="The party paid.")
    amount: int = Field(description="Minor units.")
    currency: str = Field(description="ISO 4217 code.")
    status: str = Field(description="in_transit, paid or failed.")
    entry_id: str = Field(description="The payout's ledger entry.")


class PayoutBatch(BaseModel):
    """What a payout batch did."""

    batch: str = Field(description="The batch name.")
    released: int = Field(description="Orders of the organisation's listings whose refund window closed and whose "
                                      "earnings became payable now.")
    payouts: list[PayoutOut] = Field(description="The organisation's payouts in this batch.")


# ------------------------------------------------------------------------------------------ views


def listing_out(lst: Listing) -> ListingOut:
    """The response body of a listing."""
    terms = lst.licence.get("terms", {})
    licence = LicenceOut(use=u.label if (u := _use_of(lst)) is not None else None, derivatives=terms.get("derivatives"),
                         attribution=terms.get("attribution"), share_alike=terms.get("share_alike"),
                         summary=str(lst.licence.get("summary", "not computed until published")),
                         sources=dict(lst.licence.get("sources", {})))
    return ListingOut(id=lst.id, org_id=lst.org_id, kind=lst.kind.value, resource_id=lst.resource_id,
                      resource_ref=lst.resource_ref, title=lst.title, description=lst.description,
                      status=lst.status.value, digest=lst.digest, card=lst.card, licence=licence,
                      has_croissant=lst.croissant is not None, created_at=lst.created_at,
                      published_at=lst.published_at)


def offer_out(o: Offer) -> OfferOut:
    """The response body of an offer."""
    return OfferOut(id=o.id, listing_id=o.listing_id, org_id=o.org_id, pricing=o.pricing.value, amount=o.amount,
                    currency=o.currency, use=o.use, derivatives=o.derivatives, active=o.active,
                    created_at=o.created_at)


def order_out(o: Order) -> OrderOut:
    """The response body of an order."""
    return OrderOut(id=o.id, org_id=o.org_id, seller_org_id=o.seller_org_id, offer_id=o.offer_id,
                    listing_id=o.listing_id, key=o.key, amount=o.amount, currency=o.currency, status=o.status.value,
                    entry_id=o.entry_id, entitlement_id=o.entitlement_id, refundable_until=o.refundable_until,
                    shares=[ShareOut(party=s.party, weight=s.weight, amount=s.amount) for s in o.shares],
                    created_at=o.created_at, replayed=o.replayed)


def entitlement_out(e: Entitlement) -> EntitlementOut:
    """The response body of an entitlement."""
    return EntitlementOut(id=e.id, seller_org_id=e.seller_org_id, listing_id=e.listing_id, order_id=e.order_id,
                          kind=e.kind.value, resource_id=e.resource_id, actions=list(e.actions), use=e.use,
                          pricing=e.pricing.value, active=e.active, uses=e.uses, created_at=e.created_at)


def _use_of(lst: Listing) -> Use | None:
    """The use a listing's computed licence grants (None while draft)."""
    granted = lst.licence.get("terms", {}).get("use")
    if granted is None:
        return None
    return Use(granted) if isinstance(granted, int) else Use.parse(granted)


def _matches(lst: Listing, kind: ResourceKind | None, use: Use | None, q: str | None) -> bool:
    if kind is not None and lst.kind is not kind:
        return False
    if use is not None:
        granted = _use_of(lst)
        if granted is None or granted < use:
            return False
    if q:
        text = " ".join((lst.title, lst.description, lst.resource_ref)).lower()
        return all(word in text for word in q.lower().split())
    return True


# ------------------------------------------------------------------------------------------ listings


@router.post("/listings", status_code=201, response_model=ListingOut)
def create_listing(body: ListingCreate, principal: Member, deps: Deps) -> ListingOut:
    """A draft listing of a version the organisation owns (404 for another organisation's, like a missing one)."""
    try:
        with deps.database.session() as s:
            lst = listings.create_listing(s, principal.org_id, kind=body.kind, ref=body.ref, title=body.title,
                                          description=body.description, actor=principal.key_id)
    except NotFound as err:  # the version named by ``ref`` (the repositories name it dataset/adapter/...)
        raise NotFound(err.message, param="ref") from None
    return listing_out(lst)


@router.get("/listings", response_model=ListingList)
def list_listings(
    principal: Viewer, deps: Deps,
    mine: bool = Query(False, description="The organisation's own listings (drafts too) instead of the catalogue."),
    kind: ResourceKind | None = Query(None, description="Only this kind: dataset, environment or adapter."),
    use: str | None = Query(None, description="Only listings whose licence allows at least this use: research, "
                                              "non-commercial or commercial."),
    q: str | None = Query(None, max_length=200, description="Words that must all appear in the title, description "
                                                            "or reference."),
) -> ListingList:
    """The catalogue of published listings, or the organisation's own (``mine``), filtered."""
    wanted = Use.parse(use, param="use") if use is not None else None
    with deps.database.session(write=False) as s:
        found = listings.list_listings(s, principal.org_id, mine=mine)
    return ListingList(data=[listing_out(lst) for lst in found if _matches(lst, kind, wanted, q)])


@router.get("/listings/{listing_id}", response_model=ListingOut)
def get_listing(listing_id: str, principal: Viewer, deps: Deps) -> ListingOut:
    """A listing's card and licence: any published listing, or one of the organisation's own."""
    with deps.database.session(write=False) as s:
        row = listings.get_listing_row(s, listing_id, org_id=principal.org_id, published=True)
        return listing_out(listings.listing_view(row))


@router.post("/listings/{listing_id}/publish", response_model=ListingOut)
def publish_listing(listing_id: str, principal: Member, deps: Deps) -> ListingOut:
    """Compute the card, licence and Croissant from the lineage, pin the digest and publish (idempotent)."""
    with deps.database.session() as s:
        lst = listings.publish_listing(s, principal.org_id, listing_id)
    return listing_out(lst)


@router.get("/listings/{listing_id}/croissant", response_model=CroissantOut, response_model_exclude_none=True)
def get_croissant(listing_id: str, principal: Viewer, deps: Deps) -> CroissantOut:
    """The Croissant JSON-LD of a published dataset listing (404 for other kinds and drafts)."""
    with deps.database.session(write=False) as s:
        row = listings.get_listing_row(s, listing_id, org_id=principal.org_id, published=True)
        doc = row.croissant
    if doc is None:
        raise NotFound(f"listing {listing_id!r} has no Croissant metadata (published datasets have)",
                       param="listing")
    return CroissantOut.model_validate(doc)


# ------------------------------------------------------------------------------------------ offers


@router.get("/listings/{listing_id}/offers", response_model=OfferList)
def list_offers(listing_id: str, principal: Viewer, deps: Deps) -> OfferList:
    """The active offers of a listing the organisation may see."""
    with deps.database.session(write=False) as s:
        found = offers.list_offers(s, listing_id, principal.org_id)
    return OfferList(data=[offer_out(o) for o in found])


@router.post("/listings/{listing_id}/offers", status_code=201, response_model=OfferOut)
def create_offer(listing_id: str, body: OfferCreate, principal: Member, deps: Deps) -> OfferOut:
    """A price on the organisation's published listing; 400 (``use``) naming the sources when the grant exceeds
    its licence."""
    with deps.database.session() as s:
        offer = offers.create_offer(s, principal.org_id, listing_id, pricing=body.pricing, amount=body.amount,
                                    currency=body.currency, use=body.use, derivatives=body.derivatives)
    return offer_out(offer)


# ------------------------------------------------------------------------------------------ orders


@router.post("/orders", status_code=201, response_model=OrderOut,
             responses={200: {"model": OrderOut, "description": "The first order of a repeated idempotency key."}})
def buy(
    body: OrderCreate, principal: Member, deps: Deps, response: Response,
    idempotency_key: str = Header(alias="Idempotency-Key", description=_KEY_HELP),
) -> OrderOut:
    """Buy an offer from the organisation's prepaid balance (201; 200 replaying a key; 409 for a key reused with
    another body or too little balance)."""
    with deps.database.session() as s:
        order = orders.buy(s, principal.org_id, body.offer, idempotency_key, actor=principal.key_id)
    if order.replayed:
        response.status_code = 200
    return order_out(order)


@router.get("/orders", response_model=OrderList)
def list_orders(principal: Viewer, deps: Deps) -> OrderList:
    """The organisation's orders, oldest first."""
    with deps.database.session(write=False) as s:
        found = orders.list_orders(s, principal.org_id)
    return OrderList(data=[order_out(o) for o in found])


@router.post("/orders/{order_id}/refund", response_model=OrderOut)
def refund(order_id: str, principal: Member, deps: Deps) -> OrderOut:
    """Reverse a purchase and revoke its entitlement while the refund window is open (409 afterwards)."""
    with deps.database.session() as s:
        order = orders.refund(s, principal.org_id, order_id, f"refund-{order_id}"[:255])
    return order_out(order)


# ------------------------------------------------------------------------------------------ entitlements


@router.get("/entitlements", response_model=EntitlementList)
def list_entitlements(principal: Viewer, deps: Deps) -> EntitlementList:
    """The organisation's entitlements (what it bought), oldest first."""
    with deps.database.session(write=False) as s:
        found = entitlements.list_entitlements(s, principal.org_id)
    return EntitlementList(data=[entitlement_out(e) for e in found])


@router.get("/uses", response_model=UseList)
def list_uses(principal: Viewer, deps: Deps, side: Literal["buyer", "seller"] = "buyer",
              limit: int = Query(default=200, ge=1, le=1000)) -> UseList:
    """Metered uses (downloads, training uses, environment runs): of what the organisation bought, or with
    ``side=seller`` of what it sold (without the buyer's run details)."""
    with deps.database.session(write=False) as s:
        return UseList(data=entitlements.list_uses(s, principal.org_id, as_seller=side == "seller", limit=limit))


@router.post("/entitlements/{entitlement_id}/links", status_code=201, response_model=LinkOut)
def create_link(entitlement_id: str, body: LinkCreate, principal: Member, deps: Deps) -> LinkOut:
    """A signed download link for a dataset entitlement, valid ``LINK_TTL`` seconds."""
    with deps.database.session() as s:
        token = downloads.sign_link(s, principal.org_id, entitlement_id, body.format)
    return LinkOut(url=f"/api/market/downloads/{token}", token=token, format=body.format,
                   expires_at=utc_now() + timedelta(seconds=downloads.LINK_TTL))


_MEDIA = ("application/jsonl", "application/vnd.apache.parquet", "application/gzip")


@router.get("/downloads/{token}", response_class=Response,
            responses={200: {"description": "The dataset in the link's format.",
                             "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in _MEDIA}}})
def download(token: str, principal: Viewer, deps: Deps) -> Response:
    """The file a signed link names (403 tampered or another organisation's, 410 expired); metered."""
    body, media, name = downloads.open_link(deps.database, principal.org_id, token, max_age=downloads.LINK_TTL,
                                            actor=principal.key_id)
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


# ------------------------------------------------------------------------------------------ earnings, payouts


@router.get("/earnings", response_model=Earnings)
def earnings(principal: Viewer, deps: Deps) -> Earnings:
    """The royalty accounts in the organisation's books: pending (refund window open) and payable."""
    with deps.database.session(write=False) as s:
        accounts = Ledger(s).accounts.list(principal.org_id)
    out: list[EarningsAccount] = []
    totals: dict[str, dict[str, int]] = {"pending": {}, "payable": {}}
    for acc in accounts:
        parts = acc.name.split(":")
        if len(parts) != 5 or parts[0] != "royalty" or parts[1] not in totals:
            continue
        out.append(EarningsAccount(account=acc.name, party=f"{parts[2]}:{parts[3]}", state=parts[1],
                                   currency=acc.currency, amount=acc.held))
        totals[parts[1]][acc.currency] = totals[parts[1]].get(acc.currency, 0) + acc.held
    return Earnings(accounts=out, pending=totals["pending"], payable=totals["payable"])


@router.post("/payouts", response_model=PayoutBatch)
def run_payouts(body: PayoutRun, principal: Admin, deps: Deps) -> PayoutBatch:
    """Release matured earnings and pay the organisation's payable royalty accounts out (admin)."""
    batch = body.batch or utc_now().strftime("%Y%m%d")
    if len(batch) > 100 or any(c.isspace() or not c.isprintable() for c in batch):
        raise InvalidInput("batch must be at most 100 printable characters without spaces", param="batch")
    released, paid = royalties.release_and_pay(deps.database, Payouts(deps.database, TestProvider()), batch,
                                               org_id=principal.org_id)  # only this seller's sales
    return PayoutBatch(batch=batch, released=len(released), payouts=[
        PayoutOut(account_id=p.account_id, destination=p.destination, amount=p.amount.amount,
                  currency=p.amount.currency, status=p.status.value, entry_id=p.entry_id) for p in paid])


__all__ = ["CroissantOut", "Earnings", "EarningsAccount", "EntitlementList", "EntitlementOut", "LicenceOut",
           "LinkCreate", "LinkOut", "ListingCreate", "ListingList", "ListingOut", "OfferCreate", "OfferList",
           "OfferOut", "OrderCreate", "OrderList", "OrderOut", "PayoutBatch", "PayoutOut", "PayoutRun", "ShareOut",
           "entitlement_out", "listing_out", "offer_out", "order_out", "router"]

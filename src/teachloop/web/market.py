"""Marketplace pages: the catalogue, a listing, checkout, purchases and downloads, data requests, selling.

Buyers:

- ``/market``: published listings of every seller (``q``: words that must all
  appear in the title, description or reference; ``kind``; ``use``: the
  licence must allow at least research / non-commercial / commercial).
- ``/market/listings/{id}``: the card (schema, size, preview rows, quality),
  the lineage summary (contributors, row sources, licences), the effective
  licence and its sources, and the active offers, each with a *Buy* link.
- ``/market/checkout/{offer_id}``: the confirmation page (what is bought, the
  price, the organisation's prepaid balance) whose form carries an
  idempotency key generated for it; the POST buys through
  ``market.orders.buy`` with that key, so a double submit makes one order (the
  second answers the first). Member role.
- ``/market/purchases``: the organisation's orders and entitlements; a dataset
  entitlement has a download form (format) whose POST signs a link
  (``market.downloads.sign_link``, 15 minutes) and shows it;
  ``/market/downloads/{token}`` answers the file (``open_link``: metered; a
  tampered or another organisation's link 403, an expired one 410).
- ``/market/requests``: the organisation's data requests and the open
  marketplace requests of others, and a form to post one;
  ``/market/requests/{id}``: one request, its proposals (all of them for the
  buyer, one's own for a supplier), a form to propose one of the
  organisation's published listings, and *Accept* (behind a confirmation: the
  other proposals are declined).

Sellers: ``/market/selling`` -- the organisation's listings (drafts too), its
sales (orders of its listings), its royalty accounts (pending while the refund
window is open, then payable) and, for an admin, *Pay out* (release matured
earnings and pay payable accounts through the test provider, as ``POST
/api/market/payouts``).

Every read is scoped to the signed-in member's organisation exactly as the
``/api/market`` and ``/api/requests`` routes scope it (another organisation's
draft listing, order, entitlement or private request is the same 404 as a
missing one); reading needs the viewer role, buying, downloading links,
requests and proposals member, payouts admin.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.responses import RedirectResponse, Response

from teachloop.catalog.licences import Use
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.market import Listing, Offer, Pricing, ResourceKind
from teachloop.core.requests import ProposalCreate, RequestCreate
from teachloop.core.tenancy import Role
from teachloop.ledger import Ledger, Payouts, TestProvider
from teachloop.market import downloads, entitlements, listings, offers, orders, royalties
from teachloop.market.requests import DataRequests
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.market import MarketOrder
from teachloop.web.auth import SignedIn, app_deps, require, require_csrf
from teachloop.web.datasets import row_lines
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

#: the market's own sub-navigation: (label, path)
SECTIONS = [("Catalog", "/market"), ("Purchases", "/market/purchases"), ("Requests", "/market/requests"),
            ("Selling", "/market/selling")]
USES = ("research", "non-commercial", "commercial")
KINDS = tuple(k.value for k in ResourceKind)


def money(amount: int | None, currency: str | None) -> str:
    """Minor units as text: ``1000, "USD"`` -> ``10.00 USD`` (two decimals; None -> "—")."""
    if amount is None or currency is None:
        return "—"
    sign = "-" if amount < 0 else ""
    return f"{sign}{abs(amount) // 100}.{abs(amount) % 100:02d} {currency}"


def _use_of(lst: Listing) -> Use | None:
    granted = lst.licence.get("terms", {}).get("use")
    if granted is None:
        return None
    return Use(granted) if isinstance(granted, int) else Use.parse(granted)


def matches(lst: Listing, kind: str, use: Use | None, q: str) -> bool:
    """Whether a listing passes the catalogue's filters (the same as ``GET /api/market/listings``)."""
    if kind and lst.kind.value != kind:
        return False
    if use is not None:
        granted = _use_of(lst)
        if granted is None or granted < use:
            return False
    text = " ".join((lst.title, lst.description, lst.resource_ref)).lower()
    return all(word in text for word in q.lower().split())


def _ctx(**context: Any) -> dict[str, Any]:
    return {"sections": SECTIONS, "money": money, **context}


@router.get("/market")
def catalog(request: Request, viewer: SignedIn, q: str = "", kind: str = "", use: str = "") -> Response:
    """Published listings of every seller, filtered."""
    require(viewer, Role.VIEWER, "reading the marketplace")
    if len(q) > 200:
        raise InvalidInput("q must be at most 200 characters", param="q")
    if kind and kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}, got {kind!r}", param="kind")
    wanted = Use.parse(use, param="use") if use else None
    with app_deps(request).database.session(write=False) as s:
        found = [lst for lst in listings.list_listings(s, viewer.principal.org_id) if matches(lst, kind, wanted, q)]
    return page(request, "market_catalog.html", **_ctx(listings=found, q=q, kind=kind, use=use, kinds=KINDS,
                                                     uses=USES, use_label=_label))


def _label(lst: Listing) -> str:
    granted = _use_of(lst)
    return granted.label if granted is not None else "—"


@router.get("/market/listings/{listing_id}")
def listing_page(request: Request, viewer: SignedIn, listing_id: str) -> Response:
    """A listing's card, preview, lineage, licence and offers."""
    require(viewer, Role.VIEWER, "reading the marketplace")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        lst = listings.listing_view(listings.get_listing_row(s, listing_id, org_id=org, published=True))
        found = offers.list_offers(s, lst.id, org) if lst.status.value == "published" else []
    preview = [row_lines(row) if isinstance(row, dict) else [("row", str(row))]
               for row in lst.card.get("preview", [])]
    return page(request, "market_listing.html", **_ctx(
        listing=lst, offers=found, preview=preview, licence_use=_label(lst), own=lst.org_id == org,
        price_of=lambda o: _price(o, lst), can_buy=viewer.can(Role.MEMBER) and lst.org_id != org))


def _price(offer: Offer, lst: Listing) -> int:
    """What buying ``offer`` charges now (a per-row offer: its price times the rows; usage pricing: 0)."""
    if offer.pricing is Pricing.LICENCE:
        return offer.amount
    if offer.pricing is Pricing.ROW:
        return offer.amount * int(lst.card.get("size", {}).get("rows", 0))
    return 0


def _balance(ledger: Ledger, org_id: str, currency: str) -> int:
    name = f"buyer:prepaid:{currency}"
    return next((a.held for a in ledger.accounts.list(org_id, currency=currency) if a.name == name), 0)


@router.get("/market/checkout/{offer_id}")
def checkout(request: Request, viewer: SignedIn, offer_id: str) -> Response:
    """The confirmation page of a purchase, with a fresh idempotency key in its form."""
    require(viewer, Role.MEMBER, "buying")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        row = offers.get_offer_row(s, offer_id)
        offer = offers.offer_view(row)
        lst = listings.listing_view(listings.get_listing_row(s, row.listing_id, published=True))
        balance = _balance(Ledger(s), org, offer.currency)
    if lst.org_id == org:
        raise InvalidInput("an organisation cannot buy its own listing", param="offer")
    price = _price(offer, lst)
    return page(request, "market_checkout.html", **_ctx(
        listing=lst, offer=offer, price=price, balance=balance, enough=balance >= price,
        key=f"console-{secrets.token_urlsafe(18)}"))


@router.post("/market/checkout/{offer_id}")
def buy(request: Request, viewer: SignedIn, offer_id: str,
        key: Annotated[str, Form(max_length=255)] = "") -> Response:
    """Buy the offer with the form's idempotency key (the same key answers the first order)."""
    require(viewer, Role.MEMBER, "buying")
    if not key:
        raise InvalidInput("the purchase form lost its idempotency key; open the checkout page again", param="key")
    with app_deps(request).database.session() as s:
        order = orders.buy(s, viewer.principal.org_id, offer_id, key, actor=viewer.principal.key_id)
    return RedirectResponse(f"/market/purchases?done={order.id}", status_code=303)


@dataclass(frozen=True)
class Purchase:
    """An entitlement with its listing's title (None: the listing is no longer visible)."""

    entitlement: Any
    title: str | None


@router.get("/market/purchases")
def purchases(request: Request, viewer: SignedIn, done: str = "") -> Response:
    """The organisation's orders and entitlements, with download forms."""
    require(viewer, Role.VIEWER, "reading purchases")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        bought = orders.list_orders(s, org)
        ents = entitlements.list_entitlements(s, org)
        titles: dict[str, str] = {}
        for e in ents:
            with contextlib.suppress(NotFound):
                titles[e.listing_id] = listings.get_listing_row(s, e.listing_id, published=True).title
        ledger = Ledger(s)
        balances = [(a.currency, a.held) for a in ledger.accounts.list(org) if a.name.startswith("buyer:prepaid:")]
    return page(request, "market_purchases.html", **_ctx(
        orders=bought, purchases=[Purchase(e, titles.get(e.listing_id)) for e in ents], done=done,
        balances=balances, formats=downloads.DOWNLOAD_FORMATS, can_write=viewer.can(Role.MEMBER)))


@router.post("/market/entitlements/{entitlement_id}/link")
def make_link(request: Request, viewer: SignedIn, entitlement_id: str,
              format: Annotated[str, Form(max_length=20)] = "openai") -> Response:
    """Sign a download link for the entitlement and show it."""
    require(viewer, Role.MEMBER, "downloading")
    with app_deps(request).database.session() as s:
        token = downloads.sign_link(s, viewer.principal.org_id, entitlement_id, format)
    return page(request, "market_link.html", **_ctx(url=f"/market/downloads/{token}", format=format,
                                                  minutes=downloads.LINK_TTL // 60, entitlement=entitlement_id))


@router.get("/market/downloads/{token}")
def download(request: Request, viewer: SignedIn, token: str) -> Response:
    """The file a signed link names (metered)."""
    require(viewer, Role.VIEWER, "downloading")
    body, media, name = downloads.open_link(app_deps(request).database, viewer.principal.org_id, token,
                                            max_age=downloads.LINK_TTL, actor=viewer.principal.key_id)
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"',
                                                     "Cache-Control": "no-store"})


# ------------------------------------------------------------------------------------------ requests


@router.get("/market/requests")
def request_list(request: Request, viewer: SignedIn) -> Response:
    """The organisation's data requests and the open marketplace requests of others."""
    require(viewer, Role.VIEWER, "reading data requests")
    with app_deps(request).database.session(write=False) as s:
        found = DataRequests(s).list_requests(viewer.principal.org_id)
    return page(request, "market_requests.html", **_ctx(requests=found, org=viewer.principal.org_id,
                                                      can_write=viewer.can(Role.MEMBER), uses=USES))


def _model(model: Any, **fields: Any) -> Any:
    """``model(**fields)``; a refused field is a 400 naming it."""
    try:
        return model(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or "input"
        raise InvalidInput(f"{param}: {first.get('msg', 'invalid value')}", param=param) from None


def _optional_int(raw: str, param: str) -> int | None:
    if not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{param} must be a whole number, got {raw!r}", param=param) from None


@router.post("/market/requests")
def post_request(
    request: Request, viewer: SignedIn,
    title: Annotated[str, Form(max_length=200)] = "",
    description: Annotated[str, Form(max_length=10_000)] = "",
    format: Annotated[str, Form(max_length=40)] = "",
    size: Annotated[str, Form(max_length=12)] = "",
    licences: Annotated[str, Form(max_length=400)] = "",
    budget: Annotated[str, Form(max_length=20)] = "",
    currency: Annotated[str, Form(max_length=3)] = "USD",
    visibility: Annotated[str, Form(max_length=20)] = "marketplace",
) -> Response:
    """Post a data request (open; a marketplace request is seen by other organisations)."""
    require(viewer, Role.MEMBER, "posting a data request")
    if not title.strip():
        raise InvalidInput("give the request a title", param="title")
    if not description.strip():
        raise InvalidInput("describe the task the data is for", param="description")
    if visibility not in ("marketplace", "private"):
        raise InvalidInput("visibility must be marketplace or private", param="visibility")
    body = _model(RequestCreate, title=title.strip(), description=description, format=format.strip() or None,
                  size=_optional_int(size, "size"), budget=_optional_int(budget, "budget"),
                  licences=[x.strip() for x in licences.split(",") if x.strip()],
                  currency=currency.upper() or "USD", visibility=visibility)
    with app_deps(request).database.session() as s:
        out = DataRequests(s).post(viewer.principal.org_id, body, actor=viewer.principal.key_id)
    return RedirectResponse(f"/market/requests/{out.id}", status_code=303)


def _request_context(request: Request, viewer: SignedIn, request_id: str) -> dict[str, Any]:
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        repo = DataRequests(s)
        found = repo.get(org, request_id)
        proposals = repo.proposals(org, request_id)
        own = [lst for lst in listings.list_listings(s, org, mine=True) if lst.status.value == "published"]
        titles = {}
        for p in proposals:
            with contextlib.suppress(NotFound):
                titles[p.listing_id] = listings.get_listing_row(s, p.listing_id, org_id=org, published=True).title
    return _ctx(req=found, proposals=proposals, titles=titles, mine=found.org_id == org, own_listings=own,
                can_write=viewer.can(Role.MEMBER))


@router.get("/market/requests/{request_id}")
def request_page(request: Request, viewer: SignedIn, request_id: str, done: str = "") -> Response:
    """One data request, its proposals, and what the member can do with it."""
    require(viewer, Role.VIEWER, "reading data requests")
    return page(request, "market_request.html", done=done, **_request_context(request, viewer, request_id))


@router.post("/market/requests/{request_id}/proposals")
def propose(request: Request, viewer: SignedIn, request_id: str,
            listing: Annotated[str, Form(max_length=40)] = "",
            price: Annotated[str, Form(max_length=20)] = "",
            note: Annotated[str, Form(max_length=5000)] = "") -> Response:
    """Propose one of the organisation's published listings for an open request."""
    require(viewer, Role.MEMBER, "proposing a listing")
    if not listing:
        raise InvalidInput("choose one of your published listings", param="listing")
    body = _model(ProposalCreate, listing_id=listing, price=_optional_int(price, "price"), note=note)
    with app_deps(request).database.session() as s:
        DataRequests(s).propose(viewer.principal, request_id, body)
    return RedirectResponse(f"/market/requests/{request_id}?done=proposed", status_code=303)


@router.get("/market/requests/{request_id}/proposals/{proposal_id}/accept")
def confirm_accept(request: Request, viewer: SignedIn, request_id: str, proposal_id: str) -> Response:
    """What accepting the proposal does, and the button that does it."""
    require(viewer, Role.MEMBER, "accepting a proposal")
    context = _request_context(request, viewer, request_id)
    chosen = next((p for p in context["proposals"] if p.id == proposal_id), None)
    if chosen is None or not context["mine"]:
        raise NotFound(f"proposal {proposal_id!r} not found", param="proposal")
    others = [p for p in context["proposals"] if p.id != proposal_id and p.status.value == "proposed"]
    return page(request, "market_accept.html", chosen=chosen, others=others, **context)


@router.post("/market/requests/{request_id}/proposals/{proposal_id}/accept")
def accept(request: Request, viewer: SignedIn, request_id: str, proposal_id: str) -> Response:
    """Accept the proposal: the others are declined, the request becomes matched."""
    require(viewer, Role.MEMBER, "accepting a proposal")
    with app_deps(request).database.session() as s:
        DataRequests(s).accept(viewer.principal.org_id, request_id, proposal_id)
    return RedirectResponse(f"/market/requests/{request_id}?done=accepted", status_code=303)


# ------------------------------------------------------------------------------------------ selling


@dataclass(frozen=True)
class Royalty:
    """One royalty account in the organisation's books."""

    account: str
    party: str
    state: str
    currency: str
    amount: int


def royalty_accounts(ledger: Ledger, org_id: str) -> list[Royalty]:
    """The ``royalty:<state>:<party>:<CUR>`` accounts of the organisation's books (as ``/api/market/earnings``)."""
    out = []
    for acc in ledger.accounts.list(org_id):
        parts = acc.name.split(":")
        if len(parts) == 5 and parts[0] == "royalty" and parts[1] in ("pending", "payable"):
            out.append(Royalty(acc.name, f"{parts[2]}:{parts[3]}", parts[1], acc.currency, acc.held))
    return out


@router.get("/market/selling")
def selling(request: Request, viewer: SignedIn, done: str = "") -> Response:
    """The organisation's listings, sales, buyers' metered uses, earnings (pending, payable) and payouts."""
    require(viewer, Role.VIEWER, "reading sales")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        mine = listings.list_listings(s, org, mine=True)
        sales = list(s.scalars(select(MarketOrder).where(MarketOrder.seller_org_id == org)
                               .order_by(MarketOrder.created_at.desc(), MarketOrder.id)))
        accounts = royalty_accounts(Ledger(s), org)
        uses = entitlements.list_uses(s, org, as_seller=True, limit=100)
    totals: dict[str, dict[str, int]] = {"pending": {}, "payable": {}}
    for acc in accounts:
        totals[acc.state][acc.currency] = totals[acc.state].get(acc.currency, 0) + acc.amount
    titles = {lst.id: lst.title for lst in mine}
    return page(request, "market_selling.html", **_ctx(
        listings=mine, sales=sales, uses=uses, titles=titles, accounts=accounts, totals=totals, done=done,
        can_pay=viewer.can(Role.ADMIN), batch=utc_now().strftime("%Y%m%d")))


@router.post("/market/payouts")
def payouts(request: Request, viewer: SignedIn, batch: Annotated[str, Form(max_length=100)] = "") -> Response:
    """Release matured earnings and pay the organisation's payable accounts out (admin)."""
    require(viewer, Role.ADMIN, "paying out earnings")
    batch = batch.strip() or utc_now().strftime("%Y%m%d")
    if any(c.isspace() or not c.isprintable() for c in batch):
        raise InvalidInput("batch must be printable characters without spaces", param="batch")
    deps = app_deps(request)
    released, paid = royalties.release_and_pay(deps.database, Payouts(deps.database, TestProvider()), batch,
                                               org_id=viewer.principal.org_id)
    return RedirectResponse(f"/market/selling?done=released-{len(released)}-paid-{len(paid)}", status_code=303)


__all__ = ["KINDS", "SECTIONS", "USES", "Purchase", "Royalty", "matches", "money", "router", "royalty_accounts"]

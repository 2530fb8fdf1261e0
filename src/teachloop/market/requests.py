"""Data requests and brokers: post a request, match it to listings, propose, accept.

``DataRequests(session)``, every call scoped to the caller's organisation:

- ``post(org, body)``: a buyer's request (``core.requests.RequestCreate``).
- ``list_requests(org)`` / ``get(org, id)``: the caller's own requests and other organisations' open
  ``marketplace`` requests; a private or closed request of another organisation is 404.
- ``matches(org, id, embedder)``: published listings of *other* organisations (the
  ``market_listings`` table, with their active offers) that pass the hard filters
  (``market.matching.hard_filter``: every licence term needed is granted, the cheapest such
  offer for ``size`` rows fits the budget in the request's currency, the format), ranked by
  cosine similarity of the request text and the listing card with a real embedding model.
- ``propose(principal, id, body)``: a supplier proposes one of its own listings; an
  organisation holding the ``broker`` role may propose another organisation's listing and
  records itself as ``broker_org_id`` with ``commission_bps``. Only open requests.
- ``accept(org, id, proposal_id, order_ref)``: the buyer accepts one proposal (the others are
  declined, the request becomes ``matched``); ``attach_order`` links the order placed later.
- ``fulfil(org, id, listing_id)``: the buyer marks the request fulfilled by a listing
  (e.g. a new listing made for it).

``accepted_match(session, order_ref)`` is the seam to the royalty split: for an order that came
from an accepted proposal it returns the broker and commission (``core.requests.AcceptedMatch``),
else None.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from teachloop.core.market import Order
from teachloop.core.money import check_currency
from teachloop.core.requests import (
    AcceptedMatch,
    DataRequestOut,
    Match,
    MatchList,
    ProposalCreate,
    ProposalOut,
    ProposalStatus,
    RequestCreate,
    RequestStatus,
)
from teachloop.core.tenancy import Principal, Role
from teachloop.market.matching import Candidate, Embedder, MiniLM, Need, hard_filter, rank
from teachloop.store.schema import DataRequest, MarketListing, MarketOffer, RequestProposal

#: A use implies the narrower ones.
_IMPLIED = {
    "commercial": {"commercial", "non-commercial", "research"},
    "non-commercial": {"non-commercial", "research"},
    "research": {"research"},
}


def _request_out(row: DataRequest) -> DataRequestOut:
    return DataRequestOut(id=row.id, org_id=row.org_id, title=row.title, description=row.description,
                          format=row.format, size=row.size, quality_bar=row.quality_bar, licences=list(row.licences),
                          budget=row.budget, currency=row.currency, deadline=row.deadline, visibility=row.visibility,
                          status=RequestStatus(row.status), fulfilled_by=row.fulfilled_by, created_at=row.created_at)


def _proposal_out(row: RequestProposal) -> ProposalOut:
    return ProposalOut(id=row.id, request_id=row.request_id, org_id=row.org_id, listing_id=row.candidate_ref,
                       supplier_org_id=row.supplier_org_id, broker_org_id=row.broker_org_id,
                       commission_bps=row.commission_bps, price=row.price, score=row.score, note=row.note,
                       status=ProposalStatus(row.status), order_ref=row.order_ref, created_at=row.created_at)


def _terms(listing: MarketListing, offer: MarketOffer) -> frozenset[str]:
    terms = set(_IMPLIED.get(offer.use, {offer.use}))
    if offer.derivatives:
        terms.add("derivatives")
    licence = listing.licence or {}
    for key in ("terms", "licenses", "licences", "spdx", "id"):
        value = licence.get(key)
        values = value if isinstance(value, list) else [value]
        terms.update(str(v).lower() for v in values if isinstance(v, str))
    return frozenset(terms)


def _formats(listing: MarketListing) -> frozenset[str]:
    card = listing.card or {}
    found = {listing.kind}
    for key in ("format", "kind", "formats", "task_categories"):
        value = card.get(key)
        values = value if isinstance(value, list) else [value]
        found.update(str(v) for v in values if isinstance(v, str))
    return frozenset(f.lower() for f in found)


def _card_text(listing: MarketListing) -> str:
    card = listing.card or {}
    extra = [str(card[k]) for k in ("description", "summary", "tags", "task_categories") if card.get(k)]
    return " ".join([listing.description, *extra])


class DataRequests:
    """Data requests, matches and proposals over one session (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # ------------------------------------------------------------------ requests
    def post(self, org_id: str, body: RequestCreate, *, actor: str = "system") -> DataRequestOut:
        """Store a new open request of the buyer ``org_id``."""
        currency = check_currency(body.currency, "currency")
        if body.deadline is not None:
            deadline = body.deadline if body.deadline.tzinfo else body.deadline.replace(tzinfo=UTC)
            if deadline <= datetime.now(UTC):
                raise InvalidInput("deadline must be in the future", param="deadline")
        else:
            deadline = None
        licences = sorted({t.strip().lower() for t in body.licences if t.strip()})
        row = DataRequest(org_id=org_id, title=body.title.strip(), description=body.description.strip(),
                          format=body.format.lower() if body.format else None, size=body.size,
                          quality_bar=body.quality_bar, licences=licences, budget=body.budget, currency=currency,
                          deadline=deadline, visibility=body.visibility, status=RequestStatus.OPEN.value,
                          created_by=actor)
        self.session.add(row)
        self.session.flush()
        return _request_out(row)

    def list_requests(self, org_id: str, *, limit: int = 100) -> list[DataRequestOut]:
        """The organisation's requests and the open marketplace requests of others, newest first."""
        rows = self.session.scalars(
            select(DataRequest)
            .where(or_(DataRequest.org_id == org_id,
                       (DataRequest.visibility == "marketplace") & (DataRequest.status == RequestStatus.OPEN.value)))
            .order_by(DataRequest.created_at.desc(), DataRequest.id).limit(limit)
        )
        return [_request_out(r) for r in rows]

    def _visible(self, org_id: str, request_id: str) -> DataRequest:
        row = self.session.get(DataRequest, request_id)
        if row is None or (row.org_id != org_id and not (
                row.visibility == "marketplace" and row.status == RequestStatus.OPEN.value)):
            raise NotFound(f"data request {request_id!r} not found", param="request_id")
        return row

    def _own(self, org_id: str, request_id: str) -> DataRequest:
        row = self.session.get(DataRequest, request_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"data request {request_id!r} not found", param="request_id")
        return row

    def get(self, org_id: str, request_id: str) -> DataRequestOut:
        """One request the organisation can see."""
        return _request_out(self._visible(org_id, request_id))

    # ------------------------------------------------------------------ matching
    def candidates(self, request: DataRequest) -> dict[str, Candidate | str]:
        """Each published listing of other organisations -> its best candidate offer, or why none fits."""
        need = Need(terms=frozenset(request.licences), budget=request.budget, currency=request.currency,
                    format=request.format)
        listings = self.session.scalars(
            select(MarketListing).where(MarketListing.status == "published", MarketListing.org_id != request.org_id)
            .order_by(MarketListing.id)
        )
        out: dict[str, Candidate | str] = {}
        for listing in listings:
            offers = self.session.scalars(
                select(MarketOffer).where(MarketOffer.listing_id == listing.id, MarketOffer.active.is_(True))
                .order_by(MarketOffer.amount, MarketOffer.id)
            )
            best: Candidate | None = None
            why = "no active offer"
            for offer in offers:
                price = offer.amount * request.size if offer.pricing == "row" and request.size else offer.amount
                candidate = Candidate(kind="listing", ref=listing.id, org_id=listing.org_id, title=listing.title,
                                      text=_card_text(listing), terms=_terms(listing, offer), price=price,
                                      currency=offer.currency, formats=_formats(listing))
                reason = hard_filter(need, candidate)
                if reason is None and (best is None or (candidate.price or 0) < (best.price or 0)):
                    best = candidate
                elif reason is not None:
                    why = reason
            out[listing.id] = best if best is not None else why
        return out

    def matches(self, org_id: str, request_id: str, embedder: Embedder | None = None,
                *, limit: int = 20) -> MatchList:
        """Listings that pass the hard filters, best match first (see the module docstring)."""
        request = self._visible(org_id, request_id)
        found = self.candidates(request)
        passing = [c for c in found.values() if isinstance(c, Candidate)]
        excluded = {ref: why for ref, why in found.items() if isinstance(why, str)}
        query = " ".join(filter(None, [request.title, request.description, request.format]))
        ranked = rank(query, passing, embedder or MiniLM()) if passing else []
        return MatchList(request_id=request.id, excluded=excluded, data=[
            Match(listing_id=c.ref, supplier_org_id=c.org_id, title=c.title, score=round(score, 6), price=c.price,
                  currency=c.currency)
            for c, score in ranked[:limit]
        ])

    # ------------------------------------------------------------------ proposals
    def propose(self, principal: Principal, request_id: str, body: ProposalCreate) -> ProposalOut:
        """Propose a listing for an open request (a broker may propose another organisation's listing)."""
        request = self._visible(principal.org_id, request_id)
        if request.status != RequestStatus.OPEN.value:
            raise Conflict(f"data request {request_id} is {request.status}; only an open one takes proposals",
                           param="request_id")
        if request.org_id == principal.org_id:
            raise InvalidInput("an organisation cannot propose on its own request", param="request_id")
        listing = self.session.get(MarketListing, body.listing_id)
        if listing is None or (listing.status != "published" and listing.org_id != principal.org_id):
            raise NotFound(f"listing {body.listing_id!r} not found", param="listing_id")
        broker = listing.org_id != principal.org_id
        if broker and principal.role is not Role.BROKER:
            raise Forbidden("only a broker key may propose another organisation's listing", param="listing_id")
        if not broker and body.commission_bps:
            raise InvalidInput("commission_bps is for a broker proposing another's listing", param="commission_bps")
        found = self.candidates(request).get(listing.id)
        if not isinstance(found, Candidate):
            raise InvalidInput(f"listing {listing.id} cannot answer this request: {found or 'not published'}",
                               param="listing_id")
        row = RequestProposal(org_id=principal.org_id, request_id=request.id, buyer_org_id=request.org_id,
                              candidate_kind="listing", candidate_ref=listing.id, supplier_org_id=listing.org_id,
                              price=body.price if body.price is not None else found.price, note=body.note,
                              broker_org_id=principal.org_id if broker else None,
                              commission_bps=body.commission_bps if broker else 0,
                              status=ProposalStatus.PROPOSED.value, created_by=principal.key_id)
        self.session.add(row)
        self.session.flush()
        return _proposal_out(row)

    def proposals(self, org_id: str, request_id: str) -> list[ProposalOut]:
        """The request's proposals: all of them for the buyer, the caller's own for anyone else."""
        request = self._visible(org_id, request_id)
        query = select(RequestProposal).where(RequestProposal.request_id == request.id)
        if request.org_id != org_id:
            query = query.where(RequestProposal.org_id == org_id)
        return [_proposal_out(r) for r in self.session.scalars(query.order_by(RequestProposal.created_at,
                                                                               RequestProposal.id))]

    def _proposal(self, org_id: str, request_id: str, proposal_id: str) -> tuple[DataRequest, RequestProposal]:
        request = self._own(org_id, request_id)
        row = self.session.get(RequestProposal, proposal_id)
        if row is None or row.request_id != request.id:
            raise NotFound(f"proposal {proposal_id!r} not found", param="proposal_id")
        return request, row

    def accept(self, org_id: str, request_id: str, proposal_id: str, order_ref: str | None = None) -> ProposalOut:
        """The buyer accepts a proposal: the others are declined and the request is ``matched``."""
        request, row = self._proposal(org_id, request_id, proposal_id)
        if row.status == ProposalStatus.ACCEPTED.value and (order_ref is None or order_ref == row.order_ref):
            return _proposal_out(row)  # a retried accept
        if request.status != RequestStatus.OPEN.value or row.status != ProposalStatus.PROPOSED.value:
            raise Conflict(f"data request {request_id} is {request.status} and proposal {proposal_id} is "
                           f"{row.status}; only a proposed proposal on an open request can be accepted",
                           param="proposal_id")
        for other in self.session.scalars(select(RequestProposal).where(RequestProposal.request_id == request.id,
                                                                        RequestProposal.id != row.id)):
            if other.status == ProposalStatus.PROPOSED.value:
                other.status = ProposalStatus.DECLINED.value
        row.status = ProposalStatus.ACCEPTED.value
        request.status = RequestStatus.MATCHED.value
        self.session.flush()
        if order_ref is not None:
            return self.attach_order(org_id, request_id, proposal_id, order_ref)
        return _proposal_out(row)

    def attach_order(self, org_id: str, request_id: str, proposal_id: str, order_ref: str) -> ProposalOut:
        """Record the order the buyer placed for an accepted proposal (once; 409 for another order)."""
        _, row = self._proposal(org_id, request_id, proposal_id)
        if row.status != ProposalStatus.ACCEPTED.value:
            raise Conflict(f"proposal {proposal_id} is {row.status}; accept it first", param="proposal_id")
        if row.order_ref not in (None, order_ref):
            raise Conflict(f"proposal {proposal_id} already led to order {row.order_ref}", param="order_ref")
        if self.session.scalar(select(RequestProposal.id).where(RequestProposal.order_ref == order_ref,
                                                                RequestProposal.id != row.id)):
            raise Conflict(f"order {order_ref} is already recorded on another proposal", param="order_ref")
        row.order_ref = order_ref
        self.session.flush()
        return _proposal_out(row)

    def fulfil(self, org_id: str, request_id: str, listing_id: str) -> DataRequestOut:
        """The buyer marks its request fulfilled by a listing (e.g. one made for it)."""
        request = self._own(org_id, request_id)
        if request.status in (RequestStatus.FULFILLED.value, RequestStatus.CLOSED.value):
            raise Conflict(f"data request {request_id} is already {request.status}", param="request_id")
        listing = self.session.get(MarketListing, listing_id)
        if listing is None or (listing.status != "published" and listing.org_id != org_id):
            raise NotFound(f"listing {listing_id!r} not found", param="listing_id")
        request.status, request.fulfilled_by = RequestStatus.FULFILLED.value, listing.id
        self.session.flush()
        return _request_out(request)


def order_for_proposal(session: Session, org_id: str, request_id: str, proposal_id: str, offer_id: str, key: str,
                       *, actor: str = "system") -> Order:
    """Buy ``offer_id`` of the listing an accepted proposal named, paying its broker's commission.

    The order's royalty split gives the proposal's broker ``commission_bps`` of the price (``orders.buy``'s
    ``broker``), and the order is recorded on the proposal (``attach_order``), all in the caller's
    transaction. The proposal must be accepted and name a listing the offer belongs to; retrying with the
    same idempotency key returns the same order.
    """
    from teachloop.market.offers import get_offer_row
    from teachloop.market.orders import buy

    requests = DataRequests(session)
    _, row = requests._proposal(org_id, request_id, proposal_id)
    if row.status != ProposalStatus.ACCEPTED.value:
        raise Conflict(f"proposal {proposal_id} is {row.status}; accept it before ordering", param="proposal_id")
    if row.candidate_kind != "listing":
        raise InvalidInput(f"proposal {proposal_id} proposes a {row.candidate_kind}, not a listing: there is "
                           "nothing to order yet", param="proposal_id")
    if get_offer_row(session, offer_id).listing_id != row.candidate_ref:
        raise InvalidInput(f"offer {offer_id} is not an offer of listing {row.candidate_ref}, which the "
                           "proposal names", param="offer")
    order = buy(session, org_id, offer_id, key, broker=row.broker_org_id, broker_bps=row.commission_bps,
                actor=actor)
    requests.attach_order(org_id, request_id, proposal_id, order.id)
    return order


def accepted_match(session: Session, order_ref: str) -> AcceptedMatch | None:
    """The accepted proposal an order came from (broker and commission for the royalty split), or None."""
    row = session.scalar(select(RequestProposal).where(RequestProposal.order_ref == order_ref,
                                                       RequestProposal.status == ProposalStatus.ACCEPTED.value))
    if row is None:
        return None
    return AcceptedMatch(order_ref=order_ref, request_id=row.request_id, proposal_id=row.id,
                         buyer_org_id=row.buyer_org_id, supplier_org_id=row.supplier_org_id,
                         broker_org_id=row.broker_org_id, commission_bps=row.commission_bps)


__all__ = ["DataRequests", "accepted_match", "order_for_proposal"]

"""Orders: fund a buyer's balance through a payment provider, buy an offer from it, refund while pending.

Money moves only through ``ledger.Ledger``:

- ``deposit(db, charges, org, key, Money, source)`` charges ``source`` through a ``ChargeProvider``
  (outside any transaction), then posts ``deposit`` (Dr ``psp_clearing:CUR`` / Cr the buyer's
  ``buyer:prepaid:CUR``). A decline is ``PaymentDeclined`` (402) and a timeout
  ``ProviderTimeout`` (503): nothing is posted; a ``pending`` answer posts when the provider's
  webhook arrives (``charge_webhook``). ``TestCharges`` is deterministic with the failure modes
  ``declined``, ``timeout`` (charged, answer lost: a retry with the same key gets ``paid``),
  ``late`` and ``late_declined``.
- ``buy(session, org, offer, key)`` prices the offer (per licence, or per row times the rows;
  usage pricing charges nothing now and is billed from the meter), splits the price with
  ``royalties.shares`` from the lineage, and posts one ``order`` entry: Dr ``buyer:prepaid`` / Cr
  each contributor's ``royalty:pending`` account and the platform fee, then grants the
  entitlement. Not enough funds: ``InsufficientFunds``, nothing written. The same key with the
  same body returns the first order (``replayed``); with another body ``IdempotencyConflict``.
- ``refund(session, org, order_id, key)`` reverses the sale and revokes the entitlement while the
  refund window is open; afterwards (earnings released, maybe paid out) it is refused.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, IdempotencyConflict, InvalidInput, NotFound
from teachloop.core.ids import new_id
from teachloop.core.market import Order, OrderStatus, Pricing, ResourceKind, RoyaltyShare
from teachloop.core.money import Money, format_minor
from teachloop.ledger import Ledger, ProviderOutcome, ProviderReply, ProviderTimeout, check_key, request_hash
from teachloop.market.entitlements import grant_entitlement, revoke_entitlement
from teachloop.market.listings import training_datasets
from teachloop.market.offers import get_offer_row
from teachloop.market.royalties import DEFAULT_FEE_BPS, lineage_parties, open_party, party_books, shares
from teachloop.store.db import Database
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.datasets import Dataset
from teachloop.store.schema.deployments import AdapterVersion
from teachloop.store.schema.market import MarketListing, MarketOrder

REFUND_WINDOW = timedelta(days=14)


class PaymentDeclined(InvalidInput):
    """The payment provider declined the charge; nothing was posted."""

    status = 402
    code = "payment_declined"


@runtime_checkable
class ChargeProvider(Protocol):
    """What the marketplace needs from a payment provider to take a buyer's money."""

    name: str

    def charge(self, key: str, amount: Money, source: str) -> ProviderReply:
        """Charge ``source`` once per ``key``; raises ``ProviderTimeout`` when it does not answer."""
        ...


class TestCharges:
    """Deterministic charges; ``outcomes`` maps a payment source to paid/declined/timeout/late/late_declined."""

    __test__ = False
    name = "test"

    def __init__(self, outcomes: dict[str, str] | None = None) -> None:
        self.outcomes = dict(outcomes or {})
        self.replies: dict[str, ProviderReply] = {}
        self.events: list[tuple[str, ProviderOutcome]] = []

    def charge(self, key: str, amount: Money, source: str) -> ProviderReply:
        """Answer per ``outcomes[source]``; a repeated key gets its first answer."""
        if key in self.replies:
            return self.replies[key]
        behaviour = self.outcomes.get(source, "paid")
        ref = f"ch_{len(self.replies) + 1:06d}"
        if behaviour in ("paid", "timeout"):
            self.replies[key] = ProviderReply(outcome=ProviderOutcome.PAID, reference=ref)
            if behaviour == "timeout":
                raise ProviderTimeout(f"test provider timed out charging {format_minor(amount.amount, amount.currency)}")
        elif behaviour == "declined":
            self.replies[key] = ProviderReply(outcome=ProviderOutcome.DECLINED, reference=ref,
                                              message=f"card {source!r} was declined")
        else:
            self.replies[key] = ProviderReply(outcome=ProviderOutcome.PENDING, reference=ref)
            self.events.append((key, ProviderOutcome.PAID if behaviour == "late" else ProviderOutcome.DECLINED))
        return self.replies[key]


def balance_account(ledger: Ledger, org_id: str, currency: str) -> str:
    """The id of the organisation's prepaid balance ``buyer:prepaid:CUR`` (opened on first use)."""
    return ledger.accounts.open(org_id, f"buyer:prepaid:{currency}", kind="liability", currency=currency,
                                non_negative=True).id


def deposit(db: Database, charges: ChargeProvider, org_id: str, key: str, amount: Money, source: str) -> str:
    """Charge ``source`` and credit the buyer's balance; returns ``paid`` or ``pending`` (see the module)."""
    check_key(key)
    if not isinstance(amount, Money) or amount.amount <= 0:
        raise InvalidInput("a deposit must be a positive amount", param="amount")
    reply = charges.charge(f"{org_id}:{key}", amount, source)
    if reply.outcome is ProviderOutcome.DECLINED:
        raise PaymentDeclined(f"the payment was declined: {reply.message or 'no reason given'}; nothing was posted",
                              param="payment_source")
    if reply.outcome is ProviderOutcome.PENDING:
        return "pending"
    _post_deposit(db, org_id, key, amount, reply.reference)
    return "paid"


def charge_webhook(db: Database, org_id: str, key: str, amount: Money, outcome: ProviderOutcome,
                   reference: str = "") -> str:
    """Apply a late charge answer: ``paid`` posts the deposit (once), ``declined`` posts nothing."""
    if outcome is ProviderOutcome.PAID:
        _post_deposit(db, org_id, key, amount, reference)
        return "paid"
    return "declined"


def _post_deposit(db: Database, org_id: str, key: str, amount: Money, reference: str) -> None:
    with db.session() as s:
        ledger = Ledger(s)
        buyer = balance_account(ledger, org_id, amount.currency)
        clearing = ledger.accounts.system_account(org_id, "psp_clearing", amount.currency)
        ledger.post(org_id, f"deposit:{key}"[:255], [(clearing.id, amount.amount, amount.currency),
                                                     (buyer, -amount.amount, amount.currency)],
                    kind="deposit", memo=f"charge {reference}")


def _contributors(session: Session, listing: MarketListing) -> dict[str, int]:
    if listing.kind == ResourceKind.DATASET.value:
        d = session.get(Dataset, listing.resource_id)
        assert d is not None
        return lineage_parties(session, d)
    if listing.kind == ResourceKind.ADAPTER.value:
        a = session.get(AdapterVersion, listing.resource_id)
        assert a is not None
        out: dict[str, int] = {}
        for d in training_datasets(session, a):
            for party, n in lineage_parties(session, d).items():
                out[party] = out.get(party, 0) + n
        return out or {f"org:{listing.org_id}": 1}
    return {f"org:{listing.org_id}": 1}


def order_view(row: MarketOrder, entitlement_id: str, *, replayed: bool = False) -> Order:
    """The domain view of an order row."""
    return Order(id=row.id, org_id=row.org_id, seller_org_id=row.seller_org_id, offer_id=row.offer_id,
                 listing_id=row.listing_id, key=row.idem_key, amount=row.amount, currency=row.currency,
                 status=OrderStatus(row.status), entry_id=row.entry_id, entitlement_id=entitlement_id,
                 refundable_until=row.refundable_until,
                 shares=tuple(RoyaltyShare(**p) for p in row.shares.get("parts", [])), created_at=row.created_at,
                 replayed=replayed)


def post_sale(session: Session, buyer_org: str, seller_org: str, listing: MarketListing, price: int, currency: str,
              key: str, *, kind: str, fee_bps: int, broker: str | None = None, broker_bps: int = 0,
              memo: str = "") -> tuple[str, tuple[RoyaltyShare, ...]]:
    """Post one sale entry (buyer balance -> pending earnings + fee); returns (entry id, shares)."""
    parts = shares(price, _contributors(session, listing), fee_bps=fee_bps, broker=broker, broker_bps=broker_bps)
    ledger = Ledger(session)
    lines: list[tuple[str, int, str]] = [(balance_account(ledger, buyer_org, currency), price, currency)]
    orgs = {seller_org}
    for share in parts:
        if share.amount:
            lines.append((open_party(ledger, share.party, "pending", seller_org, currency), -share.amount, currency))
            orgs.add(party_books(share.party, seller_org))
    entry = ledger.post(buyer_org, key, lines, kind=kind, memo=memo, counterparties=orgs)
    return entry.id, parts


def buy(session: Session, org_id: str, offer_id: str, key: str, *, fee_bps: int = DEFAULT_FEE_BPS,
        broker: str | None = None, broker_bps: int = 0, actor: str = "system") -> Order:
    """Buy an offer for the organisation from its balance (see the module docstring)."""
    check_key(key)
    digest = request_hash({"offer": offer_id, "broker": broker, "broker_bps": broker_bps})
    prior = session.scalar(select(MarketOrder).where(MarketOrder.org_id == org_id, MarketOrder.idem_key == key))
    if prior is not None:
        if prior.request_hash != digest:
            raise IdempotencyConflict(f"idempotency key {key!r} was used for order {prior.id} with another body; "
                                      "use a new key for a new order", param="Idempotency-Key")
        from teachloop.market.entitlements import entitlement_of_order

        return order_view(prior, entitlement_of_order(session, prior.id), replayed=True)
    offer = get_offer_row(session, offer_id)
    listing = session.get(MarketListing, offer.listing_id)
    assert listing is not None
    if listing.org_id == org_id:
        raise InvalidInput("an organisation cannot buy its own listing", param="offer")
    pricing = Pricing(offer.pricing)
    price = 0
    if pricing is Pricing.LICENCE:
        price = offer.amount
    elif pricing is Pricing.ROW:
        price = offer.amount * int(listing.card.get("size", {}).get("rows", 0))
    order_id = new_id("ord")
    entry_id: str | None = None
    parts: tuple[RoyaltyShare, ...] = ()
    if price:
        entry_id, parts = post_sale(session, org_id, listing.org_id, listing, price, offer.currency,
                                    f"market:order:{order_id}", kind="order", fee_bps=fee_bps, broker=broker,
                                    broker_bps=broker_bps, memo=f"{listing.resource_ref} ({offer.id})")
    row = MarketOrder(id=order_id, org_id=org_id, seller_org_id=listing.org_id, offer_id=offer.id,
                      listing_id=listing.id, idem_key=key, request_hash=digest, amount=price, currency=offer.currency,
                      status=OrderStatus.PAID.value, entry_id=entry_id,
                      shares={"fee_bps": fee_bps, "broker": broker, "broker_bps": broker_bps,
                              "parts": [p.model_dump() for p in parts]},
                      refundable_until=utc_now() + REFUND_WINDOW)
    session.add(row)
    session.flush()
    ent = grant_entitlement(session, row, listing, offer, actor=actor)
    return order_view(row, ent.id)


def get_order_row(session: Session, org_id: str, order_id: str) -> MarketOrder:
    """The buyer's order; ``NotFound`` otherwise (another organisation's too)."""
    row = session.get(MarketOrder, order_id) if isinstance(order_id, str) else None
    if row is None or row.org_id != org_id:
        raise NotFound(f"order {order_id!r} not found", param="order")
    return row


def list_orders(session: Session, org_id: str) -> list[Order]:
    """The organisation's orders, oldest first."""
    from teachloop.market.entitlements import entitlement_of_order

    rows = session.scalars(select(MarketOrder).where(MarketOrder.org_id == org_id)
                           .order_by(MarketOrder.created_at, MarketOrder.id))
    return [order_view(r, entitlement_of_order(session, r.id)) for r in rows]


def refund(session: Session, org_id: str, order_id: str, key: str) -> Order:
    """Reverse a sale and revoke its entitlement while the refund window is open (see the module)."""
    check_key(key)
    row = get_order_row(session, org_id, order_id)
    from teachloop.market.entitlements import entitlement_of_order

    if row.status == OrderStatus.REFUNDED.value:
        return order_view(row, entitlement_of_order(session, row.id), replayed=True)
    if row.status == OrderStatus.SETTLED.value or row.refundable_until <= utc_now():
        raise Conflict(f"order {row.id} cannot be refunded: its refund window closed at "
                       f"{row.refundable_until.isoformat()} and the earnings were released to be paid out; "
                       "nothing was posted", param="order")
    if row.entry_id is not None:
        entry = Ledger(session).reverse(org_id, row.entry_id, key, kind="refund", memo=f"refund of {row.id}")
        row.refund_entry_id = entry.id
    row.status = OrderStatus.REFUNDED.value
    revoke_entitlement(session, row.id)
    session.flush()
    return order_view(row, entitlement_of_order(session, row.id))


__all__ = ["REFUND_WINDOW", "ChargeProvider", "PaymentDeclined", "TestCharges", "balance_account", "buy",
           "charge_webhook", "deposit", "get_order_row", "list_orders", "order_view", "post_sale", "refund"]

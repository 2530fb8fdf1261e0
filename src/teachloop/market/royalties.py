"""Royalties by lineage: split a sale's revenue exactly, park it as pending, release it, pay it out.

``allocate(total, weights)`` is the pure largest-remainder split: parts are integers, sum
exactly to ``total``, none is negative, and each is within one minor unit of its exact share
(ties broken by the weight's key, so the split is deterministic).

``shares(price, contributors, fee_bps=, broker=)`` splits a price between the platform fee,
the broker's commission (when a broker made the match) and every contributor pro rata to the
rows (or environment) of theirs in what was sold (``contributors``: party -> rows). Parties are
``platform``, ``broker:<org>``, ``org:<org>`` (an organisation whose data or environment is in
it, the seller included) and ``expert:<id>``. ``lineage_parties`` reads the contributors of
a dataset version from its rows' lineage (``catalog``/``store``): an expert label pays its
expert; a row copied from another organisation's dataset or made from its trace pays that
organisation; every other row pays the seller.

Ledger accounts (per currency ``CUR``): a party's earnings sit in ``royalty:pending:<party>:CUR``
until the order's refund window closes, then move to ``royalty:payable:<party>:CUR``
(``settle_due``); ``payout_batch`` pays every payable account out through a ``PaymentProvider``
(``ledger.Payouts``). An organisation's accounts are in its own books; an expert's in the
books of the organisation whose data they labelled; the platform fee is the revenue account
``platform_fee:CUR`` in the seller's books.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from fractions import Fraction

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput
from teachloop.core.market import OrderStatus, RoyaltyShare
from teachloop.core.money import AccountKind, Money
from teachloop.ledger import Ledger, Payout, Payouts
from teachloop.store.db import Database
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.datasets import Dataset, DatasetRow
from teachloop.store.schema.ledger import LedgerAccount
from teachloop.store.schema.market import MarketOrder
from teachloop.store.schema.traces import Trace

#: The platform's fee, in basis points of the price (10 %).
DEFAULT_FEE_BPS = 1000
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/-]{0,80}$")


def allocate(total: int, weights: Mapping[str, Fraction | int]) -> dict[str, int]:
    """Split ``total`` minor units by ``weights`` (non-negative, not all zero) with largest remainders."""
    if not isinstance(total, int) or total < 0:
        raise InvalidInput(f"the total to split must be a non-negative integer, got {total!r}", param="amount")
    if not weights or any(Fraction(w) < 0 for w in weights.values()) or sum(Fraction(w) for w in weights.values()) == 0:
        raise InvalidInput("weights must be non-negative and not all zero", param="weights")
    whole = sum(Fraction(w) for w in weights.values())
    exact = {k: Fraction(w) / whole * total for k, w in weights.items()}
    parts = {k: int(v) for k, v in exact.items()}  # floor (non-negative)
    left = total - sum(parts.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - parts[k]), k))[:left]:
        parts[k] += 1
    return parts


def shares(price: int, contributors: Mapping[str, int], *, fee_bps: int = DEFAULT_FEE_BPS,
           broker: str | None = None, broker_bps: int = 0) -> tuple[RoyaltyShare, ...]:
    """The split of ``price``: platform fee, broker commission, contributors pro rata to their rows."""
    if not 0 <= fee_bps + broker_bps <= 10_000 or fee_bps < 0 or broker_bps < 0:
        raise InvalidInput("fee and commission must be 0-10000 basis points together", param="fee_bps")
    rows = sum(contributors.values())
    if rows <= 0:
        raise InvalidInput("what was sold has no contributors in its lineage", param="listing")
    weights: dict[str, Fraction] = {"platform": Fraction(fee_bps, 10_000)}
    if broker is not None and broker_bps:
        weights[f"broker:{broker}"] = Fraction(broker_bps, 10_000)
    rest = 1 - sum(weights.values())
    for party, n in contributors.items():
        weights[party] = weights.get(party, Fraction(0)) + rest * Fraction(n, rows)
    parts = allocate(price, weights)
    return tuple(RoyaltyShare(party=p, weight=str(weights[p]), amount=parts[p]) for p in sorted(weights))


def lineage_parties(session: Session, dataset: Dataset) -> dict[str, int]:
    """Party -> rows of ``dataset`` that pay it (see the module docstring)."""
    out: dict[str, int] = {}
    rows = session.scalars(select(DatasetRow).where(DatasetRow.dataset_id == dataset.id))
    for row in rows:
        party = f"org:{dataset.org_id}"
        if row.expert_id:
            party = f"expert:{row.expert_id}"
        elif row.source_row_id:
            src = session.get(DatasetRow, row.source_row_id)
            if src is not None and src.org_id != dataset.org_id:
                party = f"org:{src.org_id}"
        elif row.source_trace_id:
            trace = session.get(Trace, row.source_trace_id)
            if trace is not None and trace.org_id != dataset.org_id:
                party = f"org:{trace.org_id}"
        out[party] = out.get(party, 0) + 1
    return out


def party_books(party: str, seller_org_id: str) -> str:
    """The organisation whose books hold ``party``'s accounts."""
    kind, _, ident = party.partition(":")
    return ident if kind in ("org", "broker") else seller_org_id


def account_name(party: str, state: str, currency: str) -> str:
    """``royalty:<state>:<party>:<CUR>`` (``platform_fee:<CUR>`` for the platform); long ids are hashed."""
    if party == "platform":
        return f"platform_fee:{currency}"
    kind, _, ident = party.partition(":")
    if not _SAFE.match(ident):
        ident = "h" + hashlib.sha256(ident.encode()).hexdigest()[:32]
    return f"royalty:{state}:{kind}:{ident}:{currency}"


def open_party(ledger: Ledger, party: str, state: str, seller_org_id: str, currency: str) -> str:
    """The id of ``party``'s ``state`` (pending / payable) account, opened on first use."""
    org = party_books(party, seller_org_id)
    if party == "platform":
        return ledger.accounts.open(org, account_name(party, state, currency), kind="revenue",
                                    currency=currency).id
    return ledger.accounts.open(org, account_name(party, state, currency), kind="liability", currency=currency,
                                non_negative=True).id


def settle_due(session: Session, *, now: datetime | None = None, seller_org_id: str | None = None) -> list[str]:
    """Release the earnings of every paid order whose refund window has closed; returns their ids.

    ``seller_org_id`` limits it to that seller's sales (what an organisation's own payout run may touch);
    None settles every seller's (the operator's CLI).
    """
    now = now or utc_now()
    ledger = Ledger(session)
    done = []
    query = select(MarketOrder).where(MarketOrder.status == OrderStatus.PAID.value, MarketOrder.refundable_until <= now)
    if seller_org_id is not None:
        query = query.where(MarketOrder.seller_org_id == seller_org_id)
    due = session.scalars(query.order_by(MarketOrder.id))
    for order in list(due):
        lines: list[tuple[str, int, str]] = []
        orgs = set()
        for share in order.shares.get("parts", []):
            if share["party"] == "platform" or share["amount"] == 0:
                continue
            pending = open_party(ledger, share["party"], "pending", order.seller_org_id, order.currency)
            payable = open_party(ledger, share["party"], "payable", order.seller_org_id, order.currency)
            lines += [(pending, share["amount"], order.currency), (payable, -share["amount"], order.currency)]
            orgs.add(party_books(share["party"], order.seller_org_id))
        if lines:
            entry = ledger.post(order.org_id, f"market:settle:{order.id}", lines, kind="royalty.release",
                                memo=f"refund window of {order.id} closed", counterparties=orgs)
            order.settle_entry_id = entry.id
        order.status = OrderStatus.SETTLED.value
        done.append(order.id)
    session.flush()
    return done


def payable_accounts(session: Session, org_id: str | None = None) -> list[LedgerAccount]:
    """The ``royalty:payable:`` accounts holding money (of one organisation's books)."""
    query = select(LedgerAccount).where(LedgerAccount.name.like("royalty:payable:%"), LedgerAccount.balance < 0)
    if org_id is not None:
        query = query.where(LedgerAccount.org_id == org_id)
    return list(session.scalars(query.order_by(LedgerAccount.org_id, LedgerAccount.name)))


def payout_batch(db: Database, payouts: Payouts, batch: str, *, org_id: str | None = None) -> list[Payout]:
    """Pay every payable royalty account out through the provider; ``batch`` makes the keys idempotent."""
    with db.session(write=False) as s:
        accounts = [(a.org_id, a.id, a.name, -a.balance, a.currency) for a in payable_accounts(s, org_id)
                    if a.kind == AccountKind.LIABILITY.value]
    out = []
    for org, account_id, name, held, currency in accounts:
        destination = name.removeprefix("royalty:payable:").rsplit(":", 1)[0]
        out.append(payouts.request(org, f"market-payout:{batch}:{account_id}", account_id,
                                   Money(amount=held, currency=currency), destination))
    return out


def release_and_pay(db: Database, payouts: Payouts, batch: str, *,
                    org_id: str | None = None) -> tuple[list[str], list[Payout]]:
    """Settle the matured sales (of seller ``org_id``, or every seller's), then pay the payables out.

    Returns the settled order ids and the payouts of batch ``batch`` (idempotent per account).
    """
    with db.session() as s:
        released = settle_due(s, seller_org_id=org_id)
    return released, payout_batch(db, payouts, batch, org_id=org_id)


__all__ = ["DEFAULT_FEE_BPS", "account_name", "allocate", "lineage_parties", "open_party", "party_books",
           "payable_accounts", "payout_batch", "release_and_pay", "settle_due", "shares"]

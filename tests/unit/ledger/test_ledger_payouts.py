"""Payouts through the payment-provider interface, with the test provider's failure modes."""

from __future__ import annotations

import pytest

from teachloop.core.errors import InsufficientFunds, InvalidInput, NotFound
from teachloop.core.money import Money
from teachloop.ledger import Ledger, Payouts, PayoutStatus, ProviderTimeout, TestProvider
from teachloop.store import Database
from tests.unit.ledger.conftest import Book

USD = "USD"


def earn(db: Database, book: Book, amount: int, key: str = "sale") -> None:
    with db.session() as s:
        Ledger(s).post(book.org, key, [(book.buyer, amount, USD), (book.seller, -amount, USD)], kind="order")


def held(db: Database, book: Book, name: str) -> int:
    with db.session(write=False) as s:
        return Ledger(s).accounts.get(book.org, name).held


def test_a_paid_payout_moves_money_out_once(db: Database, funded: Book) -> None:
    earn(db, funded, 900)
    provider = TestProvider()
    payouts = Payouts(db, provider)
    p = payouts.request(funded.org, "po-1", "seller:payable", Money(amount=600, currency=USD), "acct_bank_1")
    assert p.status is PayoutStatus.PAID and p.settlement_id and p.amount.amount == 600
    assert held(db, funded, "seller:payable") == 300 and held(db, funded, "payout_in_transit:USD") == 0
    again = payouts.request(
        funded.org, "po-1", "seller:payable", Money(amount=600, currency=USD), "acct_bank_1"
    )
    assert again.status is PayoutStatus.PAID and again.entry_id == p.entry_id
    assert provider.calls == [p.provider_key]  # a settled payout never reaches the provider again
    with db.session(write=False) as s:
        assert Ledger(s).check().ok


def test_a_declined_payout_returns_the_money(db: Database, funded: Book) -> None:
    earn(db, funded, 500)
    p = Payouts(db, TestProvider({"bad_bank": "declined"})).request(
        funded.org, "po", funded.seller, Money(amount=500, currency=USD), "bad_bank"
    )
    assert p.status is PayoutStatus.FAILED and "declined" in p.message
    assert held(db, funded, "seller:payable") == 500 and held(db, funded, "payout_in_transit:USD") == 0


def test_a_timeout_is_retried_with_the_same_provider_key(db: Database, funded: Book) -> None:
    earn(db, funded, 500)
    provider = TestProvider({"slow": "timeout"})
    payouts = Payouts(db, provider)
    first = payouts.request(funded.org, "po", funded.seller, Money(amount=500, currency=USD), "slow")
    assert first.status is PayoutStatus.IN_TRANSIT and "timed out" in first.message
    assert held(db, funded, "payout_in_transit:USD") == 500 and held(db, funded, "seller:payable") == 0
    second = payouts.request(funded.org, "po", funded.seller, Money(amount=500, currency=USD), "slow")
    assert second.status is PayoutStatus.PAID and second.entry_id == first.entry_id
    assert provider.calls == [first.provider_key, first.provider_key]
    assert list(provider.paid.values()) == [Money(amount=500, currency=USD)]  # paid once
    assert held(db, funded, "payout_in_transit:USD") == 0


@pytest.mark.parametrize(
    ("behaviour", "final"), [("late", PayoutStatus.PAID), ("late_declined", PayoutStatus.FAILED)]
)
def test_a_late_webhook_settles_the_payout_once(
    db: Database, funded: Book, behaviour: str, final: PayoutStatus
) -> None:
    earn(db, funded, 500)
    provider = TestProvider({"wallet": behaviour})
    payouts = Payouts(db, provider)
    p = payouts.request(funded.org, "po", funded.seller, Money(amount=400, currency=USD), "wallet")
    assert p.status is PayoutStatus.IN_TRANSIT and held(db, funded, "payout_in_transit:USD") == 400
    assert payouts.get(funded.org, p.entry_id).status is PayoutStatus.IN_TRANSIT
    [event] = provider.take_events()
    settled = payouts.webhook(event)
    assert settled.status is final
    assert payouts.webhook(event).settlement_id == settled.settlement_id  # a repeated event changes nothing
    assert held(db, funded, "payout_in_transit:USD") == 0
    assert held(db, funded, "seller:payable") == (100 if final is PayoutStatus.PAID else 500)
    with db.session(write=False) as s:
        assert Ledger(s).check().ok


def test_payout_refusals_post_nothing_and_call_no_provider(db: Database, funded: Book) -> None:
    earn(db, funded, 100)
    provider = TestProvider()
    payouts = Payouts(db, provider)
    with pytest.raises(InsufficientFunds, match=r"holds 1\.00 USD"):
        payouts.request(funded.org, "po", funded.seller, Money(amount=101, currency=USD), "bank")
    with pytest.raises(InvalidInput, match="liability"):
        payouts.request(funded.org, "po", funded.fee, Money(amount=1, currency=USD), "bank")
    with pytest.raises(InvalidInput, match="holds USD"):
        payouts.request(funded.org, "po", funded.seller, Money(amount=1, currency="EUR"), "bank")
    with pytest.raises(NotFound):
        payouts.request(funded.org, "po", "nobody", Money(amount=1, currency=USD), "bank")
    assert provider.calls == []
    with db.session(write=False) as s:
        assert Ledger(s).by_key(funded.org, "po") is None
        assert held(db, funded, "seller:payable") == 100


def test_timeout_is_a_503() -> None:
    assert ProviderTimeout("x").status == 503
    with pytest.raises(InvalidInput, match="unknown test-provider behaviour"):
        TestProvider({"x": "explode"})

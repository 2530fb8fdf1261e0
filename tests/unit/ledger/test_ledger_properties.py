"""Property-based test: random sequences of deposits, orders, refunds, retries, holds and payouts.

A hypothesis state machine drives the ledger (one migrated SQLite file per test, a
fresh organisation per example) next to a plain-Python model of what every account
should hold. After every step: ``check()`` is ok (trial balance zero, every entry
balanced, cached == derived balances, no non-negative account below zero), each
account holds what the model says, and no non-negative account holds less than zero.
Retries with the same key and body return the first entry and change nothing;
retries with another body are 409 and change nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from teachloop.core.errors import IdempotencyConflict, InsufficientFunds
from teachloop.core.money import Money
from teachloop.ledger import Ledger, Payouts, PayoutStatus, TestProvider
from teachloop.store import Database, Tenancy

USD = "USD"
BUYERS = ("buyer:a", "buyer:b")
DESTINATIONS = {
    "ok": "paid",
    "no": "declined",
    "slow": "timeout",
    "later": "late",
    "later_no": "late_declined",
}
_orgs = itertools.count()


class LedgerMachine(RuleBasedStateMachine):
    """The ledger next to a model: ``held[name]`` is what account ``name`` should hold."""

    db: Database  # set by the test

    @initialize()
    def open_books(self) -> None:
        with self.db.session() as s:
            self.org = Tenancy(s).create_org(f"prop-{next(_orgs)}").id
            acc = Ledger(s).accounts
            for name in BUYERS:
                acc.open(self.org, name, kind="liability", currency=USD, non_negative=True)
            acc.open(self.org, "seller:payable", kind="liability", currency=USD, non_negative=True)
            acc.open(self.org, "platform_fee", kind="revenue", currency=USD)
            for prefix in ("psp_clearing", "holds", "payout_in_transit"):
                acc.system_account(self.org, prefix, USD)
        self.held: dict[str, int] = {
            n: 0
            for n in (
                *BUYERS,
                "seller:payable",
                "platform_fee",
                "psp_clearing:USD",
                "holds:USD",
                "payout_in_transit:USD",
            )
        }
        self.keys = itertools.count()
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (key, post kwargs) of accepted posts
        self.orders: list[tuple[str, str, int, int]] = []  # (entry id, buyer, amount, fee) not yet refunded
        self.holds: list[tuple[str, str, int]] = []  # (hold id, buyer, amount) pending
        self.in_transit: list[tuple[str, str, int]] = []  # (key, destination, amount)
        self.provider = TestProvider(DESTINATIONS)
        self.payouts = Payouts(self.db, self.provider)

    def key(self) -> str:
        return f"k{next(self.keys)}"

    def ids(self) -> dict[str, str]:
        with self.db.session(write=False) as s:
            return {a.name: a.id for a in Ledger(s).accounts.list(self.org)}

    def post(self, key: str, **kwargs: Any) -> Any:
        with self.db.session() as s:
            return Ledger(s).post(self.org, key, **kwargs)

    # -- rules ----------------------------------------------------------------------------

    @rule(buyer=st.sampled_from(BUYERS), amount=st.integers(1, 5000))
    def deposit(self, buyer: str, amount: int) -> None:
        key, kwargs = (
            self.key(),
            {"postings": [("psp_clearing:USD", amount, USD), (buyer, -amount, USD)], "kind": "deposit"},
        )
        self.post(key, **kwargs)
        self.calls.append((key, kwargs))
        self.held[buyer] += amount
        self.held["psp_clearing:USD"] += amount

    @rule(buyer=st.sampled_from(BUYERS), amount=st.integers(1, 3000), fee_pct=st.integers(0, 30))
    def order(self, buyer: str, amount: int, fee_pct: int) -> None:
        fee = amount * fee_pct // 100
        lines = [(buyer, amount, USD), ("seller:payable", -(amount - fee), USD)] + (
            [("platform_fee", -fee, USD)] if fee else []
        )
        key, kwargs = self.key(), {"postings": lines, "kind": "order"}
        if amount > self.held[buyer]:
            try:
                self.post(key, **kwargs)
            except InsufficientFunds:
                return
            raise AssertionError(f"an unaffordable order of {amount} from {buyer} was posted")
        entry = self.post(key, **kwargs)
        self.calls.append((key, kwargs))
        self.orders.append((entry.id, buyer, amount, fee))
        self.held[buyer] -= amount
        self.held["seller:payable"] += amount - fee
        self.held["platform_fee"] += fee

    @precondition(lambda self: self.orders)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        entry_id, buyer, amount, fee = data.draw(st.sampled_from(self.orders))
        affordable = self.held["seller:payable"] >= amount - fee
        try:
            with self.db.session() as s:
                Ledger(s).reverse(self.org, entry_id, self.key(), kind="refund")
        except InsufficientFunds:
            assert not affordable, "a refund the seller could cover was refused"
            return
        assert affordable, "a refund after payout was posted"
        self.orders.remove((entry_id, buyer, amount, fee))
        self.held[buyer] += amount
        self.held["seller:payable"] -= amount - fee
        self.held["platform_fee"] -= fee

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def retry_same_key(self, data: st.DataObject) -> None:
        key, kwargs = data.draw(st.sampled_from(self.calls))
        before = dict(self.held)
        entry = self.post(key, **kwargs)
        assert entry.replayed and entry.key == key
        assert self.held == before  # the invariants below compare the ledger with this unchanged model

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def retry_with_different_body(self, data: st.DataObject) -> None:
        key, kwargs = data.draw(st.sampled_from(self.calls))
        try:
            self.post(key, **{**kwargs, "memo": "a different request"})
        except IdempotencyConflict:
            return
        raise AssertionError("a reused key with another body was accepted")

    @rule(buyer=st.sampled_from(BUYERS), amount=st.integers(1, 2000), capture_pct=st.integers(0, 100))
    def hold_then_resolve(self, buyer: str, amount: int, capture_pct: int) -> None:
        if amount > self.held[buyer]:
            try:
                with self.db.session() as s:
                    Ledger(s).hold(self.org, self.key(), buyer, Money(amount=amount, currency=USD))
            except InsufficientFunds:
                return
            raise AssertionError("an unaffordable hold was posted")
        with self.db.session() as s:
            hold = Ledger(s).hold(self.org, self.key(), buyer, Money(amount=amount, currency=USD))
        self.held[buyer] -= amount
        self.held["holds:USD"] += amount
        self.holds.append((hold.id, buyer, amount))

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), capture_pct=st.integers(0, 100))
    def capture(self, data: st.DataObject, capture_pct: int) -> None:
        hold_id, buyer, amount = data.draw(st.sampled_from(self.holds))
        captured = amount * capture_pct // 100
        with self.db.session() as s:
            Ledger(s).capture(
                self.org, hold_id, self.key(), [("seller:payable", captured)] if captured else []
            )
        self.holds.remove((hold_id, buyer, amount))
        self.held["holds:USD"] -= amount
        self.held["seller:payable"] += captured
        self.held[buyer] += amount - captured

    @rule(amount=st.integers(1, 3000), destination=st.sampled_from(sorted(DESTINATIONS)))
    def payout(self, amount: int, destination: str) -> None:
        key = self.key()
        if amount > self.held["seller:payable"]:
            try:
                self.payouts.request(
                    self.org, key, "seller:payable", Money(amount=amount, currency=USD), destination
                )
            except InsufficientFunds:
                return
            raise AssertionError("an unaffordable payout was posted")
        p = self.payouts.request(
            self.org, key, "seller:payable", Money(amount=amount, currency=USD), destination
        )
        expected = {"paid": PayoutStatus.PAID, "declined": PayoutStatus.FAILED}.get(
            DESTINATIONS[destination], PayoutStatus.IN_TRANSIT
        )
        assert p.status is expected
        if expected is PayoutStatus.PAID:
            self.held["seller:payable"] -= amount
            self.held["psp_clearing:USD"] -= amount
        elif expected is PayoutStatus.IN_TRANSIT:
            self.held["seller:payable"] -= amount
            self.held["payout_in_transit:USD"] += amount
            self.in_transit.append((key, destination, amount))

    @precondition(lambda self: self.in_transit)
    @rule()
    def settle_payouts(self) -> None:
        """Retry timed-out payouts with their key, then deliver every late webhook (twice)."""
        for key, destination, amount in self.in_transit:
            if DESTINATIONS[destination] == "timeout":
                assert (
                    self.payouts.request(
                        self.org, key, "seller:payable", Money(amount=amount, currency=USD), destination
                    ).status
                    is PayoutStatus.PAID
                )
        events = self.provider.take_events()
        for event in events + events:
            self.payouts.webhook(event)
        for _key, destination, amount in self.in_transit:
            self.held["payout_in_transit:USD"] -= amount
            if DESTINATIONS[destination] == "late_declined":
                self.held["seller:payable"] += amount
            else:
                self.held["psp_clearing:USD"] -= amount
        self.in_transit = []

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        if not hasattr(self, "org"):
            return
        with self.db.session(write=False) as s:
            ledger = Ledger(s)
            report = ledger.check(self.org)
            assert report.ok, report.problems
            assert all(v == 0 for v in report.trial_balance.values())
            accounts = {a.name: a for a in ledger.accounts.list(self.org)}
        assert {name: a.held for name, a in accounts.items()} == self.held
        assert all(a.held >= 0 for a in accounts.values() if a.non_negative)


def test_random_sequences_keep_every_invariant(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> None:
    db = Database(migrated_sqlite(tmp_path / "prop.db"))
    LedgerMachine.db = db
    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=30,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        db.close()

"""The ledger's rules, one test each, on SQLite and PostgreSQL: double entry, idempotency, holds, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, text

from teachloop.core.errors import Conflict, IdempotencyConflict, InsufficientFunds, InvalidInput, NotFound
from teachloop.core.money import CURRENCIES, Money, Posting, format_minor, to_minor
from teachloop.ledger import Ledger
from teachloop.store import Database
from teachloop.store.schema import LedgerAccount, LedgerEntry, LedgerPosting
from tests.unit.ledger.conftest import FUNDS, Book, make_org, open_book


def state(db: Database) -> tuple[int, int, dict[str, int]]:
    """(entries, postings, cached balance per account): what a refused call must leave unchanged."""
    with db.session(write=False) as s:
        entries = s.scalar(select(func.count(LedgerEntry.id)))
        postings = s.scalar(select(func.count(LedgerPosting.id)))
        balances = {a.id: int(a.balance) for a in s.scalars(select(LedgerAccount))}
    return int(entries or 0), int(postings or 0), balances


def order(book: Book, amount: int, fee: int = 0) -> list[tuple[str, int, str]]:
    """An order's postings: the buyer pays ``amount``; the seller gets it less ``fee``."""
    lines = [(book.buyer, amount, "USD"), (book.seller, -(amount - fee), "USD")]
    return lines + ([(book.fee, -fee, "USD")] if fee else [])


def test_money_in_minor_units() -> None:
    assert to_minor("12.34", "USD") == 1234
    assert to_minor("1500", "JPY") == 1500
    assert to_minor("1.234", "KWD") == 1234
    assert Money.parse("0.10", "EUR") == Money(amount=10, currency="EUR")
    assert format_minor(-1234, "USD") == "-12.34 USD" and format_minor(5, "JPY") == "5 JPY"
    assert CURRENCIES["USD"] == 2 and CURRENCIES["JPY"] == 0 and CURRENCIES["BHD"] == 3
    for value, currency, why in [
        ("12.345", "USD", "fraction of a minor unit"),
        ("1.5", "JPY", "fraction of a minor unit"),
        ("abc", "USD", "not a decimal"),
        ("NaN", "USD", "not a finite"),
        ("1", "usd", "upper case"),
        ("1", "XYZ", "unknown currency"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            to_minor(value, currency)
    with pytest.raises(InvalidInput, match="never floats"):
        to_minor(12.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="positive"):
        Money.of(0, "USD", positive=True)
    with pytest.raises(ValueError, match="unknown currency"):
        Money(amount=1, currency="ABC")
    with pytest.raises(ValueError):
        Money(amount=1.5, currency="USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero"):
        Posting(account_id="a", amount=0, currency="USD")


def test_an_order_moves_money_and_balances(db: Database, funded: Book) -> None:
    with db.session() as s:
        entry = Ledger(s).post(
            funded.org, "order-1", order(funded, 2500, fee=250), kind="order", memo="dataset v1"
        )
    assert [p.amount for p in entry.postings] == [2500, -2250, -250]
    assert not entry.replayed and entry.kind == "order" and entry.memo == "dataset v1"
    with db.session(write=False) as s:
        ledger = Ledger(s)
        buyer = ledger.accounts.get(funded.org, "buyer:prepaid")
        assert buyer.held == FUNDS - 2500 and buyer.balance == -(FUNDS - 2500)
        assert ledger.accounts.get(funded.org, funded.seller).held == 2250
        assert ledger.accounts.get(funded.org, funded.fee).held == 250
        assert ledger.derived_balance(funded.org, funded.buyer) == ledger.balance(funded.org, funded.buyer)
        assert ledger.trial_balance(funded.org) == {"USD": 0}
        report = ledger.check()
        assert report.ok, report.problems
        assert report.entries == 2 and report.postings == 5
        assert [e.id for e in ledger.entries(funded.org, account=funded.seller)] == [entry.id]


BAD_POSTINGS: list[tuple[str, Any, str]] = [
    ("unbalanced", lambda b: [(b.buyer, 100, "USD"), (b.seller, -90, "USD")], "sum to 0.10 USD"),
    ("one posting", lambda b: [(b.buyer, 0, "USD")], "at least two postings"),
    ("zero", lambda b: [(b.buyer, 0, "USD"), (b.seller, 0, "USD")], "zero moves nothing"),
    ("float", lambda b: [(b.buyer, 1.5, "USD"), (b.seller, -1.5, "USD")], "integer number of minor units"),
    ("bool", lambda b: [(b.buyer, True, "USD"), (b.seller, -1, "USD")], "integer number of minor units"),
    ("unknown currency", lambda b: [(b.buyer, 100, "XXY"), (b.seller, -100, "XXY")], "unknown currency"),
    ("wrong currency", lambda b: [(b.buyer, 100, "EUR"), (b.seller, -100, "EUR")], "holds USD"),
    ("unknown account", lambda b: [(b.buyer, 100, "USD"), ("nobody", -100, "USD")], "not found"),
    ("too large", lambda b: [(b.buyer, 10**16, "USD"), (b.seller, -(10**16), "USD")], "largest amount"),
    ("not a list", lambda b: "buyer", "list of postings"),
]


@pytest.mark.parametrize(("case", "make", "why"), BAD_POSTINGS, ids=[c[0] for c in BAD_POSTINGS])
def test_bad_postings_are_refused_and_nothing_is_posted(
    db: Database, funded: Book, case: str, make: Any, why: str
) -> None:
    before = state(db)
    with pytest.raises((InvalidInput, NotFound), match=why) as info, db.session() as s:
        Ledger(s).post(funded.org, f"bad-{case.replace(' ', '-')}", make(funded), kind="order")
    assert info.value.param and info.value.param.startswith("postings")
    assert state(db) == before
    with db.session(write=False) as s:
        assert Ledger(s).by_key(funded.org, f"bad-{case.replace(' ', '-')}") is None  # the key stays free


@pytest.mark.parametrize(
    ("key", "kind", "memo", "why", "param"),
    [
        ("", "order", "", "1-255 printable", "key"),
        ("has space", "order", "", "1-255 printable", "key"),
        ("x" * 256, "order", "", "1-255 printable", "key"),
        ("ledger:settle:x", "order", "", "reserved", "key"),
        ("k", "Order!", "", "invalid entry kind", "kind"),
        ("k", "order", "m" * 501, "at most 500", "memo"),
    ],
)
def test_bad_keys_kinds_and_memos_are_refused(
    db: Database, funded: Book, key: str, kind: str, memo: str, why: str, param: str
) -> None:
    before = state(db)
    with pytest.raises(InvalidInput, match=why) as info, db.session() as s:
        Ledger(s).post(funded.org, key, order(funded, 100), kind=kind, memo=memo)
    assert info.value.param == param
    assert state(db) == before


def test_a_non_negative_account_is_never_overdrawn(db: Database, funded: Book) -> None:
    with db.session() as s:
        Ledger(s).post(funded.org, "o1", order(funded, FUNDS - 1), kind="order")
    before = state(db)
    with (
        pytest.raises(InsufficientFunds, match=r"holds 0\.01 USD and this order takes 0\.02 USD") as info,
        db.session() as s,
    ):
        Ledger(s).post(funded.org, "o2", order(funded, 2), kind="order")
    assert info.value.status == 409 and info.value.code == "insufficient_funds"
    assert state(db) == before
    with db.session() as s:  # the exact remainder is affordable; the key of the refused call is free again
        Ledger(s).post(funded.org, "o2", order(funded, 1), kind="order")
        assert Ledger(s).accounts.get(funded.org, funded.buyer).held == 0


def test_same_key_same_request_returns_the_first_entry(db: Database, funded: Book) -> None:
    with db.session() as s:
        first = Ledger(s).post(funded.org, "order-7", order(funded, 700), kind="order")
    after_first = state(db)
    with db.session() as s:
        again = Ledger(s).post(funded.org, "order-7", list(reversed(order(funded, 700))), kind="order")
    assert again.replayed and again.id == first.id and again.postings == first.postings
    assert state(db) == after_first


def test_same_key_different_request_is_409(db: Database, funded: Book) -> None:
    with db.session() as s:
        first = Ledger(s).post(funded.org, "order-8", order(funded, 800), kind="order")
    before = state(db)
    for change in [dict(postings=order(funded, 801)), dict(kind="refund"), dict(memo="other")]:
        args: dict[str, Any] = {"postings": order(funded, 800), "kind": "order"} | change
        with (
            pytest.raises(
                IdempotencyConflict, match=f"already used for a different request \\(entry {first.id}"
            ) as info,
            db.session() as s,
        ):
            Ledger(s).post(funded.org, "order-8", args.pop("postings"), **args)
        assert info.value.status == 409 and info.value.param == "key"
    assert state(db) == before


def test_keys_are_per_organisation_and_accounts_are_tenant_scoped(
    db: Database, funded: Book, other_org: str
) -> None:
    other = open_book(db, other_org)
    with db.session() as s:  # the same key in another organisation is another request
        Ledger(s).post(funded.org, "k1", order(funded, 100), kind="order")
        Ledger(s).post(other.org, "k1", order(other, 100), kind="order")
    before = state(db)
    with (
        pytest.raises(NotFound, match="not found"),
        db.session() as s,
    ):  # globex's account is invisible to acme
        Ledger(s).post(
            funded.org, "steal", [(funded.buyer, 100, "USD"), (other.seller, -100, "USD")], kind="order"
        )
    with pytest.raises(NotFound), db.session(write=False) as s:
        Ledger(s).accounts.get(funded.org, other.buyer)
    assert state(db) == before
    with db.session() as s:  # a sale across organisations names its counterparty
        sale = Ledger(s).post(
            funded.org,
            "sale",
            [(funded.buyer, 100, "USD"), (other.seller, -100, "USD")],
            kind="order",
            counterparties=[other.org],
        )
        ledger = Ledger(s)
        assert ledger.accounts.get(other.org, other.seller).held == 100 + 100
        assert ledger.trial_balance(funded.org) == {"USD": 0} and ledger.trial_balance(other.org) == {
            "USD": 0
        }
        refund = ledger.reverse(funded.org, sale.id, "sale-refund", kind="refund")
        assert refund.reversal_of == sale.id and ledger.accounts.get(other.org, other.seller).held == 100
        assert ledger.check().ok


def test_reversal_posts_the_negation_once(db: Database, funded: Book) -> None:
    with db.session() as s:
        entry = Ledger(s).post(funded.org, "o", order(funded, 300, fee=30), kind="order")
        rev = Ledger(s).reverse(funded.org, entry.id, "o-refund", kind="refund", memo="customer asked")
    assert rev.reversal_of == entry.id and [p.amount for p in rev.postings] == [-300, 270, 30]
    with db.session() as s:
        assert (
            Ledger(s).reverse(funded.org, entry.id, "o-refund", kind="refund", memo="customer asked").id
            == rev.id
        )
    before = state(db)
    with pytest.raises(Conflict, match=f"already reversed by {rev.id}"), db.session() as s:
        Ledger(s).reverse(funded.org, entry.id, "o-refund-2", kind="refund")
    with pytest.raises(NotFound), db.session() as s:
        Ledger(s).reverse(funded.org, "ent_nope", "x")
    assert state(db) == before
    with db.session(write=False) as s:
        assert Ledger(s).accounts.get(funded.org, funded.buyer).held == FUNDS
        assert Ledger(s).check().ok


def test_a_refund_after_payout_is_refused(db: Database, funded: Book) -> None:
    with db.session() as s:
        sale = Ledger(s).post(funded.org, "o", order(funded, 500), kind="order")
        transit = Ledger(s).accounts.system_account(funded.org, "payout_in_transit", "USD")
        Ledger(s).post(
            funded.org, "payout", [(funded.seller, 500, "USD"), (transit.id, -500, "USD")], kind="payout"
        )
    before = state(db)
    with (
        pytest.raises(
            InsufficientFunds, match=r"'seller:payable' holds 0\.00 USD and this refund takes 5\.00"
        ),
        db.session() as s,
    ):
        Ledger(s).reverse(funded.org, sale.id, "refund", kind="refund")
    assert state(db) == before


def test_holds_capture_part_and_return_the_rest(db: Database, funded: Book) -> None:
    with db.session() as s:
        ledger = Ledger(s)
        hold = ledger.hold(funded.org, "h1", "buyer:prepaid", Money(amount=4000, currency="USD"))
        assert ledger.accounts.get(funded.org, funded.buyer).held == FUNDS - 4000
        assert ledger.accounts.get(funded.org, "holds:USD").held == 4000
        assert ledger.hold_status(funded.org, hold.id) == "pending"
        cap = ledger.capture(funded.org, hold.id, "c1", [(funded.seller, 2700), (funded.fee, 300)])
        assert cap.settles == hold.id and ledger.hold_status(funded.org, hold.id) == "captured"
        assert ledger.accounts.get(funded.org, funded.buyer).held == FUNDS - 3000
        assert ledger.accounts.get(funded.org, "holds:USD").held == 0
        assert (
            ledger.capture(funded.org, hold.id, "c1", [(funded.seller, 2700), (funded.fee, 300)]).id == cap.id
        )
    before = state(db)
    with pytest.raises(Conflict, match="already settled"), db.session() as s:
        Ledger(s).release(funded.org, hold.id, "r1")
    with pytest.raises(Conflict, match="resolved by capture or release"), db.session() as s:
        Ledger(s).reverse(funded.org, hold.id, "rev-hold")
    assert state(db) == before
    with (
        db.session() as s
    ):  # refunding a capture returns the payees' money to the buyer, not to the holds account
        Ledger(s).reverse(funded.org, cap.id, "refund", kind="refund")
        ledger = Ledger(s)
        assert ledger.accounts.get(funded.org, funded.buyer).held == FUNDS
        assert ledger.accounts.get(funded.org, funded.seller).held == 0
        assert ledger.accounts.get(funded.org, "holds:USD").held == 0
        assert ledger.check().ok


def test_hold_refusals(db: Database, funded: Book) -> None:
    before = state(db)
    with pytest.raises(InsufficientFunds), db.session() as s:
        Ledger(s).hold(funded.org, "h", funded.buyer, Money(amount=FUNDS + 1, currency="USD"))
    with pytest.raises(InvalidInput, match="positive"), db.session() as s:
        Ledger(s).hold(funded.org, "h", funded.buyer, Money(amount=-5, currency="USD"))
    with pytest.raises(InvalidInput, match="liability accounts"), db.session() as s:
        Ledger(s).hold(funded.org, "h", funded.clearing, Money(amount=5, currency="USD"))
    assert state(db)[:2] == before[:2]
    with db.session() as s:
        hold = Ledger(s).hold(funded.org, "h", funded.buyer, Money(amount=100, currency="USD"))
    with pytest.raises(InvalidInput, match="exceed the hold"), db.session() as s:
        Ledger(s).capture(funded.org, hold.id, "c", [(funded.seller, 101)])
    with db.session() as s:
        Ledger(s).release(funded.org, hold.id, "r")
        assert Ledger(s).hold_status(funded.org, hold.id) == "released"
        assert Ledger(s).accounts.get(funded.org, funded.buyer).held == FUNDS


def test_entries_and_postings_are_append_only(db: Database, funded: Book) -> None:
    with db.session() as s:
        Ledger(s).post(funded.org, "o", order(funded, 100), kind="order")
    with pytest.raises(PermissionError, match="append-only"), db.session() as s:
        s.scalars(select(LedgerPosting)).first().amount = 5  # type: ignore[union-attr]
        s.flush()
    with pytest.raises(PermissionError, match="append-only"), db.session() as s:
        s.delete(s.scalars(select(LedgerEntry)).first())
        s.flush()


def test_check_names_what_is_wrong(db: Database, funded: Book) -> None:
    with db.session() as s:
        entry = Ledger(s).post(funded.org, "o", order(funded, 100), kind="order")
    with db.engine.begin() as conn:  # tamper behind the ledger's back
        conn.execute(
            text("UPDATE ledger_accounts SET balance = balance + 7 WHERE id = :id"), {"id": funded.seller}
        )
        conn.execute(
            text("UPDATE ledger_postings SET amount = amount - 1 WHERE entry_id = :e AND line = 0"),
            {"e": entry.id},
        )
    with db.session(write=False) as s:
        report = Ledger(s).check(funded.org)
    assert not report.ok
    text_ = "\n".join(report.problems)
    assert "trial balance of USD is -0.01 USD" in text_
    assert f"entry {entry.id} does not balance in USD" in text_
    assert "'seller:payable'" in text_ and "caches balance" in text_
    assert "'buyer:prepaid'" in text_  # its cached balance no longer matches the tampered posting either


def test_a_non_negative_account_below_zero_is_reported(db: Database, org: str) -> None:
    book = open_book(db, org, funds=0)
    with db.engine.begin() as conn:  # bypass the ledger: a posting that overdraws the buyer
        ent = "ent_01aaaaaaaaaaaaaaaaaaaaaaaa"
        conn.execute(
            text(
                "INSERT INTO ledger_entries (id, org_id, idem_key, request_hash, kind, memo, info, "
                "created_by, created_at) VALUES (:e, :o, 'x', 'h', 'order', '', '{}', 'test', "
                "CURRENT_TIMESTAMP)"
            ),
            {"e": ent, "o": org},
        )
        for i, (acc, amt) in enumerate([(book.buyer, 5), (book.seller, -5)]):
            conn.execute(
                text(
                    "INSERT INTO ledger_postings (id, org_id, entry_id, line, account_id, currency, amount) "
                    "VALUES (:id, :o, :e, :l, :a, 'USD', :m)"
                ),
                {"id": f"pst_01aaaaaaaaaaaaaaaaaaaaaaa{i}", "o": org, "e": ent, "l": i, "a": acc, "m": amt},
            )
            conn.execute(
                text("UPDATE ledger_accounts SET balance = balance + :m WHERE id = :a"), {"m": amt, "a": acc}
            )
    with db.session(write=False) as s:
        report = Ledger(s).check()
    assert report.problems == (f"non-negative account 'buyer:prepaid' ({book.buyer}) holds -0.05 USD",)


def test_opening_accounts_is_idempotent(db: Database, org: str) -> None:
    with db.session() as s:
        acc = Ledger(s).accounts
        a = acc.open(org, "escrow:p1", kind="liability", currency="EUR", non_negative=True)
        assert acc.open(org, "escrow:p1", kind="liability", currency="EUR", non_negative=True).id == a.id
        with pytest.raises(Conflict, match="exists as a liability account in EUR"):
            acc.open(org, "escrow:p1", kind="liability", currency="USD", non_negative=True)
        with pytest.raises(InvalidInput, match="unknown account kind"):
            acc.open(org, "x", kind="cash", currency="USD")
        with pytest.raises(InvalidInput, match="unknown currency"):
            acc.open(org, "x", kind="asset", currency="EURO")
        with pytest.raises(InvalidInput, match="invalid account name"):
            acc.open(org, " spaced", kind="asset", currency="USD")
        assert [x.name for x in acc.list(org)] == ["escrow:p1"]


def test_make_org_helper_gives_distinct_orgs(db: Database) -> None:
    assert make_org(db, "a") != make_org(db, "b")

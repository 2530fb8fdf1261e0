"""Ledger fixtures: a migrated database (SQLite file, or PostgreSQL: ``postgres`` marker), organisations.

``db`` runs each test that takes it on SQLite and on PostgreSQL; ``sqlite_db`` only on
SQLite. ``org`` and ``other_org`` are organisation ids; ``funded`` opens a buyer
(``buyer:prepaid``, a non-negative liability), a seller payable and the PSP clearing
account in USD and deposits ``FUNDS`` into the buyer's balance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from teachloop.core.money import AccountKind
from teachloop.ledger import Ledger
from teachloop.store import Database, Tenancy

FUNDS = 10_000


@pytest.fixture
def db(db_url: str, open_database: Callable[[str], Database]) -> Database:
    """A migrated database, emptied around the test (``db_url``: SQLite and PostgreSQL)."""
    return open_database(db_url)


@pytest.fixture
def sqlite_db(tmp_path: Path, migrated_sqlite: Callable[[Path], str],
              open_database: Callable[[str], Database]) -> Database:
    """A migrated SQLite file database (a copy of the session's template)."""
    return open_database(migrated_sqlite(tmp_path / "ledger.db"))


def make_org(db: Database, name: str) -> str:
    """The id of a new organisation ``name``."""
    with db.session() as s:
        return Tenancy(s).create_org(name).id


@pytest.fixture
def org(db: Database) -> str:
    return make_org(db, "acme")


@pytest.fixture
def other_org(db: Database) -> str:
    return make_org(db, "globex")


@dataclass(frozen=True)
class Book:
    """The accounts of ``funded``: ids of the buyer, seller, fee and clearing accounts."""

    org: str
    buyer: str
    seller: str
    fee: str
    clearing: str


def open_book(db: Database, org_id: str, *, funds: int = FUNDS, prefix: str = "") -> Book:
    """Open the usual accounts in ``org_id`` and deposit ``funds`` into the buyer's balance."""
    with db.session() as s:
        ledger = Ledger(s)
        acc = ledger.accounts
        buyer = acc.open(
            org_id, f"{prefix}buyer:prepaid", kind=AccountKind.LIABILITY, currency="USD", non_negative=True
        )
        seller = acc.open(
            org_id, f"{prefix}seller:payable", kind="liability", currency="USD", non_negative=True
        )
        fee = acc.open(org_id, f"{prefix}platform_fee", kind="revenue", currency="USD")
        clearing = acc.system_account(org_id, "psp_clearing", "USD")
        if funds:
            ledger.post(
                org_id,
                f"{prefix}deposit-0",
                [(clearing.id, funds, "USD"), (buyer.id, -funds, "USD")],
                kind="deposit",
            )
    return Book(org_id, buyer.id, seller.id, fee.id, clearing.id)


@pytest.fixture
def funded(db: Database, org: str) -> Book:
    return open_book(db, org)

"""Concurrent buyers cannot overdraw a non-negative account (SQLite and PostgreSQL).

Eight threads race to place orders against one buyer balance that affords exactly
``AFFORDABLE`` of them; each thread has its own session (transaction). Exactly that
many succeed, the rest get ``InsufficientFunds``, the balance ends at zero, and
a retried key in another thread never posts twice.
"""

from __future__ import annotations

import threading

from teachloop.core.errors import InsufficientFunds
from teachloop.ledger import Ledger
from teachloop.store import Database
from tests.unit.ledger.conftest import Book, open_book

THREADS = 8
PER_THREAD = 5
PRICE = 300
AFFORDABLE = 17


def test_concurrent_buyers_never_overdraw(db: Database, org: str) -> None:
    book: Book = open_book(db, org, funds=PRICE * AFFORDABLE)
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def buyer(t: int) -> None:
        start.wait()
        for i in range(PER_THREAD):
            # threads t and t+1 share every other key: a retry racing the original must post once
            key = f"order-{t // 2}-{i}" if i % 2 == 0 else f"order-{t}-{i}-solo"
            try:
                with db.session() as s:
                    entry = Ledger(s).post(
                        org, key, [(book.buyer, PRICE, "USD"), (book.seller, -PRICE, "USD")], kind="order"
                    )
                with lock:
                    results.append("replayed" if entry.replayed else "posted")
            except InsufficientFunds:
                with lock:
                    results.append("refused")
            except BaseException as err:  # anything else fails the test below
                with lock:
                    errors.append(err)

    threads = [threading.Thread(target=buyer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results.count("posted") == AFFORDABLE
    assert len(results) == THREADS * PER_THREAD
    with db.session(write=False) as s:
        ledger = Ledger(s)
        assert ledger.accounts.get(org, book.buyer).held == 0
        assert ledger.accounts.get(org, book.seller).held == PRICE * AFFORDABLE
        report = ledger.check()
        assert report.ok, report.problems
        assert report.entries == 1 + AFFORDABLE

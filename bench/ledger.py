r"""The ledger under concurrent orders: what correctness costs, on SQLite and on PostgreSQL.

Workload: ``--buyers`` threads (default 8), each a buyer with its own non-negative
balance, place ``--orders`` orders each as fast as they can; every order is one entry
of three postings (buyer pays, seller payable and platform fee are credited), one
transaction per order. Measured in the same run, contenders alternating round by round:

* ``ledger``: ``teachloop.ledger.Ledger.post`` -- validation, idempotency key look-up,
  the touched accounts locked in id order (PostgreSQL ``FOR UPDATE``; SQLite's write
  lock), the non-negative check, cached balances updated in the same transaction.
  After each round ``Ledger.check`` proves the invariants (trial balance zero, cached ==
  derived balances, nothing below zero); its time is reported, not counted in orders/s.
* ``plain inserts``: the same entry and posting rows written with bare ``INSERT``\ s in
  one transaction per order: no key look-up, no locks, no balance check or cache.

Each round uses a fresh organisation in the same database. Figures: median orders/s
over ``--rounds``, and ledger / plain. PostgreSQL runs when ``--postgres`` names a server
(a throwaway database is created on it and dropped at the end).

    python bench/ledger.py --rounds 5 --orders 200 --postgres postgresql://postgres@127.0.0.1:5432/postgres
    python bench/ledger.py --rounds 1 --orders 5 --buyers 2        # smoke test (SQLite only)
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import insert

from teachloop.core.ids import new_id
from teachloop.ledger import Ledger
from teachloop.store import Database, Tenancy
from teachloop.store.schema import LedgerEntry, LedgerPosting
from teachloop.store.schema.base import utc_now

PRICE, FEE = 1250, 125


def setup(db: Database, buyers: int, orders: int) -> tuple[str, list[str], str, str]:
    """A fresh organisation: funded buyers, a seller payable and a fee account (ids)."""
    with db.session() as s:
        org = Tenancy(s).create_org(f"bench-{secrets.token_hex(4)}").id
        ledger = Ledger(s)
        clearing = ledger.accounts.system_account(org, "psp_clearing", "USD").id
        ids = []
        for b in range(buyers):
            acc = ledger.accounts.open(
                org, f"buyer:{b}", kind="liability", currency="USD", non_negative=True
            ).id
            ledger.post(
                org,
                f"fund-{b}",
                [(clearing, PRICE * orders, "USD"), (acc, -PRICE * orders, "USD")],
                kind="deposit",
            )
            ids.append(acc)
        seller = ledger.accounts.open(
            org, "seller:payable", kind="liability", currency="USD", non_negative=True
        ).id
        fee = ledger.accounts.open(org, "platform_fee", kind="revenue", currency="USD").id
    return org, ids, seller, fee


def ledger_order(db: Database, org: str, buyer: str, seller: str, fee: str, key: str) -> None:
    with db.session() as s:
        Ledger(s).post(
            org,
            key,
            [(buyer, PRICE, "USD"), (seller, -(PRICE - FEE), "USD"), (fee, -FEE, "USD")],
            kind="order",
        )


def plain_order(db: Database, org: str, buyer: str, seller: str, fee: str, key: str) -> None:
    with db.session() as s:
        entry = new_id("ent")
        s.execute(
            insert(LedgerEntry),
            [
                {
                    "id": entry,
                    "org_id": org,
                    "idem_key": key,
                    "request_hash": "-",
                    "kind": "order",
                    "memo": "",
                    "info": {},
                    "created_by": "bench",
                    "created_at": utc_now(),
                }
            ],
        )
        s.execute(
            insert(LedgerPosting),
            [
                {
                    "id": new_id("pst"),
                    "org_id": org,
                    "entry_id": entry,
                    "line": i,
                    "account_id": acc,
                    "currency": "USD",
                    "amount": amount,
                }
                for i, (acc, amount) in enumerate([(buyer, PRICE), (seller, -(PRICE - FEE)), (fee, -FEE)])
            ],
        )


def run_round(db: Database, order: Callable[..., None], buyers: int, orders: int) -> tuple[float, str]:
    """Orders per second of ``buyers`` threads placing ``orders`` orders each; returns (rate, org id)."""
    org, buyer_ids, seller, fee = setup(db, buyers, orders)
    errors: list[BaseException] = []
    start = threading.Barrier(buyers + 1)

    def buyer(b: int) -> None:
        start.wait()
        try:
            for i in range(orders):
                order(db, org, buyer_ids[b], seller, fee, f"order-{b}-{i}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=buyer, args=(b,)) for b in range(buyers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return buyers * orders / elapsed, org


@contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A throwaway database on ``server`` (created now, dropped at the end)."""
    import psycopg

    name = f"teachloop_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_backend(label: str, url: str, args: argparse.Namespace) -> list[dict[str, object]]:
    db = Database(url)
    db.migrate()
    rates: dict[str, list[float]] = {"ledger": [], "plain inserts": []}
    checks: list[float] = []
    try:
        for r in range(args.rounds):
            order_of_play = [("ledger", ledger_order), ("plain inserts", plain_order)]
            for name, fn in order_of_play if r % 2 == 0 else reversed(order_of_play):
                rate, org = run_round(db, fn, args.buyers, args.orders)
                rates[name].append(rate)
                if name == "ledger":
                    t0 = time.perf_counter()
                    with db.session(write=False) as s:
                        report = Ledger(s).check(org)
                        buyers_left = [
                            a.held for a in Ledger(s).accounts.list(org) if a.name.startswith("buyer:")
                        ]
                    checks.append(time.perf_counter() - t0)
                    if not report.ok or any(buyers_left):
                        sys.exit(
                            f"{label}: invariants broken after round {r + 1}: "
                            f"{report.problems}, buyers left {buyers_left}"
                        )
                print(f"  {label} round {r + 1} {name}: {rate:.0f} orders/s", file=sys.stderr)
    finally:
        db.close()
    ledger_med = statistics.median(rates["ledger"])
    plain_med = statistics.median(rates["plain inserts"])
    return [
        {
            "backend": label,
            "contender": "ledger",
            "orders_per_s": round(ledger_med, 1),
            "vs_plain": round(ledger_med / plain_med, 3),
            "check_s": round(statistics.median(checks), 4),
            "invariants": "ok",
        },
        {
            "backend": label,
            "contender": "plain inserts",
            "orders_per_s": round(plain_med, 1),
            "vs_plain": 1.0,
            "check_s": None,
            "invariants": "not checked",
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--orders", type=int, default=200, help="orders per buyer per round")
    parser.add_argument("--buyers", type=int, default=8, help="concurrent buyer threads")
    parser.add_argument(
        "--postgres", default=None, help="a PostgreSQL server URL (e.g. postgresql://postgres@host/postgres)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += bench_backend("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", args)
    if args.postgres:
        with postgres_database(args.postgres) as url:
            rows += bench_backend("postgresql", url, args)
    print(f"\n{args.buyers} buyers x {args.orders} orders, {args.rounds} rounds, medians\n")
    print("| backend | contender | orders/s | vs plain | check s | invariants |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        check = "" if row["check_s"] is None else f"{row['check_s']:.3f}"
        print(
            f"| {row['backend']} | {row['contender']} | {row['orders_per_s']:.0f} | {row['vs_plain']:.2f}x | "
            f"{check} | {row['invariants']} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()

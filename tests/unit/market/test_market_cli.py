"""``teachloop market list / offer / buy / balance --check`` against a real SQLite store, as a seller and a buyer would."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.core.money import Money
from teachloop.market import orders
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.store.repos.datasets import Datasets, encode_snapshot, expert_label
from teachloop.store.schema.market import MarketListing, MarketOffer


def _chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_sqlite: Callable[[Path], str]) -> Database:
    url = migrated_sqlite(tmp_path / "cli.db")
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", url)
    monkeypatch.setenv("COLUMNS", "200")
    database = Database(url)
    blobs = BlobStore(str(tmp_path / "blobs"))
    rows = [expert_label(_chat(i), "ann", license="CC-BY-4.0") for i in range(3)]
    rows.append(expert_label(_chat(9), "bob", license="CC-BY-NC-4.0"))
    with database.session() as s:
        tenancy = Tenancy(s)
        seller = tenancy.create_org("seller").id
        tenancy.create_org("buyer")
        data, _ = encode_snapshot("chat", rows)
        Datasets(s).create(seller, name="mixed", kind="chat", rows=rows, blob_key=blobs.put_content(data),
                           origin="labels")
    return database


def _count(db: Database, table: object) -> int:
    with db.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


def test_list_offer_buy_and_check(db: Database) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["market", "list", "dataset", "mixed@1", "--org", "seller", "--title", "Mixed chats",
                                 "--publish"])
    assert listed.exit_code == 0, listed.output
    listing = re.search(r"listing (lst_\w+) \(published\)", listed.output)
    assert listing is not None, listed.output
    # commercial use of a non-commercial row is refused, naming the source; nothing is stored
    refused = runner.invoke(app, ["market", "offer", listing.group(1), "--org", "seller", "--amount", "10.00",
                                  "--use", "commercial"])
    assert refused.exit_code == 2 and "CC-BY-NC-4.0" in refused.output, refused.output
    assert _count(db, MarketOffer) == 0
    # a fraction of a cent is refused by name
    fraction = runner.invoke(app, ["market", "offer", listing.group(1), "--org", "seller", "--amount", "10.005",
                                   "--use", "non-commercial"])
    assert fraction.exit_code == 2 and "--amount" in fraction.output and _count(db, MarketOffer) == 0
    offered = runner.invoke(app, ["market", "offer", listing.group(1), "--org", "seller", "--amount", "10.00",
                                  "--use", "non-commercial"])
    assert offered.exit_code == 0 and "10.00 USD per licence" in offered.output, offered.output
    offer = re.search(r"offer (off_\w+)", offered.output)
    assert offer is not None
    with db.session(write=False) as s:
        buyer = Tenancy(s).find_org("buyer").id
    orders.deposit(db, orders.TestCharges(), buyer, "dep", Money(amount=2500, currency="USD"), "card")
    bought = runner.invoke(app, ["market", "buy", offer.group(1), "--org", "buyer", "--key", "k1"])
    assert bought.exit_code == 0 and "10.00 USD" in bought.output, bought.output
    again = runner.invoke(app, ["market", "buy", offer.group(1), "--org", "buyer", "--key", "k1"])
    assert "already bought with this key" in again.output
    checked = runner.invoke(app, ["market", "balance", "--check"])
    assert checked.exit_code == 0 and "ok" in checked.output, checked.output
    assert _count(db, MarketListing) == 1


def test_listing_another_organisations_dataset_is_refused(db: Database) -> None:
    result = CliRunner().invoke(app, ["market", "list", "dataset", "mixed@1", "--org", "buyer", "--title", "x"])
    assert result.exit_code == 2 and "mixed@1" in result.output, result.output
    assert _count(db, MarketListing) == 0


def test_request_broker_proposal_and_order_from_the_terminal(db: Database) -> None:
    """A buyer posts a request, a broker proposes the seller's listing, the buyer accepts and orders: the broker
    earns its commission; a bad request is refused by name and stores nothing."""
    from teachloop.ledger import Ledger
    from teachloop.store.schema.requests import DataRequest

    runner = CliRunner()
    with db.session() as s:
        Tenancy(s).create_org("broker")
    listed = runner.invoke(app, ["market", "list", "dataset", "mixed@1", "--org", "seller", "--title", "Mixed chats",
                                 "--publish"])
    listing = re.search(r"listing (lst_\w+)", listed.output)
    assert listing is not None, listed.output
    offered = runner.invoke(app, ["market", "offer", listing.group(1), "--org", "seller", "--amount", "10.00",
                                  "--use", "non-commercial"])
    offer = re.search(r"offer (off_\w+)", offered.output)
    assert offer is not None, offered.output
    bad = runner.invoke(app, ["market", "request", "post", "Chats", "--org", "buyer", "--description", "chat data",
                              "--budget", "1.005"])
    assert bad.exit_code == 2 and "--budget" in bad.output and _count(db, DataRequest) == 0, bad.output
    posted = runner.invoke(app, ["market", "request", "post", "Support chats", "--org", "buyer", "--description",
                                 "short question and answer chats", "--budget", "50.00"])
    request = re.search(r"request (dreq_\w+) \(open\)", posted.output)
    assert posted.exit_code == 0 and request is not None, posted.output
    listed_requests = runner.invoke(app, ["market", "request", "list", "--org", "broker", "--json"])
    assert request.group(1) in listed_requests.output, listed_requests.output
    # a supplier cannot propose another organisation's listing without acting as a broker
    refused = runner.invoke(app, ["market", "request", "propose", request.group(1), listing.group(1),
                                  "--org", "broker"])
    assert refused.exit_code != 0, refused.output
    proposed = runner.invoke(app, ["market", "request", "propose", request.group(1), listing.group(1), "--org",
                                   "broker", "--broker", "--commission-bps", "500"])
    proposal = re.search(r"proposal (prop_\w+)", proposed.output)
    assert proposed.exit_code == 0 and proposal is not None, proposed.output
    accepted = runner.invoke(app, ["market", "request", "accept", request.group(1), proposal.group(1),
                                   "--org", "buyer"])
    assert accepted.exit_code == 0 and "accepted" in accepted.output, accepted.output
    with db.session(write=False) as s:
        buyer, broker = Tenancy(s).find_org("buyer").id, Tenancy(s).find_org("broker").id
    orders.deposit(db, orders.TestCharges(), buyer, "dep", Money(amount=2500, currency="USD"), "card")
    ordered = runner.invoke(app, ["market", "request", "order", request.group(1), proposal.group(1), offer.group(1),
                                  "--org", "buyer", "--key", "rq1"])
    assert ordered.exit_code == 0 and "10.00 USD" in ordered.output, ordered.output
    with db.session(write=False) as s:
        held = {a.name: a.held for a in Ledger(s).accounts.list(broker)}
    assert 50 in held.values(), held  # 5% of 10.00 USD, pending for the broker
    checked = runner.invoke(app, ["market", "balance", "--check"])
    assert checked.exit_code == 0, checked.output

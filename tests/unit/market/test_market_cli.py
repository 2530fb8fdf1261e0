"""``teachloop market list / offer / buy / balance --check`` against a real SQLite store, as a seller and a buyer would."""

from __future__ import annotations

import re
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
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", url)
    monkeypatch.setenv("COLUMNS", "200")
    database = Database(url)
    database.migrate()
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

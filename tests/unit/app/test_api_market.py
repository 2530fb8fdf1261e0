"""The marketplace REST API end to end, in process over HTTP, on a migrated SQLite file.

A seller imports and lists a dataset, publishes it (card, licence, Croissant) and offers it; an
offer beyond the licence is refused naming the source licence; the buyer is funded through the
deposit path the services use (``market.orders.deposit``), buys with an idempotency key, retries
(the same order), downloads through a signed link (tampered 403, expired 410, another
organisation's 403) and a retry with another body is 409. The ledger checks clean at the end, and
no refused call posts anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import func, select

from teachloop.app import AppDeps, create_app
from teachloop.core.money import Money
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.ledger import Ledger
from teachloop.market import downloads, orders
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy
from teachloop.store.schema.ledger import LedgerEntry, LedgerPosting
from teachloop.store.schema.market import MarketListing, MarketOffer, MarketOrder
from tests.unit.app.conftest import auth, error_of


@dataclass(frozen=True)
class Org:
    id: str
    owner: str
    viewer: str


def _org(database: Database, name: str) -> Org:
    with database.session() as s:
        tenancy = Tenancy(s)
        org = tenancy.create_org(name)
        user = tenancy.create_user(f"owner@{name}.test")
        tenancy.add_member(org.id, user.id, Role.OWNER)
        keys = ApiKeys(s)
        return Org(org.id, keys.create_key(org.id, user.id, Role.OWNER, "owner").secret,
                   keys.create_key(org.id, user.id, Role.VIEWER, "viewer").secret)


@dataclass
class World:
    client: TestClient
    database: Database
    seller: Org
    buyer: Org
    other: Org


@pytest.fixture
def world(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[World]:
    database = Database(migrated_sqlite(tmp_path / "m.db"))
    blobs = BlobStore(tmp_path / "blobs")
    settings = Settings(home=tmp_path, model_cache=tmp_path / "models", database_url="sqlite://",
                        blob_url=str(tmp_path))
    app = create_app(AppDeps(settings, database, blobs))
    seller, buyer, other = _org(database, "seller"), _org(database, "buyer"), _org(database, "other")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield World(client, database, seller, buyer, other)
    database.close()


def _counts(database: Database) -> tuple[int, ...]:
    with database.session(write=False) as s:
        return tuple(int(s.scalar(select(func.count()).select_from(t)) or 0)
                     for t in (LedgerEntry, LedgerPosting, MarketOrder, MarketOffer, MarketListing))


def _chat(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"a{i}"}]}


def _listed(w: World, license: str = "CC-BY-NC-4.0") -> str:
    """The seller imports two rows under ``license``, lists and publishes them; the listing id."""
    r = w.client.post("/api/datasets", json={"name": "calc", "license": license, "rows": [_chat(0), _chat(1)]},
                      headers=auth(w.seller.owner))
    assert r.status_code == 201, r.text
    r = w.client.post("/api/market/listings", json={"kind": "dataset", "ref": "calc@1", "title": "Calc chats",
                                                    "description": "two arithmetic chats"},
                      headers=auth(w.seller.owner))
    assert r.status_code == 201 and r.json()["status"] == "draft", r.text
    listing = r.json()["id"]
    r = w.client.post(f"/api/market/listings/{listing}/publish", headers=auth(w.seller.owner))
    assert r.status_code == 200 and r.json()["status"] == "published", r.text
    return str(listing)


def test_sell_buy_retry_download(world: World) -> None:
    w = world
    listing = _listed(w)
    # the card and licence, from the lineage; the catalogue finds it by filters
    card = w.client.get(f"/api/market/listings/{listing}", headers=auth(w.buyer.viewer)).json()
    assert card["licence"]["use"] == "non-commercial" and card["licence"]["sources"] == {"CC-BY-NC-4.0": 2}
    assert card["card"]["preview"][0] == _chat(0) and card["card"]["size"]["rows"] == 2 and card["has_croissant"]
    found = w.client.get("/api/market/listings?kind=dataset&q=arithmetic", headers=auth(w.buyer.viewer)).json()
    assert [x["id"] for x in found["data"]] == [listing]
    for query in ("?kind=adapter", "?use=commercial", "?q=poetry"):
        assert w.client.get(f"/api/market/listings{query}", headers=auth(w.buyer.viewer)).json()["data"] == []
    error_of(w.client.get("/api/market/listings?use=everything", headers=auth(w.buyer.viewer)), 400)
    croissant = w.client.get(f"/api/market/listings/{listing}/croissant", headers=auth(w.buyer.viewer)).json()
    assert croissant["@type"] == "sc:Dataset" and croissant["conformsTo"].startswith("http://mlcommons.org/croissant")
    assert croissant["distribution"][0]["sha256"] == card["digest"].removeprefix("sha256:")

    # an offer beyond the licence: 400 naming the source licence, nothing written
    before = _counts(w.database)
    err = error_of(w.client.post(f"/api/market/listings/{listing}/offers", headers=auth(w.seller.owner),
                                 json={"amount": 1000, "currency": "USD", "use": "commercial"}), 400)
    assert err["param"] == "use" and "CC-BY-NC-4.0 (2 rows)" in err["message"], err
    assert _counts(w.database) == before
    r = w.client.post(f"/api/market/listings/{listing}/offers", headers=auth(w.seller.owner),
                      json={"amount": 1000, "currency": "USD", "use": "non-commercial"})
    assert r.status_code == 201, r.text
    offer = r.json()["id"]
    r = w.client.post(f"/api/market/listings/{listing}/offers", headers=auth(w.seller.owner),
                      json={"amount": 50, "currency": "USD", "use": "research"})
    cheap = r.json()["id"]
    offered = w.client.get(f"/api/market/listings/{listing}/offers", headers=auth(w.buyer.viewer)).json()["data"]
    assert [o["id"] for o in offered] == [offer, cheap]

    # no funds: 409, nothing posted; then funded through the deposit path
    before = _counts(w.database)
    err = error_of(w.client.post("/api/market/orders", json={"offer": offer},
                                 headers={**auth(w.buyer.owner), "Idempotency-Key": "buy-1"}), 409)
    assert err["code"] == "insufficient_funds"
    assert _counts(w.database) == before
    assert orders.deposit(w.database, orders.TestCharges(), w.buyer.id, "dep-1", Money(amount=5000, currency="USD"),
                          "card_ok") == "paid"

    key = {**auth(w.buyer.owner), "Idempotency-Key": "buy-1"}
    first = w.client.post("/api/market/orders", json={"offer": offer}, headers=key)
    assert first.status_code == 201 and first.json()["amount"] == 1000 and not first.json()["replayed"], first.text
    assert sum(s["amount"] for s in first.json()["shares"]) == 1000
    after_buy = _counts(w.database)
    again = w.client.post("/api/market/orders", json={"offer": offer}, headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"] and again.json()["replayed"]
    err = error_of(w.client.post("/api/market/orders", json={"offer": cheap}, headers=key), 409)
    assert "buy-1" in err["message"] and err["param"] == "Idempotency-Key"
    error_of(w.client.post("/api/market/orders", json={"offer": offer}, headers=auth(w.buyer.owner)), 400)
    error_of(w.client.post("/api/market/orders", json={"offer": offer},
                           headers={**auth(w.buyer.viewer), "Idempotency-Key": "buy-2"}), 403)
    assert _counts(w.database) == after_buy

    # the entitlement, a signed link, the file
    ents = w.client.get("/api/market/entitlements", headers=auth(w.buyer.viewer)).json()["data"]
    assert [e["id"] for e in ents] == [first.json()["entitlement_id"]] and ents[0]["active"]
    assert w.client.get("/api/market/entitlements", headers=auth(w.other.viewer)).json()["data"] == []
    r = w.client.post(f"/api/market/entitlements/{ents[0]['id']}/links", json={"format": "openai"},
                      headers=auth(w.buyer.owner))
    assert r.status_code == 201, r.text
    url, token = r.json()["url"], r.json()["token"]
    r = w.client.get(url, headers=auth(w.buyer.viewer))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/jsonl"), r.text
    assert [json.loads(line) for line in r.text.splitlines()] == [_chat(0), _chat(1)]
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    assert "signature" in error_of(w.client.get(f"/api/market/downloads/{tampered}",
                                                headers=auth(w.buyer.viewer)), 403)["message"]
    assert "another organisation" in error_of(w.client.get(url, headers=auth(w.other.viewer)), 403)["message"]
    error_of(w.client.get(url), 401)
    error_of(w.client.post(f"/api/market/entitlements/{ents[0]['id']}/links", json={"format": "csv"},
                           headers=auth(w.buyer.owner)), 400)
    with pytest.MonkeyPatch.context() as mp:  # a link signed an hour ago has expired
        mp.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 3600)
        with w.database.session() as s:
            old = downloads.sign_link(s, w.buyer.id, ents[0]["id"], "openai")
    assert error_of(w.client.get(f"/api/market/downloads/{old}", headers=auth(w.buyer.viewer)), 410)["code"] \
        == "link_expired"
    assert w.client.get("/api/market/entitlements", headers=auth(w.buyer.viewer)).json()["data"][0]["uses"] == 1

    # the seller's pending earnings; the orders listing; the ledger is clean
    earned = w.client.get("/api/market/earnings", headers=auth(w.seller.viewer)).json()
    assert earned["pending"] == {"USD": 900} and earned["payable"] == {}, earned
    assert w.client.get("/api/market/earnings", headers=auth(w.buyer.viewer)).json()["accounts"] == []
    listed = w.client.get("/api/market/orders", headers=auth(w.buyer.viewer)).json()["data"]
    assert [o["id"] for o in listed] == [first.json()["id"]]
    with w.database.session(write=False) as s:
        assert Ledger(s).check().ok
        assert Ledger(s).accounts.get(w.buyer.id, "buyer:prepaid:USD").held == 4000


def test_refund_and_payouts(world: World) -> None:
    w = world
    listing = _listed(w, license="CC-BY-4.0")
    offer = w.client.post(f"/api/market/listings/{listing}/offers", headers=auth(w.seller.owner),
                          json={"amount": 300, "currency": "USD"}).json()["id"]
    orders.deposit(w.database, orders.TestCharges(), w.buyer.id, "dep", Money(amount=300, currency="USD"), "card")
    order = w.client.post("/api/market/orders", json={"offer": offer},
                          headers={**auth(w.buyer.owner), "Idempotency-Key": "k"}).json()
    error_of(w.client.post(f"/api/market/orders/{order['id']}/refund", headers=auth(w.seller.owner)), 404)
    r = w.client.post(f"/api/market/orders/{order['id']}/refund", headers=auth(w.buyer.owner))
    assert r.status_code == 200 and r.json()["status"] == "refunded", r.text
    ent = w.client.get("/api/market/entitlements", headers=auth(w.buyer.viewer)).json()["data"][0]
    assert not ent["active"]
    error_of(w.client.post(f"/api/market/entitlements/{ent['id']}/links", json={}, headers=auth(w.buyer.owner)), 403)
    assert w.client.get("/api/market/earnings", headers=auth(w.seller.viewer)).json()["pending"] == {"USD": 0}
    # payouts: admin only; nothing payable yet
    error_of(w.client.post("/api/market/payouts", json={}, headers=auth(w.seller.viewer)), 403)
    r = w.client.post("/api/market/payouts", json={"batch": "b1"}, headers=auth(w.seller.owner))
    assert r.status_code == 200 and r.json() == {"batch": "b1", "released": 0, "payouts": []}, r.text
    with w.database.session(write=False) as s:
        assert Ledger(s).check().ok
        assert Ledger(s).accounts.get(w.buyer.id, "buyer:prepaid:USD").held == 300


def test_listing_another_orgs_dataset_is_not_found(world: World) -> None:
    w = world
    _listed(w)
    before = _counts(w.database)
    err = error_of(w.client.post("/api/market/listings", json={"kind": "dataset", "ref": "calc@1", "title": "x"},
                                 headers=auth(w.other.owner)), 404)
    assert err["param"] == "ref"
    error_of(w.client.post("/api/market/listings", json={"kind": "song", "ref": "calc@1", "title": "x"},
                           headers=auth(w.seller.owner)), 400)
    assert _counts(w.database) == before
    assert w.client.get("/api/market/listings?mine=true", headers=auth(w.other.viewer)).json()["data"] == []


def test_cli_buy_is_idempotent_per_key(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from teachloop.cli.main import app

    w = world
    listing = _listed(w, license="CC-BY-4.0")
    offer = w.client.post(f"/api/market/listings/{listing}/offers", headers=auth(w.seller.owner),
                          json={"amount": 250, "currency": "USD"}).json()["id"]
    orders.deposit(w.database, orders.TestCharges(), w.buyer.id, "dep", Money(amount=1000, currency="USD"), "card")
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'm.db'}")
    runner = CliRunner()
    first = runner.invoke(app, ["market", "buy", offer, "--org", "buyer", "--key", "cli-1"])
    assert first.exit_code == 0 and "ord_" in first.output and "2.50 USD" in first.output, first.output
    again = runner.invoke(app, ["market", "buy", offer, "--org", "buyer", "--key", "cli-1"])
    assert again.exit_code == 0 and "already bought" in again.output, again.output
    assert first.output.split()[1].rstrip(":") == again.output.split()[1]
    bad = runner.invoke(app, ["market", "buy", "off_nothing", "--org", "buyer", "--key", "cli-2"])
    assert bad.exit_code != 0 and "not found" in bad.output, bad.output
    with w.database.session(write=False) as s:
        assert Ledger(s).accounts.get(w.buyer.id, "buyer:prepaid:USD").held == 750

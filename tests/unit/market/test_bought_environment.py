"""A bought environment (``OWNER/NAME@VERSION``): resolved only under an active entitlement, one metered
and billed run per use, refused by name after a refund; never bought answers like a name that does not exist."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from teachloop.catalog import meter_env_run, publish_package, resolve_env
from teachloop.catalog.usage import install_usage_gate
from teachloop.core.errors import Forbidden, NotFound
from teachloop.core.money import Money
from teachloop.envs.scaffold import scaffold
from teachloop.ledger import Ledger
from teachloop.market import listings, offers, orders
from teachloop.market.entitlements import MarketUsageGate, list_uses
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.store.schema.market import MarketUsage


@pytest.fixture
def world(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[tuple[Database, BlobStore, str, str, str, str]]:
    db = Database(migrated_sqlite(tmp_path / "m.db"))
    blobs = BlobStore(str(tmp_path / "blobs"))
    with db.session() as s:
        seller = Tenancy(s).create_org("envmaker").id
        buyer = Tenancy(s).create_org("lab").id
    folder = scaffold("wordcount", tmp_path / "pkg")
    published = asyncio.run(publish_package(db, blobs, seller, folder))
    ref = published.version.ref
    with db.session() as s:
        lst = listings.create_listing(s, seller, kind="environment", ref=ref, title="wordcount", description="d")
        listings.publish_listing(s, seller, lst.id)
        offer = offers.create_offer(s, seller, lst.id, pricing="env_run", amount=25, currency="USD")
    orders.deposit(db, orders.TestCharges(), buyer, "dep", Money(amount=1000, currency="USD"), "card")
    previous = install_usage_gate(MarketUsageGate())
    yield db, blobs, buyer, offer.id, f"envmaker/{ref}", seller
    install_usage_gate(previous)
    db.close()


def _resolve(db: Database, blobs: BlobStore, org: str, ref: str, cache: Path):  # type: ignore[no-untyped-def]
    with db.session(write=False) as s:
        return resolve_env(ref, trusted=False, session=s, blobs=blobs, org_id=org, cache=cache)


def test_a_bought_environment_runs_metered_and_billed_and_is_refused_after_a_refund(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, blobs, buyer, offer_id, ref, seller = world
    cache = tmp_path / "cache"
    name, _, version = ref.partition("@")
    with pytest.raises(NotFound) as never_bought:
        _resolve(db, blobs, buyer, ref, cache)
    with pytest.raises(NotFound) as missing:
        _resolve(db, blobs, buyer, f"{name}@9.9.9", cache)
    # naming a version that exists but was not bought reads like one that does not exist
    assert never_bought.value.message.replace(ref, "X") == missing.value.message.replace(f"{name}@9.9.9", "X")
    assert "buy a listing" in never_bought.value.message
    with db.session() as s:
        order = orders.buy(s, buyer, offer_id, "buy-env")
    resolved = _resolve(db, blobs, buyer, ref, cache)
    assert resolved.bought is not None and resolved.ref == ref and resolved.env is not None
    with db.session(write=False) as s:
        before = Ledger(s).accounts.get(buyer, "buyer:prepaid:USD").held
    for run in range(2):
        with db.session() as s:
            assert meter_env_run(s, buyer, resolved, detail={"run": str(run)})
    with db.session(write=False) as s:
        uses = [(u.action, u.allowed, u.units) for u in s.scalars(select(MarketUsage).where(MarketUsage.org_id == buyer))]
        after = Ledger(s).accounts.get(buyer, "buyer:prepaid:USD").held
        assert Ledger(s).check().ok
    assert uses == [("run", True, 1), ("run", True, 1)]
    assert before - after == 2 * 25  # two runs billed from the meter at the offer's price
    with db.session(write=False) as s:  # the environment maker sees each run, without the buyer's run details
        sold = list_uses(s, seller, as_seller=True)
        bought = list_uses(s, buyer)
        assert list_uses(s, buyer, as_seller=True) == [] and list_uses(s, seller) == []
    assert [(u.action, u.buyer_org_id, u.billed, u.detail) for u in sold] == [("run", buyer, True, None)] * 2
    assert sorted(u.detail["run"] for u in bought if u.detail) == ["0", "1"]
    with db.session() as s:
        orders.refund(s, buyer, order.id, "refund-env")
    with pytest.raises(Forbidden, match="revoked"):
        _resolve(db, blobs, buyer, ref, cache)
    with db.session() as s, pytest.raises(Forbidden, match="revoked"):
        meter_env_run(s, buyer, resolved)


def test_without_the_marketplace_another_orgs_environment_is_not_found(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, blobs, buyer, _, ref, _ = world
    previous = install_usage_gate(None)
    try:
        with pytest.raises(NotFound, match="not available to this organisation"):
            _resolve(db, blobs, buyer, ref, tmp_path / "cache")
    finally:
        install_usage_gate(previous)

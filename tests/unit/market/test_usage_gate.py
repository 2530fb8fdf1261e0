"""Use of a bought dataset by the loop: checked against the entitlement and metered through
``catalog.usage`` (``market.entitlements.MarketUsageGate``), refused by name after a refund."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from teachloop.catalog.usage import install_usage_gate, meter_use
from teachloop.core.errors import Forbidden, InvalidInput
from teachloop.core.money import Money
from teachloop.ledger import Ledger
from teachloop.loop.config import check_references, meter_bought_sources, validate_loop_config
from teachloop.market import entitlements, listings, offers, orders
from teachloop.market.entitlements import MarketUsageGate
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.store.repos.datasets import Datasets, NewRow, encode_snapshot
from teachloop.store.repos.deployments import Deployments, DeploymentState
from teachloop.store.schema.market import MarketUsage


def _chat(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


@pytest.fixture
def world(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[tuple[Database, BlobStore, str, str, str]]:
    db = Database(migrated_sqlite(tmp_path / "m.db"))
    blobs = BlobStore(str(tmp_path / "blobs"))
    rows = [NewRow(content=_chat(i), split="train", source_kind="import", license="CC-BY-4.0") for i in range(4)]
    with db.session() as s:
        seller = Tenancy(s).create_org("seller").id
        buyer = Tenancy(s).create_org("buyer").id
        Deployments(s).create(buyer, "calc", DeploymentState("tiny-base"))
        data, _ = encode_snapshot("chat", rows)
        Datasets(s).create(seller, name="clean", kind="chat", rows=rows, blob_key=blobs.put_content(data),
                           origin="import")
        lst = listings.create_listing(s, seller, kind="dataset", ref="clean@1", title="clean", description="d")
        listings.publish_listing(s, seller, lst.id)
        offer = offers.create_offer(s, seller, lst.id, pricing="training_use", amount=30, currency="USD")
    orders.deposit(db, orders.TestCharges(), buyer, "dep", Money(amount=1000, currency="USD"), "card")
    with db.session() as s:
        order_id = orders.buy(s, buyer, offer.id, "b").id
    previous = install_usage_gate(MarketUsageGate())
    yield db, blobs, seller, buyer, order_id
    install_usage_gate(previous)
    db.close()


def _cfg() -> Any:
    return validate_loop_config({
        "deployment": "calc", "sources": [{"kind": "dataset", "dataset": "seller/clean"}],
        "curation": {"holdout_frac": 0.2, "pii": False}, "trigger": {"every": 10, "min_examples": 2},
        "algorithm": {"kind": "sft", "train": {"steps": 1, "lora": {"rank": 4}, "data": {"batch_size": 2}}},
        "gate": {"metric": "likelihood"}, "promotion": {"signals": ["feedback"]},
    })


def _uses(db: Database, buyer: str) -> list[tuple[str, bool, int]]:
    with db.session(write=False) as s:
        return [(u.action, u.allowed, u.units) for u in s.scalars(
            select(MarketUsage).where(MarketUsage.org_id == buyer).order_by(MarketUsage.created_at, MarketUsage.id))]


def _balance(db: Database, buyer: str) -> int:
    with db.session(write=False) as s:
        return Ledger(s).accounts.get(buyer, "buyer:prepaid:USD").held


def test_a_loop_iteration_on_a_bought_dataset_is_metered_once_and_billed(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, blobs, _, buyer, _ = world
    cfg = _cfg()
    with db.session(write=False) as s:  # what LoopRunner._load does every tick: resolution meters nothing
        refs = check_references(cfg, s, blobs=blobs, org_id=buyer, cache=tmp_path / "envs")
    assert 0 in refs.licenses
    assert _uses(db, buyer) == []
    with db.session() as s:  # what LoopRunner.run_iteration does once per iteration
        assert meter_bought_sources(s, cfg, refs, org_id=buyer, detail={"iteration": 1}) == 1
    assert _uses(db, buyer) == [("train", True, 1)]
    assert _balance(db, buyer) == 1000 - 30  # the training_use offer is billed from the meter at once
    with db.session() as s:
        meter_bought_sources(s, cfg, refs, org_id=buyer, detail={"iteration": 2})
    assert _uses(db, buyer) == [("train", True, 1), ("train", True, 1)]
    assert _balance(db, buyer) == 1000 - 60


def test_after_a_refund_the_dataset_is_refused_by_name_and_nothing_is_metered(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, blobs, _, buyer, order_id = world
    cfg = _cfg()
    with db.session(write=False) as s:
        refs = check_references(cfg, s, blobs=blobs, org_id=buyer, cache=tmp_path / "envs")
    with db.session() as s:
        assert orders.refund(s, buyer, order_id, "r").status == "refunded"
    # the next tick's resolution says why (the loop pauses with this note; no iteration starts)
    with db.session(write=False) as s, pytest.raises(InvalidInput) as err:
        check_references(cfg, s, blobs=blobs, org_id=buyer, cache=tmp_path / "envs")
    assert err.value.param == "sources.0.dataset"
    assert "seller/clean" in err.value.message and "revoked (refunded)" in err.value.message
    # an iteration holding references resolved before the refund is refused before reading a row
    with pytest.raises(Forbidden) as refused, db.session() as s:  # raised out of the session: rolled back
        meter_bought_sources(s, cfg, refs, org_id=buyer)
    assert "dataset 'seller/clean'" in refused.value.message and "revoked" in refused.value.message
    # caught inside the session (as run_iteration does), the refusal is committed to the access log; never billed
    with db.session() as s, pytest.raises(Forbidden):
        meter_bought_sources(s, cfg, refs, org_id=buyer)
    assert _uses(db, buyer) == [("train", False, 1)]
    assert _balance(db, buyer) == 1000


def test_without_a_gate_or_for_own_data_nothing_is_metered(world) -> None:  # type: ignore[no-untyped-def]
    db, _, seller, buyer, _ = world
    with db.session() as s:
        own = Datasets(s).resolve(seller, "clean@1")
        assert meter_use(s, seller, "dataset", own.id, "train", label="clean@1") is False  # not bought: no say
        previous = install_usage_gate(None)
        try:
            assert meter_use(s, buyer, "dataset", own.id, "train", label="seller/clean@1") is False
        finally:
            install_usage_gate(previous)
    assert _uses(db, buyer) == [] and _uses(db, seller) == []
    with db.session(write=False) as s:
        assert entitlements.list_entitlements(s, buyer)[0].uses == 0

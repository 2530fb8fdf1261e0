"""A training run on a catalog dataset (``data.train = "dataset:OWNER/NAME@N"``): a bought one trains and is
metered once per run; never granted reads like a missing dataset; a refunded one is refused with the reason,
before any weights change; a file path still works as before."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from teachloop.catalog.usage import install_usage_gate
from teachloop.core.errors import Forbidden, NotFound
from teachloop.core.money import Money
from teachloop.market import listings, offers, orders
from teachloop.market.entitlements import MarketUsageGate
from teachloop.store import Tenancy
from teachloop.store.repos.datasets import Datasets, NewRow, encode_snapshot
from teachloop.store.schema.market import MarketUsage
from teachloop.train import Trainer, TrainerDeps, validate_config


def _chat(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i} {i}"}]}


def _cfg(train: str) -> Any:
    return validate_config({"name": "bought", "algorithm": "sft", "steps": 2, "checkpoint_every": 0, "seed": 0,
                            "lora": {"rank": 4}, "data": {"train": train, "batch_size": 2, "holdout_frac": 0.25},
                            "eval": {"tasks": 0}})


def test_a_run_trains_on_a_bought_dataset_metered_once(engine: Any, renderer: Any, store: Any,
                                                       tmp_path: Path) -> None:
    db, blobs, buyer = store
    rows = [NewRow(content=_chat(i), split="train", source_kind="import", license="CC-BY-4.0") for i in range(8)]
    with db.session() as s:
        seller = Tenancy(s).create_org("datavendor").id
        data, _ = encode_snapshot("chat", rows)
        Datasets(s).create(seller, name="numbers", kind="chat", rows=rows, blob_key=blobs.put_content(data),
                           origin="import")
        lst = listings.create_listing(s, seller, kind="dataset", ref="numbers@1", title="numbers", description="d")
        listings.publish_listing(s, seller, lst.id)
        offer = offers.create_offer(s, seller, lst.id, pricing="training_use", amount=40, currency="USD")
    deps = TrainerDeps(engine=engine, renderer=renderer, database=db, blobs=blobs, org_id=buyer,
                       env_cache=tmp_path / "envs")
    previous = install_usage_gate(MarketUsageGate())
    try:
        with pytest.raises(NotFound, match=r"data\.train"):  # not bought: exactly like a dataset that is not there
            asyncio.run(Trainer(_cfg("dataset:datavendor/numbers@1"), deps).run())
        with pytest.raises(NotFound, match=r"data\.train"):
            asyncio.run(Trainer(_cfg("dataset:datavendor/nothing@1"), deps).run())
        orders.deposit(db, orders.TestCharges(), buyer, "dep", Money(amount=1000, currency="USD"), "card")
        with db.session() as s:
            order = orders.buy(s, buyer, offer.id, "buy-numbers")
        run = asyncio.run(Trainer(_cfg("dataset:datavendor/numbers@1"), deps).run())
        assert run.status == "completed" and run.inputs["dataset"]["ref"] == "datavendor/numbers@1"
        assert run.inputs["dataset"]["rows"] == 8
        with db.session(write=False) as s:
            uses = [(u.action, u.units, u.detail) for u in s.scalars(select(MarketUsage).where(
                MarketUsage.org_id == buyer, MarketUsage.allowed))]
        assert uses == [("train", 1, {"run": run.id})]  # one training use per run, billed from the meter
        with db.session() as s:
            orders.refund(s, buyer, order.id, "refund-numbers")
        with pytest.raises(Forbidden, match="revoked"):
            asyncio.run(Trainer(_cfg("dataset:datavendor/numbers@1"), deps).run())
    finally:
        install_usage_gate(previous)

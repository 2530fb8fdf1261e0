"""docs/loop.md: "a revoked grant pauses the grantee's loop at its next tick" -- the grantee's loop trains on
another organisation's dataset under a grant, the owner revokes it, and the next tick pauses the loop (naming
the source), starts no iteration and changes nothing; a new grant lets the loop go on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from teachloop.catalog.imports import import_dataset, read_jsonl
from teachloop.loop import LoopRunner, configure_loop, history
from teachloop.render import Renderer
from teachloop.store import Tenancy
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.loops import Loops
from tests.unit.loop.conftest import DEPLOYMENT, Store, deps_for, grpo_config

CHAT = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": str(i + 1)}]}
        for i in range(12)]


def _import(store: Store, org: str, rows: list[dict[str, Any]]) -> None:
    import_dataset(store.db, store.blobs, org, read_jsonl("\n".join(json.dumps(r) for r in rows)), name="corpus",
                   license="CC-BY-4.0")


def test_a_revoked_grant_pauses_the_grantees_loop_at_its_next_tick(store: Store, fake_engine: Any,
                                                                   renderer: Renderer) -> None:
    with store.db.session() as s:
        seller = Tenancy(s).create_org("seller").id
    _import(store, seller, CHAT[:6])
    with store.db.session() as s:
        grant = Datasets(s).grant(seller, "corpus", store.org_id, license="LicenseRef-deal")
    raw = grpo_config(sources=[{"kind": "dataset", "dataset": "seller/corpus"}],
                      algorithm={"kind": "sft", "train": {"steps": 1, "lora": {"rank": 4}, "data": {"batch_size": 2}}},
                      gate={"metric": "likelihood"}, promotion={"signals": ["feedback"]},
                      trigger={"every": 4, "min_examples": 2})
    raw["curation"].pop("pii", None)  # as shipped
    configure_loop(store.db, store.blobs, store.org_id, raw, cache=store.cache)
    runner = LoopRunner(deps_for(store, fake_engine, renderer), DEPLOYMENT)
    first = asyncio.run(runner.tick())
    assert first.iteration == 1 and first.phase != "paused", first
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["status"] != "failed", it["reason"]

    _import(store, seller, CHAT)  # a new version arrives (the trigger would be due) ...
    with store.db.session() as s:  # ... and the owner revokes the grant
        Datasets(s).revoke(seller, grant.id)
    paused = asyncio.run(runner.tick())
    assert paused.phase == "paused" and paused.iteration is None
    assert "sources.0.dataset" in paused.note and "seller/corpus" in paused.note
    with store.db.session(write=False) as s:
        loop = Loops(s).list(store.org_id)[0]
        assert str(loop.note).startswith("paused:") and "seller/corpus" in str(loop.note)
    assert len(history(store.db, store.org_id, DEPLOYMENT)) == 1  # no iteration started

    with store.db.session() as s:  # granted again: the next tick goes on with the new version
        Datasets(s).grant(seller, "corpus", store.org_id, license="LicenseRef-deal")
    again = asyncio.run(runner.tick())
    assert again.phase != "paused" and again.iteration == 2, again
    with store.db.session(write=False) as s:
        assert Loops(s).list(store.org_id)[0].note is None

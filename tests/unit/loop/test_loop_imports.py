"""Data the loop did not make, as loop sources: imported datasets the organisation owns, expert labels, and
datasets of another organisation used under a grant (entitlement) -- lineage carried forward, and 404s that say
nothing. The import formats and their refusals are tested in tests/unit/catalog/test_catalog_imports.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from teachloop.catalog.imports import import_dataset, read_jsonl
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.loop import check_references, collect, configure_loop, validate_loop_config
from teachloop.loop.sources import Candidate
from teachloop.store import Tenancy
from teachloop.store.repos.datasets import Datasets, NewRow, encode_snapshot, expert_label
from teachloop.store.repos.loops import Loops
from tests.unit.loop.conftest import Store, grpo_config

CHAT = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": str(i + 1)}],
         "answer": str(i + 1)} for i in range(4)]


def _jsonl(rows: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    return read_jsonl("\n".join(json.dumps(r) for r in rows))


def _import(store: Store, rows: list[dict[str, Any]], name: str = "owned", **kw: Any) -> Any:
    kw.setdefault("license", "CC-BY-4.0")
    return import_dataset(store.db, store.blobs, store.org_id, _jsonl(rows), name=name, **kw)


def _sft(sources: list[dict[str, Any]]) -> dict[str, Any]:
    return grpo_config(sources=sources, algorithm={"kind": "sft", "train": {}}, gate={"metric": "likelihood"},
                       promotion={"signals": ["feedback"]})


def _collect(store: Store, raw: dict[str, Any], org_id: str | None = None) -> list[Candidate]:
    org = org_id or store.org_id
    cfg = validate_loop_config(raw)
    with store.db.session(write=False) as s:
        refs = check_references(cfg, s, blobs=store.blobs, org_id=org, cache=store.cache)
        return collect(s, cfg, refs, org_id=org, loop_id="loop_none")


def test_an_imported_file_is_an_owned_snapshot_with_import_lineage(store: Store) -> None:
    ds, created = _import(store, [*CHAT, {**CHAT[0], "split": "holdout", "score": 0.5}])
    assert created and ds.origin == "import" and ds.kind == "chat" and ds.ref == "owned@1"
    assert ds.licenses == ["CC-BY-4.0"] and ds.split_counts == {"train": 4, "holdout": 1}
    assert ds.source["import"] == {"format": "openai", "kind": "rows", "rows": 5}
    assert store.blobs.get_bytes(ds.blob_key) == encode_snapshot("chat", _rows(store, ds.id))[0]
    with store.db.session(write=False) as s:
        rows = Datasets(s).rows(store.org_id, ds.id)
    assert {(r.source_kind, r.license, r.expert_id) for r in rows} == {("import", "CC-BY-4.0", None)}
    assert rows[0].content["answer"] == "1" and rows[4].score == 0.5
    again, created = _import(store, [*CHAT, {**CHAT[0], "split": "holdout", "score": 0.5}])
    assert not created and again.id == ds.id  # the same rows are the same snapshot
    # the loop trains on it like any owned dataset, with the lineage carried forward
    [c, *_] = _collect(store, _sft([{"kind": "dataset", "dataset": "owned"}]))
    assert c.source_kind == "dataset" and c.lineage["license"] == "CC-BY-4.0" and c.lineage["source_row_id"]


def _rows(store: Store, dataset_id: str) -> list[Any]:
    from teachloop.store.repos.datasets import new_row_of

    with store.db.session(write=False) as s:
        return [new_row_of(r) for r in Datasets(s).rows(store.org_id, dataset_id)]


def test_expert_labels_are_datasets_whose_rows_name_their_expert(store: Store) -> None:
    labels = [{**row, "expert_id": f"usr_expert{i % 2}"} for i, row in enumerate(CHAT)]
    ds, _ = _import(store, labels, name="gold", kind="labels")
    assert ds.origin == "labels"
    with store.db.session(write=False) as s:
        rows = Datasets(s).rows(store.org_id, ds.id)
    assert [(r.source_kind, r.expert_id) for r in rows[:2]] == [("expert", "usr_expert0"), ("expert", "usr_expert1")]
    # a later writer (the workforce package) records labels the same way, through the store
    more = [expert_label({"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi"}]},
                         "usr_expert7", license="CC-BY-4.0")]
    data, _ = encode_snapshot("chat", more)
    with store.db.session() as s:
        Datasets(s).create(store.org_id, name="work-batch", kind="chat", rows=more, blob_key=store.blobs.put_content(data),
                           origin="labels")
        with pytest.raises(InvalidInput, match="expert labels only"):
            Datasets(s).create(store.org_id, name="bad-labels", kind="chat",
                               rows=[NewRow(content=CHAT[0], split="train", source_kind="import")], blob_key="k",
                               origin="labels")
        with pytest.raises(InvalidInput, match="holds labels snapshots"):
            Datasets(s).create(store.org_id, name="gold", kind="chat", rows=more, blob_key="k", origin="import")
    _import(store, CHAT, name="not-labels")
    # the labels source: every label dataset of the organisation (newest versions), or one by name
    every = _collect(store, _sft([{"kind": "labels"}]))
    assert {c.lineage["expert_id"] for c in every} == {"usr_expert0", "usr_expert1", "usr_expert7"}
    assert {c.source_kind for c in every} == {"expert"} and len(every) == 5
    one = _collect(store, _sft([{"kind": "labels", "dataset": "work-batch"}]))
    assert [c.lineage["expert_id"] for c in one] == ["usr_expert7"]
    with pytest.raises(InvalidInput, match="not a label dataset") as info:
        _collect(store, _sft([{"kind": "labels", "dataset": "not-labels"}]))
    assert info.value.param == "sources.0.dataset"
    # GRPO takes label rows that carry an answer, as prompts
    grpo = grpo_config(sources=[{"kind": "grader", "env": "arithmetic"}, {"kind": "labels", "dataset": "gold"}])
    prompts = [c for c in _collect(store, grpo) if c.source_kind == "expert"]
    assert len(prompts) == 4 and prompts[0].content["messages"][-1]["role"] == "user" and "answer" in prompts[0].content


def test_a_loop_snapshot_of_labels_keeps_the_expert(store: Store) -> None:
    from teachloop.loop.curation import curate
    from teachloop.loop.training import snapshot

    _import(store, [{**row, "expert_id": "usr_ann"} for row in CHAT], name="gold", kind="labels")
    raw = _sft([{"kind": "labels"}])
    cfg = validate_loop_config(raw)
    report = curate(_collect(store, raw), cfg.curation)
    ds = snapshot(store.db, store.blobs, store.org_id, cfg, report.rows, {"loop_id": "x"})
    with store.db.session(write=False) as s:
        rows = Datasets(s).rows(store.org_id, ds.id)
    assert ds.origin == "loop" and {(r.source_kind, r.expert_id, r.license) for r in rows} == {
        ("expert", "usr_ann", "CC-BY-4.0")}
    assert all(r.source_row_id for r in rows)


def test_another_organisations_dataset_needs_a_grant_and_is_otherwise_not_found(store: Store) -> None:
    with store.db.session() as s:
        seller = Tenancy(s).create_org("seller").id
    ds, _ = import_dataset(store.db, store.blobs, seller, _jsonl(CHAT), name="corpus", license="CC-BY-NC-4.0")
    import_dataset(store.db, store.blobs, seller, _jsonl(CHAT[:2]), name="corpus", license="CC-BY-NC-4.0")

    def refused(ref: str) -> str:
        with pytest.raises(InvalidInput) as info:
            _collect(store, _sft([{"kind": "dataset", "dataset": ref}, {"kind": "feedback"}]))
        assert info.value.param == "sources.0.dataset"
        return str(info.value).replace(repr(ref), "REF")

    # without a grant: exactly the error of a dataset (or an organisation) that does not exist
    assert refused("seller/corpus@1") == refused("seller/ghost@1") == refused("nobody/corpus@1")
    with store.db.session(write=False) as s, pytest.raises(NotFound):
        Datasets(s).rows(store.org_id, ds.id)
    with store.db.session() as s:
        grant = Datasets(s).grant(seller, "corpus", store.org_id, license="LicenseRef-acme-deal", version=1)
        with pytest.raises(NotFound):
            Datasets(s).grant(seller, "ghost", store.org_id, license="MIT")
        with pytest.raises(InvalidInput):
            Datasets(s).grant(seller, "corpus", seller, license="MIT")
    rows = _collect(store, _sft([{"kind": "dataset", "dataset": "seller/corpus@1"}, {"kind": "feedback"}]))
    assert len(rows) == 4 and {c.lineage["license"] for c in rows} == {"LicenseRef-acme-deal"}
    assert refused("seller/corpus@2") == refused("seller/ghost@1")  # the grant covers version 1 only
    assert refused("seller/corpus") == refused("seller/ghost")  # the newest version is 2: not granted
    with store.db.session() as s:
        Datasets(s).revoke(seller, grant.id)
        assert Datasets(s).grants(seller)[0].revoked_at is not None
    assert refused("seller/corpus@1") == refused("seller/ghost@1")
    with store.db.session() as s:
        Datasets(s).grant(seller, "corpus", store.org_id, license="MIT")  # every version
    assert len(_collect(store, _sft([{"kind": "dataset", "dataset": "seller/corpus"}]))) == 2
    configure_loop(store.db, store.blobs, store.org_id, _sft([{"kind": "dataset", "dataset": "seller/corpus"}]),
                   cache=store.cache)
    with store.db.session(write=False) as s:
        assert Loops(s).list(store.org_id)[0].config["sources"][0]["dataset"] == "seller/corpus"
        assert Datasets(s).list(store.org_id) == []  # the grantee lists only its own datasets

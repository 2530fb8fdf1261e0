"""Dataset versions are immutable snapshots: content digest, versions, row lineage, exports (``catalog``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teachloop.catalog.datasets import record_snapshot
from teachloop.catalog.export import export_dataset
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.store.repos.datasets import Datasets, NewRow, decode_snapshot, encode_snapshot, new_row_of
from teachloop.store.schema.datasets import DatasetRow
from tests.unit.catalog.conftest import Store, add_trace


def _rows(store: Store) -> list[NewRow]:
    t1 = add_trace(store, "What is 2 + 2?", "answer: 4")
    t2 = add_trace(store, "What is 3 + 3?", "answer: 6")
    return [
        NewRow({"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
                "answer": "4"}, "train", "grader", source_trace_id=t1, env_ref="arithmetic", env_version="1.0.0",
               env_digest="sha256:" + "a" * 64, score=1.0),
        NewRow({"messages": [{"role": "user", "content": "What is 3 + 3?"}, {"role": "assistant", "content": "6"}]},
               "holdout", "correction", source_trace_id=t2, expert_id="usr_1", license="CC-BY-4.0"),
    ]


def _create(store: Store, rows: list[NewRow], name: str = "calc-loop", kind: str = "chat"):  # type: ignore[no-untyped-def]
    return record_snapshot(store.db, store.blobs, store.org_id, name=name, kind=kind, rows=rows, source={"t": 1})


def test_the_digest_covers_content_split_and_lineage_in_order(store: Store) -> None:
    rows = _rows(store)
    data, digest = encode_snapshot("chat", rows)
    assert digest == encode_snapshot("chat", list(rows))[1] and digest.startswith("sha256:")
    assert decode_snapshot(data) == rows
    changed = [rows[0], NewRow(**{**rows[1].__dict__, "license": "MIT"})]
    assert encode_snapshot("chat", changed)[1] != digest
    assert encode_snapshot("chat", [rows[1], rows[0]])[1] != digest
    assert encode_snapshot("chat", [NewRow(**{**rows[0].__dict__, "split": "holdout"}), rows[1]])[1] != digest


def test_snapshots_are_versioned_idempotent_and_keep_row_lineage(store: Store) -> None:
    rows = _rows(store)
    ds, created = _create(store, rows)
    assert created and ds.version == 1 and ds.row_count == 2 and ds.split_counts == {"train": 1, "holdout": 1}
    assert ds.licenses == ["CC-BY-4.0", "LicenseRef-proprietary"]
    same, created = _create(store, rows)
    assert not created and same.id == ds.id
    v2, created = _create(store, rows[:1])
    assert created and v2.version == 2
    assert store.blobs.get_bytes(ds.blob_key) == encode_snapshot("chat", rows)[0]
    with store.db.session(write=False) as s:
        repo = Datasets(s)
        assert repo.resolve(store.org_id, "calc-loop").id == v2.id
        assert repo.resolve(store.org_id, "calc-loop@1").id == ds.id
        stored = repo.rows(store.org_id, ds.id)
        assert [new_row_of(r) for r in stored] == rows
        assert stored[0].source_trace_id == rows[0].source_trace_id and stored[0].env_digest == rows[0].env_digest
        assert stored[1].expert_id == "usr_1"
        assert [d.id for d in repo.with_trace(store.org_id, str(rows[1].source_trace_id))] == [ds.id]
        assert encode_snapshot("chat", [new_row_of(r) for r in stored])[1] == ds.digest
        with pytest.raises(NotFound):
            repo.resolve(store.org_id, "calc-loop@9")
        with pytest.raises(NotFound):
            repo.resolve("org_01aaaaaaaaaaaaaaaaaaaaaaaa", "calc-loop@1")


def test_snapshots_and_rows_cannot_change(store: Store) -> None:
    ds, _ = _create(store, _rows(store))
    with pytest.raises(PermissionError), store.db.session() as s:
        Datasets(s).get(store.org_id, ds.id).name = "renamed"
    with pytest.raises(PermissionError), store.db.session() as s:
        row = s.get(DatasetRow, Datasets(s).rows(store.org_id, ds.id)[0].id)
        s.delete(row)
    with store.db.session(write=False) as s:
        assert Datasets(s).get(store.org_id, ds.id).name == "calc-loop"
        assert len(Datasets(s).rows(store.org_id, ds.id)) == 2


def test_bad_snapshots_are_refused(store: Store) -> None:
    rows = _rows(store)
    with pytest.raises(InvalidInput, match="at least one row"):
        _create(store, [])
    with pytest.raises(InvalidInput, match="split"):
        _create(store, [NewRow(**{**rows[0].__dict__, "split": "dev"})])
    with pytest.raises(InvalidInput, match="kind"):
        _create(store, rows, kind="images")
    with store.db.session(write=False) as s:
        assert Datasets(s).list(store.org_id) == []


def test_exports_openai_dpo_and_hugging_face(store: Store, tmp_path: Path) -> None:
    _create(store, _rows(store))
    out = tmp_path / "chat.jsonl"
    assert export_dataset(store.db, store.org_id, "calc-loop", out, fmt="openai", with_lineage=True) == 2
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["messages"][-1] == {"role": "assistant", "content": "4"}
    assert lines[1]["metadata"]["expert_id"] == "usr_1" and lines[1]["metadata"]["split"] == "holdout"
    assert export_dataset(store.db, store.org_id, "calc-loop", out, split="holdout") == 1
    with pytest.raises(InvalidInput, match="pairs"):
        export_dataset(store.db, store.org_id, "calc-loop", tmp_path / "x.jsonl", fmt="dpo")
    pair = NewRow({"prompt": [{"role": "user", "content": "hi"}], "chosen": {"role": "assistant", "content": "hello"},
                   "rejected": {"role": "assistant", "content": "go away"}}, "train", "correction", expert_id="u")
    _create(store, [pair], name="prefs", kind="pairs")
    assert export_dataset(store.db, store.org_id, "prefs@1", out, fmt="dpo") == 1
    assert json.loads(out.read_text())["chosen"] == [{"role": "assistant", "content": "hello"}]
    assert export_dataset(store.db, store.org_id, "prefs@1", out, fmt="openai") == 1
    assert json.loads(out.read_text())["preferred_output"] == [{"role": "assistant", "content": "hello"}]
    import datasets

    assert export_dataset(store.db, store.org_id, "calc-loop", tmp_path / "hf", fmt="hf") == 2
    dd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(dd) == {"train", "holdout"} and dd["train"][0]["answer"] == "4"
    assert dd["holdout"][0]["license"] == "CC-BY-4.0" and dd["train"][0]["env_ref"] == "arithmetic"
    with pytest.raises(InvalidInput, match="format"):
        export_dataset(store.db, store.org_id, "calc-loop", out, fmt="csv")

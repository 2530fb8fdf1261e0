"""Importing datasets (``catalog.imports``): the formats, and refusals that name the line and field and write
nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from teachloop.catalog.imports import import_dataset, read_jsonl
from teachloop.core.errors import InvalidInput
from teachloop.store.repos.datasets import Datasets
from tests.unit.catalog.conftest import Store

CHAT = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": str(i + 1)}],
         "answer": str(i + 1)} for i in range(4)]


def _jsonl(rows: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    return read_jsonl("\n".join(json.dumps(r) for r in rows))


def _import(store: Store, rows: list[dict[str, Any]], name: str = "owned", **kw: Any) -> Any:
    kw.setdefault("license", "CC-BY-4.0")
    return import_dataset(store.db, store.blobs, store.org_id, _jsonl(rows), name=name, **kw)


def test_import_formats_openai_pairs_prompts_and_dpo(store: Store) -> None:
    pairs = [{"input": {"messages": [{"role": "user", "content": "hi"}]},
              "preferred_output": [{"role": "assistant", "content": "hello"}],
              "non_preferred_output": [{"role": "assistant", "content": "go away"}]}]
    assert _import(store, pairs, name="prefs")[0].kind == "pairs"
    dpo = [{"prompt": "hi", "chosen": "hello", "rejected": [{"role": "assistant", "content": "no"}]}]
    ds, _ = _import(store, dpo, name="prefs-dpo", fmt="dpo")
    with store.db.session(write=False) as s:
        [row] = Datasets(s).rows(store.org_id, ds.id)
    assert row.content == {"prompt": [{"role": "user", "content": "hi"}],
                           "chosen": {"role": "assistant", "content": "hello"},
                           "rejected": {"role": "assistant", "content": "no"}}
    prompts = [{"messages": [{"role": "user", "content": "What is 2 + 2?"}], "answer": 4}]
    ds, _ = _import(store, prompts, name="prompts")
    assert ds.kind == "prompts"


@pytest.mark.parametrize(("rows", "kw", "param", "text"), [
    ([CHAT[0], {"messages": "x", "oops": 1}], {}, "file", "line 2: unknown field 'oops'"),
    ([CHAT[0], {"messages": [{"role": "robot", "content": "x"}]}], {}, "file", "line 2: messages.0: role"),
    ([{"messages": [{"role": "user", "content": "q"}]}], {}, "file", "line 1: messages end with a user message"),
    ([CHAT[0], {"prompt": "p", "chosen": "a", "rejected": "b"}], {}, "file", "line 2: an openai row has"),
    ([CHAT[0], {"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [
        {"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}],
     {}, "file", "line 2: a pairs row in a file of chat rows"),
    ([{**CHAT[0], "split": "dev"}], {}, "file", "line 1: split"),
    ([{**CHAT[0], "expert_id": "usr_1"}], {}, "file", "line 1: expert_id: rows with an expert_id are labels"),
    ([CHAT[0]], {"kind": "labels"}, "file", "line 1: expert_id: every label row names the expert"),
    ([CHAT[0]], {"license": "not a license!"}, "license", "SPDX"),
    ([CHAT[0]], {"fmt": "csv"}, "format", "format"),
    ([CHAT[0]], {"kind": "gold"}, "kind", "kind"),
    ([CHAT[0]], {"name": "Bad Name"}, "name", "invalid name"),
    ([], {}, "file", "no rows"),
])
def test_bad_imports_are_refused_with_the_line_and_field_and_write_nothing(
    store: Store, rows: list[dict[str, Any]], kw: dict[str, Any], param: str, text: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        _import(store, rows, **kw)
    assert info.value.param == param and text in str(info.value), str(info.value)
    with store.db.session(write=False) as s:
        assert Datasets(s).list(store.org_id) == []
    with pytest.raises(InvalidInput, match="line 2: not JSON"):
        read_jsonl(b'{"messages": []}\n{nope')

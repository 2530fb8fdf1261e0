"""Dataset versions out: JSON views, OpenAI chat JSONL, DPO pairs JSONL, a Hugging Face dataset.

* ``openai``: one ``{"messages": [...]}`` per row -- chat rows as they are,
  prompt rows as their prompt; preference pairs in OpenAI's preference
  fine-tuning shape (``input.messages``, ``preferred_output``,
  ``non_preferred_output``).
* ``dpo``: TRL's conversational preference rows ``{"prompt": [...],
  "chosen": [...], "rejected": [...]}`` (pairs datasets only).
* ``hf``: ``datasets.DatasetDict`` with one split per snapshot split, saved
  with ``save_to_disk``; every row keeps its lineage columns (source kind,
  trace, source row, expert, environment ref/version/digest, score, license).

``with_lineage`` adds the lineage as a ``metadata`` object to JSONL rows.
Rows are read from the store, in snapshot order. Knows nothing of HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from teachloop.core.errors import ConfigurationError, InvalidInput
from teachloop.store.db import Database
from teachloop.store.repos.datasets import Datasets
from teachloop.store.schema.datasets import Dataset, DatasetGrant, DatasetRow

FORMATS = ("openai", "dpo", "hf")
LINEAGE = ("source_kind", "source_trace_id", "source_row_id", "expert_id", "env_ref", "env_version", "env_digest",
           "score", "license")


def dataset_json(d: Dataset) -> dict[str, Any]:
    """A snapshot's record."""
    return {"id": d.id, "ref": d.ref, "name": d.name, "version": d.version, "kind": d.kind, "digest": d.digest,
            "rows": d.row_count, "splits": d.split_counts, "licenses": d.licenses, "source": d.source,
            "origin": d.origin, "blob_key": d.blob_key, "created_by": d.created_by,
            "created_at": d.created_at.isoformat()}


def grant_json(g: DatasetGrant) -> dict[str, Any]:
    """A grant (entitlement) as the owner sees it."""
    return {"id": g.id, "dataset": g.dataset_name, "version": g.version, "grantee_org_id": g.grantee_org_id,
            "license": g.license, "created_by": g.created_by, "created_at": g.created_at.isoformat(),
            "revoked_at": g.revoked_at.isoformat() if g.revoked_at else None}


def lineage(row: DatasetRow) -> dict[str, Any]:
    """A row's lineage."""
    return {k: getattr(row, k) for k in LINEAGE}


def row_json(row: DatasetRow) -> dict[str, Any]:
    """A row with its split, content and lineage."""
    return {"id": row.id, "position": row.position, "split": row.split, "content": row.content,
            "content_hash": row.content_hash, "lineage": lineage(row)}


def _openai(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    if kind == "pairs":
        return {"input": {"messages": list(content["prompt"])}, "preferred_output": [content["chosen"]],
                "non_preferred_output": [content["rejected"]]}
    return {"messages": list(content["messages"])}


def _dpo(kind: str, content: dict[str, Any], ref: str) -> dict[str, Any]:
    if kind != "pairs":
        raise InvalidInput(f"dataset {ref} holds {kind} rows; DPO pairs need a pairs dataset (use --format openai)",
                           param="format")
    return {"prompt": list(content["prompt"]), "chosen": [content["chosen"]], "rejected": [content["rejected"]]}


def _rows(database: Database, org_id: str, ref: str, split: str | None) -> tuple[Dataset, list[DatasetRow]]:
    with database.session(write=False) as s:
        repo = Datasets(s)
        dataset = repo.resolve(org_id, ref)
        return dataset, repo.rows(org_id, dataset.id, split)


def export_dataset(database: Database, org_id: str, ref: str, path: Path, *, fmt: str = "openai",
                   split: str | None = None, with_lineage: bool = False) -> int:
    """Write snapshot ``ref`` to ``path`` in ``fmt``; returns the number of rows written."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", param="format")
    dataset, rows = _rows(database, org_id, ref, split)
    if fmt == "hf":
        return _export_hf(dataset, rows, path)
    if fmt == "dpo" and dataset.kind != "pairs":
        _dpo(dataset.kind, {}, dataset.ref)
    tmp = Path(path).with_name(Path(path).name + ".partial")
    with open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            line = _openai(dataset.kind, row.content) if fmt == "openai" else _dpo(dataset.kind, row.content, dataset.ref)
            if with_lineage:
                line["metadata"] = {"dataset": dataset.ref, "split": row.split, **lineage(row)}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(rows)


def _messages(value: Any) -> list[dict[str, str]]:
    items = value if isinstance(value, list) else [value]
    return [{"role": str(m.get("role") or ""), "content": str(m.get("content") or "")} for m in items]


def _export_hf(dataset: Dataset, rows: list[DatasetRow], path: Path) -> int:
    try:
        import datasets
    except ImportError:
        raise ConfigurationError("exporting a Hugging Face dataset needs `pip install datasets`") from None
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    columns: dict[str, Any] = {"split": datasets.Value("string")}
    if dataset.kind == "pairs":
        columns.update({"prompt": datasets.List(message), "chosen": datasets.List(message),
                        "rejected": datasets.List(message)})
    else:
        columns.update({"messages": datasets.List(message), "answer": datasets.Value("string")})
    for key in LINEAGE:
        columns[key] = datasets.Value("float64") if key == "score" else datasets.Value("string")
    features = datasets.Features(columns)
    by_split: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        c = row.content
        out: dict[str, Any] = {"split": row.split, **lineage(row)}
        if dataset.kind == "pairs":
            out.update(prompt=_messages(c["prompt"]), chosen=_messages(c["chosen"]), rejected=_messages(c["rejected"]))
        else:
            answer = c.get("answer")
            out.update(messages=_messages(c["messages"]), answer=None if answer is None else str(answer))
        by_split.setdefault(row.split, []).append(out)
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v, features=features) for k, v in by_split.items()})
    dd.save_to_disk(str(path))
    return len(rows)


__all__ = ["FORMATS", "dataset_json", "export_dataset", "grant_json", "lineage", "row_json"]

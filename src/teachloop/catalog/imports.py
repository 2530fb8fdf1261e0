"""Importing datasets the organisation owns, and expert labels, as immutable snapshots.

``parse_rows(records, fmt=..., license=..., labels=...)`` turns JSON objects
(one per JSONL line) into dataset rows and the snapshot's kind; it is pure and
refuses bad input with the line and the field named:

* ``fmt = "openai"``: ``{"messages": [...]}`` whose last message is the
  assistant's (a ``chat`` row), or whose last message is the user's with an
  ``answer`` (a ``prompts`` row); or OpenAI's preference shape ``{"input":
  {"messages": [...]}, "preferred_output": [msg], "non_preferred_output":
  [msg]}`` (a ``pairs`` row) -- what ``teachloop data export --format openai``
  writes;
* ``fmt = "dpo"``: ``{"prompt": str | [msgs], "chosen": str | msg | [msg],
  "rejected": ...}`` (TRL's shape, what ``--format dpo`` writes).

Optional keys on every row: ``split`` (``train`` or ``holdout``, default
``train``), ``answer`` (a reference answer the gate and GRPO grade against),
``score`` (a number) and ``metadata`` (ignored: an export's lineage). Every
row of a file has the same kind. With ``labels`` every row must carry
``expert_id`` (who wrote the label) and becomes an ``expert_label`` row;
without it ``expert_id`` is refused.

Lineage: imported rows have ``source_kind = "import"`` (labels: ``expert``
and the expert's id) and the declared license. ``import_dataset`` writes the
canonical JSONL blob, then records the snapshot (``origin`` ``import`` or
``labels``, through ``catalog.datasets.record_snapshot``) -- all or nothing;
``raw_digest`` (``core.files.bytes_digest`` of the uploaded file) is recorded
in its source. Knows nothing of HTTP or the CLI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from teachloop.catalog.datasets import record_snapshot
from teachloop.core.errors import InvalidInput
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.repos.datasets import NewRow, expert_label
from teachloop.store.repos.deployments import check_name
from teachloop.store.schema.datasets import DATASET_SPLITS, Dataset

IMPORT_FORMATS = ("openai", "dpo")
IMPORT_KINDS = ("rows", "labels")
MAX_ROWS = 1_000_000
_LICENSE = re.compile(r"^(LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9][A-Za-z0-9.+\-]*)"
                      r"( (AND|OR|WITH) (LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9][A-Za-z0-9.+\-]*))*$")
_ROLES = ("system", "user", "assistant")
_COMMON = {"split", "answer", "score", "metadata", "expert_id"}
_KEYS = {"chat": {"messages"}, "prompts": {"messages"}, "pairs_openai": {"input", "preferred_output",
                                                                        "non_preferred_output"},
         "pairs_dpo": {"prompt", "chosen", "rejected"}}


def check_license(license: str, param: str = "license") -> str:
    """``license`` if it is an SPDX id or expression (``MIT``, ``CC-BY-4.0 OR MIT``) or ``LicenseRef-...``."""
    value = (license or "").strip()
    if not value or len(value) > 100 or not _LICENSE.match(value):
        raise InvalidInput(f"license must be an SPDX id (e.g. CC-BY-4.0) or LicenseRef-..., got {license!r}",
                           param=param)
    return value


def read_jsonl(data: bytes | str, param: str = "file") -> list[tuple[int, Any]]:
    """(line number, parsed JSON) for every non-blank line; ``InvalidInput`` naming the line otherwise."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise InvalidInput("the file is not UTF-8 text", param=param) from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as err:
            raise InvalidInput(f"line {n}: not JSON ({err.msg})", param=param) from None
        if len(out) > MAX_ROWS:
            raise InvalidInput(f"more than {MAX_ROWS} rows", param=param)
    return out


def _fail(n: int, msg: str, param: str) -> InvalidInput:
    return InvalidInput(f"line {n}: {msg}", param=param)


def _message(value: Any, n: int, field: str, param: str, *, role: str | None = None) -> dict[str, str]:
    if isinstance(value, str) and role is not None:
        value = {"role": role, "content": value}
    if not isinstance(value, dict) or set(value) - {"role", "content", "name"}:
        raise _fail(n, f"{field}: a message is {{\"role\", \"content\"}}", param)
    if value.get("role") not in _ROLES:
        raise _fail(n, f"{field}: role must be one of {', '.join(_ROLES)}, got {value.get('role')!r}", param)
    if not isinstance(value.get("content"), str):
        raise _fail(n, f"{field}: content must be a string", param)
    if role is not None and value["role"] != role:
        raise _fail(n, f"{field}: must be an {role} message", param)
    return {"role": value["role"], "content": value["content"]}


def _messages(value: Any, n: int, field: str, param: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _fail(n, f"{field}: must be a non-empty list of messages", param)
    return [_message(m, n, f"{field}.{i}", param) for i, m in enumerate(value)]


def _reply(value: Any, n: int, field: str, param: str) -> dict[str, str]:
    if isinstance(value, list):
        if len(value) != 1:
            raise _fail(n, f"{field}: must hold exactly one assistant message", param)
        value = value[0]
    return _message(value, n, field, param, role="assistant")


def _row(obj: Any, n: int, fmt: str, param: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(obj, dict):
        raise _fail(n, "a row is a JSON object", param)
    if fmt == "dpo":
        shape = "pairs_dpo"
    elif "messages" in obj:
        shape = "chat"
    elif "input" in obj:
        shape = "pairs_openai"
    else:
        raise _fail(n, "an openai row has messages (chat) or input/preferred_output/non_preferred_output (pairs)",
                    param)
    extra = set(obj) - _KEYS[shape] - _COMMON
    if extra:
        raise _fail(n, f"unknown field {sorted(extra)[0]!r}", param)
    missing = _KEYS[shape] - set(obj)
    if missing:
        raise _fail(n, f"missing field {sorted(missing)[0]!r}", param)
    if shape == "pairs_dpo":
        content: dict[str, Any] = {"prompt": _messages(obj["prompt"], n, "prompt", param),
                                   "chosen": _reply(obj["chosen"], n, "chosen", param),
                                   "rejected": _reply(obj["rejected"], n, "rejected", param)}
        kind = "pairs"
    elif shape == "pairs_openai":
        inner = obj["input"]
        if not isinstance(inner, dict) or "messages" not in inner:
            raise _fail(n, "input: must be {\"messages\": [...]}", param)
        content = {"prompt": _messages(inner["messages"], n, "input.messages", param),
                   "chosen": _reply(obj["preferred_output"], n, "preferred_output", param),
                   "rejected": _reply(obj["non_preferred_output"], n, "non_preferred_output", param)}
        kind = "pairs"
    else:
        msgs = _messages(obj["messages"], n, "messages", param)
        kind = "chat" if msgs[-1]["role"] == "assistant" else "prompts"
        if kind == "prompts" and obj.get("answer") is None:
            raise _fail(n, "messages end with a user message: a prompt row needs an answer (or end with the "
                           "assistant's reply)", param)
        content = {"messages": msgs}
    if obj.get("answer") is not None:
        if not isinstance(obj["answer"], str | int | float) or isinstance(obj["answer"], bool):
            raise _fail(n, "answer must be a string or a number", param)
        content["answer"] = str(obj["answer"])
    return kind, content


def parse_rows(records: Iterable[tuple[int, Any]], *, fmt: str, license: str, labels: bool = False,
               param: str = "file") -> tuple[str, list[NewRow]]:
    """(dataset kind, rows) of the records (see the module docstring)."""
    if fmt not in IMPORT_FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(IMPORT_FORMATS)}, got {fmt!r}", param="format")
    license = check_license(license)
    kind: str | None = None
    rows: list[NewRow] = []
    for n, obj in records:
        this, content = _row(obj, n, fmt, param)
        if kind is not None and this != kind:
            raise _fail(n, f"a {this} row in a file of {kind} rows; import each kind separately", param)
        kind = this
        split = obj.get("split", "train")
        if split not in DATASET_SPLITS:
            raise _fail(n, f"split must be train or holdout, got {split!r}", param)
        score = obj.get("score")
        if score is not None and (not isinstance(score, int | float) or isinstance(score, bool)):
            raise _fail(n, "score must be a number", param)
        expert = obj.get("expert_id")
        if labels:
            if not isinstance(expert, str) or not expert.strip():
                raise _fail(n, "expert_id: every label row names the expert who wrote it", param)
            rows.append(expert_label(content, expert, license=license, split=split,
                                     score=None if score is None else float(score)))
        else:
            if expert is not None:
                raise _fail(n, "expert_id: rows with an expert_id are labels; import them with kind labels", param)
            rows.append(NewRow(content=content, split=split, source_kind="import",
                               score=None if score is None else float(score), license=license))
    if kind is None:
        raise InvalidInput("the file holds no rows", param=param)
    return kind, rows


def import_dataset(database: Database, blobs: BlobStore, org_id: str, records: Sequence[tuple[int, Any]], *,
                   name: str, license: str, fmt: str = "openai", kind: str = "rows", filename: str | None = None,
                   raw_digest: str | None = None, actor: str = "system", param: str = "file") -> tuple[Dataset, bool]:
    """Parse ``records`` and record them as the next version of ``name``; returns (dataset, created)."""
    if kind not in IMPORT_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(IMPORT_KINDS)}, got {kind!r}", param="kind")
    dataset_kind, rows = parse_rows(records, fmt=fmt, license=license, labels=kind == "labels", param=param)
    source: dict[str, Any] = {"import": {"format": fmt, "kind": kind, "rows": len(rows)}}
    if filename:
        source["import"]["file"] = filename[:300]
    if raw_digest:
        source["import"]["file_digest"] = raw_digest
    check_name(name, "name")
    return record_snapshot(database, blobs, org_id, name=name, kind=dataset_kind, rows=rows, source=source,
                           actor=actor, origin="labels" if kind == "labels" else "import")


__all__ = ["IMPORT_FORMATS", "IMPORT_KINDS", "check_license", "import_dataset", "parse_rows", "read_jsonl"]

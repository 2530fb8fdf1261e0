"""Export traces as training data: OpenAI chat JSONL, or a Hugging Face dataset on disk.

Each exported row is one trace: its input ``messages`` followed by the
assistant reply of one choice -- the newest corrected output from feedback on
that choice when ``use_corrections`` is set and there is one, else what the
model said. JSONL rows are ``{"messages": [...], "tools": [...]?, "metadata":
{...}}`` (the OpenAI fine-tuning format, with teachloop's lineage in
``metadata``). The Hugging Face dataset has the same conversation in a
fixed-schema ``messages`` column plus ``trace_id``, ``model``,
``adapter_version_id``, ``created_at``, ``user``, ``metadata`` (JSON text),
``score`` (mean of feedback scores, or null), ``labels`` and ``corrected``.

This module reads through ``store.repos.traces``; it knows nothing of HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from teachloop.core.errors import ConfigurationError
from teachloop.store.db import Database
from teachloop.store.repos.traces import TraceFilter, Traces
from teachloop.store.schema.traces import Feedback, Trace

_PAGE = 500


def iter_traces(database: Database, org_id: str, filt: TraceFilter) -> Iterator[tuple[Trace, list[Feedback]]]:
    """Every trace matching ``filt`` (newest first, paged; ``filt.limit`` caps the total) with its feedback."""
    left = filt.limit
    before = filt.before
    while left > 0:
        page = TraceFilter(**{**filt.__dict__, "limit": min(_PAGE, left), "before": before})
        with database.session(write=False) as session:
            repo = Traces(session)
            rows = repo.list(org_id, page)
            feedback = repo.feedback(org_id, [t.id for t in rows])
        yield from ((t, feedback[t.id]) for t in rows)
        if len(rows) < page.limit:
            return
        left -= len(rows)
        before = rows[-1].id


def _reply(trace: Trace, feedback: list[Feedback], choice: int, use_corrections: bool) -> tuple[dict[str, Any], bool]:
    if use_corrections:
        for f in reversed(feedback):
            if f.corrected_output is not None and f.choice_index == choice:
                return dict(f.corrected_output), True
    return dict(trace.choices[choice]["message"]), False


def chat_row(trace: Trace, feedback: list[Feedback], *, choice: int = 0, use_corrections: bool = False) -> dict[str, Any]:
    """One trace as an OpenAI chat fine-tuning row."""
    reply, corrected = _reply(trace, feedback, choice, use_corrections)
    row: dict[str, Any] = {"messages": [*trace.messages, reply]}
    if trace.tools:
        row["tools"] = trace.tools
    scores = [f.score for f in feedback if f.score is not None]
    row["metadata"] = {
        "trace_id": trace.id, "model": trace.model, "adapter_version_id": trace.adapter_version_id,
        "created_at": trace.created_at.isoformat(), "user": trace.user, "client_metadata": trace.request_metadata,
        "score": sum(scores) / len(scores) if scores else None, "corrected": corrected,
    }
    return row


def export_jsonl(
    database: Database, org_id: str, filt: TraceFilter, path: Path, *, use_corrections: bool = False
) -> int:
    """Write matching traces to ``path`` as OpenAI chat JSONL; returns the number of rows."""
    n = 0
    tmp = Path(path).with_name(Path(path).name + ".partial")
    with open(tmp, "w", encoding="utf-8") as out:
        for trace, feedback in iter_traces(database, org_id, filt):
            out.write(json.dumps(chat_row(trace, feedback, use_corrections=use_corrections), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def _hf_message(m: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {"id": c.get("id", ""), "type": c.get("type", "function"),
         "function": {"name": c["function"]["name"], "arguments": c["function"].get("arguments", "{}")}}
        for c in m.get("tool_calls") or []
    ]
    return {"role": m.get("role", ""), "content": m.get("content") or "", "name": m.get("name"),
            "tool_call_id": m.get("tool_call_id"), "tool_calls": calls}


def export_hf(
    database: Database, org_id: str, filt: TraceFilter, path: Path, *, use_corrections: bool = False
) -> int:
    """Write matching traces as a Hugging Face dataset (``save_to_disk``) at ``path``; returns the row count."""
    try:
        import datasets
    except ImportError:
        raise ConfigurationError("exporting a Hugging Face dataset needs `pip install datasets`") from None
    call = {"id": datasets.Value("string"), "type": datasets.Value("string"),
            "function": {"name": datasets.Value("string"), "arguments": datasets.Value("string")}}
    message = {"role": datasets.Value("string"), "content": datasets.Value("string"), "name": datasets.Value("string"),
               "tool_call_id": datasets.Value("string"), "tool_calls": datasets.List(call)}
    features = datasets.Features({
        "trace_id": datasets.Value("string"), "model": datasets.Value("string"),
        "adapter_version_id": datasets.Value("string"), "created_at": datasets.Value("string"),
        "user": datasets.Value("string"), "metadata": datasets.Value("string"),
        "messages": datasets.List(message), "score": datasets.Value("float64"),
        "labels": datasets.List(datasets.Value("string")), "corrected": datasets.Value("bool"),
    })
    rows = []
    for trace, feedback in iter_traces(database, org_id, filt):
        reply, corrected = _reply(trace, feedback, 0, use_corrections)
        scores = [f.score for f in feedback if f.score is not None]
        rows.append({
            "trace_id": trace.id, "model": trace.model, "adapter_version_id": trace.adapter_version_id,
            "created_at": trace.created_at.isoformat(), "user": trace.user,
            "metadata": json.dumps(trace.request_metadata, ensure_ascii=False),
            "messages": [_hf_message(m) for m in [*trace.messages, reply]],
            "score": sum(scores) / len(scores) if scores else None,
            "labels": [f.label for f in feedback if f.label], "corrected": corrected,
        })
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.save_to_disk(str(path))
    return len(rows)


__all__ = ["chat_row", "export_hf", "export_jsonl", "iter_traces"]

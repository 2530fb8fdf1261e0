"""Candidate rows from the loop's sources: traces with feedback, grader-scored traces, labels, datasets.

``collect(session, ...)`` reads every source of a loop config and returns
``Candidate`` rows of the shape the algorithm trains on:

* ``chat`` (SFT): ``{"messages": [...prompt, reply]}`` -- a reply whose
  feedback score is >= the source's ``min_score``, a corrected output (which
  replaces the reply), a reply the grader scored >= ``min_score`` (these rows
  also carry the task's ``answer``), or a chat row of a dataset.
* ``pairs`` (DPO): ``{"prompt": [...], "chosen": {...}, "rejected": {...}}``
  -- a correction over the reply it corrects, or, for one prompt, a good
  reply (>= ``min_score``) over a bad one (<= ``max_score``) by feedback or
  by the grader.
* ``prompts`` (GRPO): ``{"messages": [...prompt], "answer": ..., "info": ...}``
  -- the prompt of every trace the grader could score (the environment
  re-poses it), or the prompts of a dataset whose rows carry an answer.

Only text traffic of the loop's deployment is read: traces that offered tools
or whose reply called one are skipped, and so are traces of other
deployments. Every candidate carries its lineage (trace, expert, environment
version and digest, license) and the creation time of its newest trace,
which the trigger counts against the loop's cursor. Feedback sources give no
GRPO prompts (feedback has no reference answer). This module reads the store;
it writes nothing and knows nothing of curation or training.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput
from teachloop.loop.config import (
    DatasetSource,
    FeedbackSource,
    GraderSource,
    LabelsSource,
    LoopConfig,
    References,
    labels_table_exists,
)
from teachloop.store.repos.datasets import Datasets
from teachloop.store.schema.loops import TraceScore
from teachloop.store.schema.traces import Feedback, Trace

KIND_OF = {"sft": "chat", "dpo": "pairs", "grpo": "prompts"}


@dataclass
class Candidate:
    """One candidate row with its lineage (see the module docstring)."""

    content: dict[str, Any]
    source_kind: str
    created_at: datetime | None
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> list[dict[str, Any]]:
        """The prompt messages (OpenAI shape)."""
        c = self.content
        if "prompt" in c:
            return list(c["prompt"])
        msgs = list(c["messages"])
        return msgs[:-1] if msgs and msgs[-1].get("role") == "assistant" else msgs

    @property
    def prompt_key(self) -> str:
        """Canonical text of the prompt (grouping, holdout hashing, near-duplicates)."""
        return json.dumps([[m.get("role"), (m.get("content") or "").strip()] for m in self.prompt],
                          ensure_ascii=False, separators=(",", ":"))

    def texts(self) -> list[str]:
        """Every text of the row (for PII scrubbing and length limits)."""
        c = self.content
        out = [m.get("content") or "" for m in c.get("messages", c.get("prompt", []))]
        out += [c[k].get("content") or "" for k in ("chosen", "rejected") if isinstance(c.get(k), dict)]
        return out


def _text_only(trace: Trace) -> bool:
    if trace.tools:
        return False
    msgs = [*trace.messages, *(c.get("message", {}) for c in trace.choices)]
    return all(not m.get("tool_calls") and m.get("role") != "tool" for m in msgs)


def _msg(m: dict[str, Any]) -> dict[str, Any]:
    return {"role": m.get("role"), "content": m.get("content") or ""}


def _reply(trace: Trace, choice: int = 0) -> dict[str, Any] | None:
    if not 0 <= choice < len(trace.choices):
        return None
    return _msg(trace.choices[choice].get("message") or {})


def _prompt(trace: Trace) -> list[dict[str, Any]]:
    return [_msg(m) for m in trace.messages]


def _trace_lineage(trace: Trace, license: str, **extra: Any) -> dict[str, Any]:
    return {"source_trace_id": trace.id, "license": license, **extra}


def _traces(session: Session, org_id: str, deployment_id: str, ids: set[str] | None = None,
            with_feedback: bool = False, limit: int = 100_000) -> list[Trace]:
    q = select(Trace).where(Trace.org_id == org_id, Trace.deployment_id == deployment_id)
    if ids is not None:
        q = q.where(Trace.id.in_(ids))
    if with_feedback:
        q = q.where(Trace.id.in_(select(Feedback.trace_id).where(Feedback.org_id == org_id)))
    return [t for t in session.scalars(q.order_by(Trace.created_at.desc()).limit(limit)) if _text_only(t)]


def _pairs(groups: dict[str, list[tuple[Trace, dict[str, Any], float, dict[str, Any]]]], lo: float, hi: float,
           source_kind: str) -> list[Candidate]:
    """Good-over-bad pairs within each prompt group (each good reply paired once, in order)."""
    out = []
    for items in groups.values():
        good = [x for x in items if x[2] >= hi]
        bad = [x for x in items if x[2] <= lo]
        for (gt, gr, gs, glin), (bt, br, _bs, _blin) in zip(good, bad, strict=False):
            if (gr.get("content") or "").strip() == (br.get("content") or "").strip():
                continue
            newest = max(gt.created_at, bt.created_at)
            out.append(Candidate({"prompt": _prompt(gt), "chosen": gr, "rejected": br}, source_kind, newest,
                                 dict(gt.request_metadata or {}), gs, {**glin, "rejected_trace_id": bt.id}))
    return out


def from_feedback(session: Session, org_id: str, deployment_id: str, src: FeedbackSource, kind: str,
                  limit: int) -> list[Candidate]:
    """Candidates from traces with feedback (see the module docstring)."""
    if kind == "prompts":
        return []
    traces = _traces(session, org_id, deployment_id, with_feedback=True, limit=limit)
    feedback: dict[str, list[Feedback]] = defaultdict(list)
    if traces:
        rows = session.scalars(select(Feedback).where(Feedback.org_id == org_id,
                                                      Feedback.trace_id.in_([t.id for t in traces]))
                               .order_by(Feedback.created_at, Feedback.id))
        for f in rows:
            if src.label is None or f.label == src.label:
                feedback[f.trace_id].append(f)
    out: list[Candidate] = []
    groups: dict[str, list[tuple[Trace, dict[str, Any], float, dict[str, Any]]]] = defaultdict(list)
    for t in traces:
        fbs = [f for f in feedback.get(t.id, []) if f.choice_index < len(t.choices)]
        if not fbs:
            continue
        meta = dict(t.request_metadata or {})
        corrections = [f for f in fbs if f.corrected_output is not None]
        if src.corrections and corrections:
            f = corrections[-1]
            fixed, orig = _msg(f.corrected_output or {}), _reply(t, f.choice_index)
            lin = _trace_lineage(t, src.license, expert_id=f.author)
            if kind == "chat":
                out.append(Candidate({"messages": [*_prompt(t), fixed]}, "correction", t.created_at, meta, f.score, lin))
            elif orig is not None and orig["content"].strip() != fixed["content"].strip():
                out.append(Candidate({"prompt": _prompt(t), "chosen": fixed, "rejected": orig}, "correction",
                                     t.created_at, meta, f.score, lin))
            continue
        scored = [f for f in fbs if f.score is not None]
        if not scored:
            continue
        f = scored[-1]  # the newest score counts
        reply = _reply(t, f.choice_index)
        if reply is None:
            continue
        lin = _trace_lineage(t, src.license, expert_id=f.author)
        if kind == "chat" and f.score is not None and f.score >= src.min_score:
            out.append(Candidate({"messages": [*_prompt(t), reply]}, "feedback", t.created_at, meta, f.score, lin))
        elif kind == "pairs" and f.score is not None:
            key = json.dumps(_prompt(t), sort_keys=True)
            groups[key].append((t, reply, f.score, lin))
    if kind == "pairs":
        out += _pairs(groups, src.max_score, src.min_score, "feedback")
    return out


def from_grader(session: Session, org_id: str, deployment_id: str, loop_id: str, src: GraderSource, refs: References,
                index: int, kind: str, limit: int) -> list[Candidate]:
    """Candidates from traces the loop's grader scored (see the module docstring)."""
    env = refs.source_envs[index]
    scores = {s.trace_id: s for s in session.scalars(
        select(TraceScore).where(TraceScore.org_id == org_id, TraceScore.loop_id == loop_id,
                                 TraceScore.score.is_not(None), TraceScore.env_digest == env.digest)
        .order_by(TraceScore.trace_created_at.desc()).limit(limit)
    )}
    traces = _traces(session, org_id, deployment_id, ids=set(scores), limit=limit)
    out: list[Candidate] = []
    groups: dict[str, list[tuple[Trace, dict[str, Any], float, dict[str, Any]]]] = defaultdict(list)
    for t in traces:
        s = scores[t.id]
        reply = _reply(t)
        value = float(s.score or 0.0)
        lin = _trace_lineage(t, src.license, env_ref=env.ref, env_version=env.version or type(env.env).version,
                             env_digest=env.digest)
        meta = dict(t.request_metadata or {})
        if kind == "prompts":
            out.append(Candidate({"messages": _prompt(t), "answer": s.answer}, "grader", t.created_at, meta, value, lin))
        elif kind == "chat" and reply is not None and value >= src.min_score:
            out.append(Candidate({"messages": [*_prompt(t), reply], "answer": s.answer}, "grader", t.created_at, meta,
                                 value, lin))
        elif kind == "pairs" and reply is not None:
            groups[json.dumps(_prompt(t), sort_keys=True)].append((t, reply, value, lin))
    if kind == "pairs":
        out += _pairs(groups, src.max_score, src.min_score, "grader")
    return out


def from_dataset(session: Session, org_id: str, src: DatasetSource, refs: References, index: int,
                 kind: str) -> list[Candidate]:
    """Candidates copied from a dataset snapshot the organisation owns (lineage carried over)."""
    ds = refs.datasets[index]
    out = []
    for row in Datasets(session).rows(org_id, ds.id):
        content = dict(row.content)
        if kind == "prompts" and ds.kind == "chat":
            if content.get("answer") is None:
                continue  # a prompt without a reference answer cannot be graded
            msgs = [m for m in content["messages"]]
            content = {"messages": msgs[:-1] if msgs and msgs[-1].get("role") == "assistant" else msgs,
                       "answer": content["answer"]}
        lin = {"source_row_id": row.id, "source_trace_id": row.source_trace_id, "expert_id": row.expert_id,
               "env_ref": row.env_ref, "env_version": row.env_version, "env_digest": row.env_digest,
               "license": row.license or src.license}
        out.append(Candidate(content, "dataset", None, {}, row.score, lin))
    return out


def from_labels(session: Session, org_id: str, src: LabelsSource, kind: str) -> list[Candidate]:
    """Expert labels from a ``labels`` table: rows with ``messages`` (JSON chat) and ``expert_id``."""
    if not labels_table_exists(session):
        raise InvalidInput("no expert-label source yet (this installation has no labels table)", param="sources")
    if kind != "chat":
        return []
    where = "org_id = :org" + (" AND project = :project" if src.project else "")
    try:
        rows = session.execute(text(f"SELECT * FROM labels WHERE {where}"),
                               {"org": org_id, "project": src.project}).mappings().all()
    except Exception as err:
        raise InvalidInput(f"the labels table cannot be read as expert labels: {err}", param="sources") from None
    out = []
    for r in rows:
        msgs = r.get("messages")
        msgs = json.loads(msgs) if isinstance(msgs, str) else msgs
        if not isinstance(msgs, list) or not msgs or r.get("expert_id") is None:
            continue
        out.append(Candidate({"messages": [_msg(m) for m in msgs]}, "expert", r.get("created_at"), {},
                             r.get("score"), {"expert_id": str(r["expert_id"]), "license": src.license}))
    return out


def collect(session: Session, cfg: LoopConfig, refs: References, *, org_id: str, loop_id: str,
            limit: int | None = None) -> list[Candidate]:
    """Every candidate of every source, newest first (undated dataset rows last)."""
    kind = KIND_OF[cfg.algorithm.kind]
    cap = limit or cfg.curation.max_rows * 4
    dep = refs.deployment.id
    out: list[Candidate] = []
    for i, src in enumerate(cfg.sources):
        if isinstance(src, FeedbackSource):
            out += from_feedback(session, org_id, dep, src, kind, cap)
        elif isinstance(src, GraderSource):
            out += from_grader(session, org_id, dep, loop_id, src, refs, i, kind, cap)
        elif isinstance(src, DatasetSource):
            out += from_dataset(session, org_id, src, refs, i, kind)
        elif isinstance(src, LabelsSource):
            out += from_labels(session, org_id, src, kind)
    out.sort(key=lambda c: (c.created_at is not None, c.created_at or datetime.min), reverse=True)
    return out


__all__ = ["KIND_OF", "Candidate", "collect", "from_dataset", "from_feedback", "from_grader", "from_labels"]

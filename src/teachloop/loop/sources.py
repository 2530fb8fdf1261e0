"""Candidate rows from the loop's sources: traces with feedback, grader-scored traces, labels, datasets.

``collect(session, ...)`` reads every source of a loop config and returns
``Candidate`` rows of the shape the algorithm trains on:

* ``chat`` (SFT): ``{"messages": [...prompt, reply]}`` -- a reply whose
  feedback score is >= the source's ``min_score``, a corrected output (which
  replaces the reply), a reply the grader scored >= ``min_score``, or a chat
  row of a dataset or of a label dataset.
* ``pairs`` (DPO): ``{"prompt": [...], "chosen": {...}, "rejected": {...}}``
  -- a correction over the reply it corrects, or, for one prompt, a good
  reply (>= ``min_score``) over a bad one (<= ``max_score``) by feedback or
  by the grader; or a pairs row of a (label) dataset.
* ``prompts`` (GRPO): ``{"messages": [...prompt], "answer": ..., "info": ...}``
  -- the prompt of every trace the grader could score (the environment
  re-poses it), or the prompts of a dataset whose rows carry an answer.

**Answers travel with the rows**: a row made from a trace the loop's grader
scored carries that trace's reference ``answer`` (SFT rows, DPO pairs --
from the grader or from feedback on a graded trace), so the eval gate can
re-pose its prompt to the environment whatever the algorithm.

Only text traffic of the loop's deployment is read: traces that offered tools
or whose reply called one are skipped, and so are traces of other
deployments. Every candidate carries its lineage (trace, expert, environment
version and digest, license) and its **arrival time**, which the trigger
counts against the loop's cursor: when the feedback (or correction) that
qualified it was given, when the grader scored it, or when a version of the
(label) dataset first held the row -- so feedback on an old trace is new.
Label sources read label datasets (``origin = "labels"``; each row names its
expert); a dataset named ``OWNER/NAME`` is used under its grant's license.
Feedback sources give no GRPO prompts (feedback has no reference answer).
An ``experts`` source reads the newest aggregated dataset of its workforce
project (rows at or above ``min_confidence``); ``send_to_experts`` -- the one
writer here, called by the runner in a write session -- adds the traces its
policy picks to that project through ``store.repos.work``. Otherwise this
module reads the store; it knows nothing of curation or training.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.loop.config import (
    DatasetSource,
    ExpertsSource,
    FeedbackSource,
    GraderSource,
    LabelsSource,
    LoopConfig,
    References,
    UpstreamSource,
)
from teachloop.store.repos.datasets import Datasets
from teachloop.store.schema.datasets import Dataset
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


def _traces(session: Session, org_id: str, deployment_id: str, ids: set[str], limit: int = 100_000) -> list[Trace]:
    q = select(Trace).where(Trace.org_id == org_id, Trace.deployment_id == deployment_id, Trace.id.in_(ids),
                            # a reply the client abandoned half-way, or a failed upstream call, is no example
                            Trace.finish_reason.not_in(("cancelled", "error")))
    return [t for t in session.scalars(q.order_by(Trace.created_at.desc()).limit(limit)) if _text_only(t)]


@dataclass
class _Scored:
    """One reply of a trace with its score, for pairing."""

    trace: Trace
    reply: dict[str, Any]
    score: float
    lineage: dict[str, Any]
    when: datetime
    answer: str | None


def _pairs(groups: dict[str, list[_Scored]], lo: float, hi: float, source_kind: str) -> list[Candidate]:
    """Good-over-bad pairs within each prompt group (each good reply paired once, in order)."""
    out = []
    for items in groups.values():
        good = [x for x in items if x.score >= hi]
        bad = [x for x in items if x.score <= lo]
        for g, b in zip(good, bad, strict=False):
            if (g.reply.get("content") or "").strip() == (b.reply.get("content") or "").strip():
                continue
            content: dict[str, Any] = {"prompt": _prompt(g.trace), "chosen": g.reply, "rejected": b.reply}
            answer = g.answer or b.answer
            if answer is not None:
                content["answer"] = answer
            out.append(Candidate(content, source_kind, max(g.when, b.when), dict(g.trace.request_metadata or {}),
                                 g.score, {**g.lineage, "rejected_trace_id": b.trace.id}))
    return out


def _answers(session: Session, loop_id: str, trace_ids: list[str]) -> dict[str, str]:
    """The reference answers the loop's grader found for these traces."""
    if not trace_ids:
        return {}
    rows = session.execute(select(TraceScore.trace_id, TraceScore.answer).where(
        TraceScore.loop_id == loop_id, TraceScore.trace_id.in_(trace_ids), TraceScore.answer.is_not(None)))
    return {tid: str(answer) for tid, answer in rows}


def _with_answer(content: dict[str, Any], answer: str | None) -> dict[str, Any]:
    return {**content, "answer": answer} if answer is not None else content


def from_feedback(session: Session, org_id: str, deployment_id: str, src: FeedbackSource, kind: str,
                  limit: int, loop_id: str | None = None) -> list[Candidate]:
    """Candidates from traces with feedback, newest feedback first (see the module docstring)."""
    if kind == "prompts":
        return []
    q = (select(Feedback).join(Trace, Trace.id == Feedback.trace_id)
         .where(Feedback.org_id == org_id, Trace.org_id == org_id, Trace.deployment_id == deployment_id))
    if src.label is not None:
        q = q.where(Feedback.label == src.label)
    newest = list(session.scalars(q.order_by(Feedback.created_at.desc(), Feedback.id.desc()).limit(limit)))
    feedback: dict[str, list[Feedback]] = defaultdict(list)
    for f in reversed(newest):  # oldest first within a trace: the last one counts
        feedback[f.trace_id].append(f)
    traces = _traces(session, org_id, deployment_id, set(feedback), limit=limit)
    answers = _answers(session, loop_id, [t.id for t in traces]) if loop_id else {}
    out: list[Candidate] = []
    groups: dict[str, list[_Scored]] = defaultdict(list)
    for t in traces:
        fbs = [f for f in feedback.get(t.id, []) if f.choice_index < len(t.choices)]
        if not fbs:
            continue
        meta = dict(t.request_metadata or {})
        answer = answers.get(t.id)
        corrections = [f for f in fbs if f.corrected_output is not None]
        if src.corrections and corrections:
            f = corrections[-1]
            fixed, orig = _msg(f.corrected_output or {}), _reply(t, f.choice_index)
            lin = _trace_lineage(t, src.license, expert_id=f.author)
            when = max(t.created_at, f.created_at)
            if kind == "chat":
                out.append(Candidate(_with_answer({"messages": [*_prompt(t), fixed]}, answer), "correction", when,
                                     meta, f.score, lin))
            elif orig is not None and orig["content"].strip() != fixed["content"].strip():
                out.append(Candidate(_with_answer({"prompt": _prompt(t), "chosen": fixed, "rejected": orig}, answer),
                                     "correction", when, meta, f.score, lin))
            continue
        scored = [f for f in fbs if f.score is not None]
        if not scored:
            continue
        f = scored[-1]  # the newest score counts
        reply = _reply(t, f.choice_index)
        if reply is None or f.score is None:
            continue
        lin = _trace_lineage(t, src.license, expert_id=f.author)
        when = max(t.created_at, f.created_at)
        if kind == "chat" and f.score >= src.min_score:
            out.append(Candidate(_with_answer({"messages": [*_prompt(t), reply]}, answer), "feedback", when, meta,
                                 f.score, lin))
        elif kind == "pairs":
            key = json.dumps(_prompt(t), sort_keys=True)
            groups[key].append(_Scored(t, reply, f.score, lin, when, answer))
    if kind == "pairs":
        out += _pairs(groups, src.max_score, src.min_score, "feedback")
    return out


def from_grader(session: Session, org_id: str, deployment_id: str, loop_id: str, src: GraderSource, refs: References,
                index: int, kind: str, limit: int) -> list[Candidate]:
    """Candidates from traces the loop's grader scored, newest score first (see the module docstring)."""
    env = refs.source_envs[index]
    scores = {s.trace_id: s for s in session.scalars(
        select(TraceScore).where(TraceScore.org_id == org_id, TraceScore.loop_id == loop_id,
                                 TraceScore.score.is_not(None), TraceScore.env_digest == env.digest)
        .order_by(TraceScore.created_at.desc(), TraceScore.id.desc()).limit(limit)
    )}
    traces = _traces(session, org_id, deployment_id, set(scores), limit=limit)
    out: list[Candidate] = []
    groups: dict[str, list[_Scored]] = defaultdict(list)
    for t in traces:
        s = scores[t.id]
        reply = _reply(t)
        value = float(s.score or 0.0)
        lin = _trace_lineage(t, src.license, env_ref=env.ref, env_version=env.version or type(env.env).version,
                             env_digest=env.digest)
        meta = dict(t.request_metadata or {})
        when = max(t.created_at, s.created_at)
        if kind == "prompts":
            out.append(Candidate({"messages": _prompt(t), "answer": s.answer}, "grader", when, meta, value, lin))
        elif kind == "chat" and reply is not None and value >= src.min_score:
            out.append(Candidate({"messages": [*_prompt(t), reply], "answer": s.answer}, "grader", when, meta,
                                 value, lin))
        elif kind == "pairs" and reply is not None:
            groups[json.dumps(_prompt(t), sort_keys=True)].append(_Scored(t, reply, value, lin, when, s.answer))
    if kind == "pairs":
        out += _pairs(groups, src.max_score, src.min_score, "grader")
    return out


def _from_snapshots(session: Session, org_id: str, datasets: list[Dataset], kind: str, source_kind: str,
                    license: str | None) -> list[Candidate]:
    """Rows of snapshots (own or granted) with their lineage and arrival time (``license`` overrides)."""
    out = []
    repo = Datasets(session)
    for ds in datasets:
        arrived = repo.first_seen(ds)
        for row in repo.rows(org_id, ds.id):
            content = dict(row.content)
            if kind == "prompts" and ds.kind == "chat":
                if content.get("answer") is None:
                    continue  # a prompt without a reference answer cannot be graded
                msgs = list(content["messages"])
                content = {"messages": msgs[:-1] if msgs and msgs[-1].get("role") == "assistant" else msgs,
                           "answer": content["answer"]}
            lin = {"source_row_id": row.id, "source_trace_id": row.source_trace_id, "expert_id": row.expert_id,
                   "env_ref": row.env_ref, "env_version": row.env_version, "env_digest": row.env_digest,
                   "license": license or row.license}
            out.append(Candidate(content, source_kind, arrived.get(row.content_hash, ds.created_at), {}, row.score,
                                 lin))
    return out


def from_dataset(session: Session, org_id: str, src: DatasetSource, refs: References, index: int,
                 kind: str) -> list[Candidate]:
    """Candidates copied from a dataset snapshot (own, or under a grant's license), lineage carried over."""
    return _from_snapshots(session, org_id, refs.datasets[index], kind, "dataset", refs.licenses.get(index))


def from_labels(session: Session, org_id: str, src: LabelsSource, refs: References, index: int,
                kind: str) -> list[Candidate]:
    """Expert labels: the rows of the source's label datasets, each with the expert who wrote it."""
    return _from_snapshots(session, org_id, refs.datasets.get(index, []), kind, "expert", refs.licenses.get(index))


def from_experts(session: Session, org_id: str, src: ExpertsSource, kind: str) -> list[Candidate]:
    """The newest aggregated dataset of the source's project: rows whose confidence reaches ``min_confidence``."""
    from teachloop.store.repos.work import WorkQueue

    repo = WorkQueue(session)
    versions = repo.result_datasets(org_id, repo.project(org_id, src.project))
    if not versions or not (versions[0].kind == kind or (kind == "prompts" and versions[0].kind == "chat")):
        return []
    rows = _from_snapshots(session, org_id, versions[:1], kind, "expert", None)
    return [c for c in rows if c.score is None or c.score >= src.min_confidence]


def send_to_experts(session: Session, cfg: LoopConfig, refs: References, *, org_id: str, loop_id: str,
                    now: datetime) -> int:
    """Add the traces an ``experts`` source's policy picks to its project (a write session); returns how many.

    A trace goes when the loop's grader scored it below ``grader_below`` or its feedback is at most
    ``feedback_at_most``; at most ``daily_budget`` per project and UTC day (items of origin ``loop``),
    newest first, each trace once (``store.repos.work``).
    """
    from teachloop.store.repos.work import WorkQueue

    repo, sent = WorkQueue(session), 0
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    for src in cfg.sources:
        if not isinstance(src, ExpertsSource):
            continue
        project = repo.project(org_id, src.project)
        left = src.daily_budget - repo.added_since(org_id, project, day, origin="loop")
        if left <= 0:
            continue
        picked: set[str] = set()
        if src.grader_below is not None:
            picked |= set(session.scalars(select(TraceScore.trace_id).where(
                TraceScore.org_id == org_id, TraceScore.loop_id == loop_id, TraceScore.score < src.grader_below)))
        if src.feedback_at_most is not None:
            picked |= set(session.scalars(select(Feedback.trace_id).where(
                Feedback.org_id == org_id, Feedback.score <= src.feedback_at_most)))
        fresh = _traces(session, org_id, refs.deployment.id, picked - repo.traces_in(project))
        sent += len(repo.add_trace_items(org_id, project, fresh[:left], origin="loop", now=now))
    return sent


def collect(session: Session, cfg: LoopConfig, refs: References, *, org_id: str, loop_id: str,
            limit: int | None = None) -> list[Candidate]:
    """Every candidate of every source, newest first (undated dataset rows last)."""
    kind = KIND_OF[cfg.algorithm.kind]
    cap = limit or cfg.curation.max_rows * 4
    dep = refs.deployment.id
    out: list[Candidate] = []
    for i, src in enumerate(cfg.sources):
        if isinstance(src, FeedbackSource):
            out += from_feedback(session, org_id, dep, src, kind, cap, loop_id)
        elif isinstance(src, GraderSource):
            out += from_grader(session, org_id, dep, loop_id, src, refs, i, kind, cap)
        elif isinstance(src, DatasetSource):
            out += from_dataset(session, org_id, src, refs, i, kind)
        elif isinstance(src, LabelsSource):
            out += from_labels(session, org_id, src, refs, i, kind)
        elif isinstance(src, ExpertsSource):
            out += from_experts(session, org_id, src, kind)
        elif isinstance(src, UpstreamSource):  # issue 17: distillation from the upstream arm (loop.distill)
            from teachloop.loop.distill import from_upstream

            out += from_upstream(session, org_id, dep, loop_id, src, kind, cap)
    out.sort(key=lambda c: (c.created_at is not None, c.created_at or datetime.min), reverse=True)
    return out


__all__ = ["KIND_OF", "Candidate", "collect", "from_dataset", "from_experts", "from_feedback", "from_grader",
           "from_labels", "send_to_experts"]

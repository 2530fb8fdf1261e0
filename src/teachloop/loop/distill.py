"""Distillation in the loop (issue 17): the upstream arm is the teacher, a local adapter the student.

* ``from_upstream`` turns the replies of a deployment's upstream arm into
  candidate rows for a loop source of kind ``upstream``: SFT rows (the
  prompt and the teacher's reply; with ``filter = "feedback"`` or
  ``"grader"`` only replies scored >= ``min_score``), or DPO pairs for one
  prompt where the grader's (else feedback's) score ranks the teacher's reply
  and a student's reply (a local arm's, a shadow's included) apart: the one
  >= ``min_score`` is chosen over the one <= ``max_score``, whichever arm it
  came from. Failed (``finish_reason: "error"``) and cancelled calls are never
  rows.
* ``arm_figures`` compares the arms on the deployment's traffic over a time
  window: per arm (``teacher`` = answered upstream, ``student`` = answered
  locally) the requests, the mean grader score of the loop, the mean feedback
  score, and the **cost per 1,000 requests** in minor units (from each
  trace's ``cost_micro``, which the deployment's ``prices`` set). A loop's
  history shows it per iteration (``iteration_figures``).
* ``teacher_completer`` is a ``ChatCompleter`` over the deployment's upstream
  arm (its key decrypted with the ``TEACHLOOP_UPSTREAM_KEY`` setting);
  ``gate_baseline`` hands it to the loop's gate when the primary arm is the
  upstream, so the student adapter is compared with the teacher on the same
  held-out tasks with the same paired test as two adapters (reward suites;
  the likelihood suite needs token log-probabilities, so it keeps the base).

Reads the store only (``from_upstream``, ``arm_figures``); knows nothing of
HTTP serving.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from datetime import datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import ConfigurationError, NotFound, ServiceUnavailable
from teachloop.core.settings import Settings
from teachloop.envs.completers import OpenAICompleter
from teachloop.loop.config import UpstreamSource
from teachloop.loop.sources import Candidate
from teachloop.store.db import Database
from teachloop.store.schema.deployments import Deployment, UpstreamEndpoint
from teachloop.store.schema.loops import TraceScore
from teachloop.store.schema.traces import Feedback, Trace

#: finish reasons that are never training rows nor comparison figures
_NOT_ANSWERS = ("error", "cancelled")


def _text_only(trace: Trace) -> bool:
    if trace.tools:
        return False
    msgs = [*trace.messages, *(c.get("message", {}) for c in trace.choices)]
    return all(not m.get("tool_calls") and m.get("role") != "tool" for m in msgs)


def _msg(m: dict[str, Any]) -> dict[str, Any]:
    return {"role": m.get("role"), "content": m.get("content") or ""}


def _prompt(trace: Trace) -> list[dict[str, Any]]:
    return [_msg(m) for m in trace.messages]


def _reply(trace: Trace) -> dict[str, Any] | None:
    return _msg(trace.choices[0].get("message") or {}) if trace.choices else None


def _answered(session: Session, org_id: str, deployment_id: str, limit: int, *, teacher: bool | None,
              since: datetime | None = None, until: datetime | None = None) -> list[Trace]:
    """Answered traces of the deployment, newest first: the teacher's (``teacher``), the students', or both."""
    q = select(Trace).where(Trace.org_id == org_id, Trace.deployment_id == deployment_id,
                            Trace.finish_reason.not_in(_NOT_ANSWERS))
    if teacher is True:
        q = q.where(Trace.upstream_id.is_not(None))
    elif teacher is False:
        q = q.where(Trace.upstream_id.is_(None))
    if since is not None:
        q = q.where(Trace.created_at >= since)
    if until is not None:
        q = q.where(Trace.created_at < until)
    return list(session.scalars(q.order_by(Trace.created_at.desc()).limit(limit)))


def _grader_scores(session: Session, loop_id: str | None, ids: list[str]) -> dict[str, TraceScore]:
    if loop_id is None or not ids:
        return {}
    rows = session.scalars(select(TraceScore).where(TraceScore.loop_id == loop_id, TraceScore.trace_id.in_(ids),
                                                    TraceScore.score.is_not(None)))
    return {r.trace_id: r for r in rows}


def _feedback_scores(session: Session, org_id: str, ids: list[str]) -> dict[str, tuple[float, datetime]]:
    """The newest feedback score on choice 0 of each trace."""
    if not ids:
        return {}
    rows = session.scalars(select(Feedback).where(Feedback.org_id == org_id, Feedback.trace_id.in_(ids),
                                                  Feedback.score.is_not(None), Feedback.choice_index == 0)
                           .order_by(Feedback.created_at, Feedback.id))
    return {f.trace_id: (float(f.score or 0.0), f.created_at) for f in rows}


def from_upstream(session: Session, org_id: str, deployment_id: str, loop_id: str | None, src: UpstreamSource,
                  kind: str, limit: int) -> list[Candidate]:
    """Candidates from the teacher's replies (see the module docstring); ``kind`` is chat or pairs."""
    if kind not in ("chat", "pairs"):
        return []
    traces = [t for t in _answered(session, org_id, deployment_id, limit, teacher=None if kind == "pairs" else True)
              if _text_only(t) and _reply(t) is not None]
    ids = [t.id for t in traces]
    graded = _grader_scores(session, loop_id, ids)
    felt = _feedback_scores(session, org_id, ids)

    def score(t: Trace) -> tuple[float, datetime] | None:
        if src.filter != "feedback" and t.id in graded:
            g = graded[t.id]
            return float(g.score or 0.0), g.created_at
        if src.filter != "grader" and t.id in felt:
            return felt[t.id]
        return None

    out: list[Candidate] = []
    if kind == "chat":
        for t in traces:
            s = score(t)
            if src.filter != "none" and (s is None or s[0] < src.min_score):
                continue
            when = max(t.created_at, s[1]) if s is not None else t.created_at
            content: dict[str, Any] = {"messages": [*_prompt(t), _reply(t)]}
            if t.id in graded and graded[t.id].answer is not None:
                content["answer"] = graded[t.id].answer
            out.append(Candidate(content, "upstream", when, dict(t.request_metadata or {}),
                                 s[0] if s is not None else None,
                                 {"source_trace_id": t.id, "license": src.license, "teacher": t.upstream_id}))
        return out
    groups: dict[str, dict[bool, list[tuple[Trace, float, datetime]]]] = defaultdict(lambda: defaultdict(list))
    for t in traces:
        s = score(t)
        if s is not None:
            groups[json.dumps(_prompt(t), sort_keys=True)][t.upstream_id is not None].append((t, s[0], s[1]))
    for arms in groups.values():
        for (teacher, ts, tw), (student, ss, sw) in zip(arms[True], arms[False], strict=False):
            if ts >= src.min_score and ss <= src.max_score:
                good, bad, value = teacher, student, ts
            elif ss >= src.min_score and ts <= src.max_score:
                good, bad, value = student, teacher, ss
            else:
                continue
            chosen, rejected = _reply(good), _reply(bad)
            if chosen is None or rejected is None or chosen["content"].strip() == rejected["content"].strip():
                continue
            pair: dict[str, Any] = {"prompt": _prompt(teacher), "chosen": chosen, "rejected": rejected}
            answer = next((graded[x.id].answer for x in (teacher, student) if x.id in graded), None)
            if answer is not None:
                pair["answer"] = answer
            out.append(Candidate(pair, "upstream", max(tw, sw), dict(teacher.request_metadata or {}), value,
                                 {"source_trace_id": good.id, "rejected_trace_id": bad.id, "license": src.license,
                                  "teacher": teacher.upstream_id}))
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def arm_figures(session: Session, org_id: str, deployment_id: str, loop_id: str | None = None, *,
                since: datetime | None = None, until: datetime | None = None,
                limit: int = 100_000) -> dict[str, dict[str, Any]]:
    """Teacher vs student on the deployment's traffic in ``[since, until)`` (see the module docstring).

    Each arm: ``requests``, ``score`` (mean grader score of ``loop_id``; None without one), ``scored``,
    ``feedback`` (mean feedback score), ``cost_per_1k`` (minor units per 1,000 requests over the priced
    ones; None when none is priced) and ``shadow_requests`` (how many were shadow calls).
    """
    traces = _answered(session, org_id, deployment_id, limit, teacher=None, since=since, until=until)
    ids = [t.id for t in traces]
    graded = _grader_scores(session, loop_id, ids)
    felt = _feedback_scores(session, org_id, ids)
    out: dict[str, dict[str, Any]] = {}
    for name, is_teacher in (("teacher", True), ("student", False)):
        arm = [t for t in traces if (t.upstream_id is not None) == is_teacher]
        scores = [float(graded[t.id].score or 0.0) for t in arm if t.id in graded]
        costs = [t.cost_micro for t in arm if t.cost_micro is not None]
        out[name] = {
            "requests": len(arm),
            "shadow_requests": sum(1 for t in arm if t.arm == "shadow"),
            "score": _mean(scores),
            "scored": len(scores),
            "feedback": _mean([felt[t.id][0] for t in arm if t.id in felt]),
            "cost_per_1k": round(statistics.fmean(costs) / 1000, 6) if costs else None,
        }
    return out


def iteration_figures(session: Session, org_id: str, deployment_id: str, loop_id: str, since: datetime | None,
                      until: datetime | None) -> dict[str, Any]:
    """What a loop's history shows for one iteration: student vs teacher score and cost per 1,000 requests.

    The window ``[since, until)`` is the iteration's traffic (the loop's history passes the end of the
    iteration before and this one's end; None: open).
    """
    arms = arm_figures(session, org_id, deployment_id, loop_id, since=since, until=until)
    teacher, student = arms["teacher"], arms["student"]
    saved = None
    if teacher["cost_per_1k"] is not None and student["cost_per_1k"] is not None:
        saved = round(teacher["cost_per_1k"] - student["cost_per_1k"], 6)
    return {"teacher": teacher, "student": student, "cost_saved_per_1k": saved}


def teacher_completer(session: Session, deployment: Deployment, *, secret: str | None = None) -> OpenAICompleter:
    """A ``ChatCompleter`` over the deployment's upstream arm (primary, else canary, else shadow)."""
    upstream_id = deployment.upstream_id or deployment.canary_upstream_id or deployment.shadow_upstream_id
    row = session.get(UpstreamEndpoint, upstream_id) if upstream_id else None
    if row is None or row.org_id != deployment.org_id:
        raise NotFound(f"deployment {deployment.name!r} has no upstream arm", param="deployment")
    key = secret if secret is not None else Settings.from_env().upstream_key.get_secret_value()
    if not key:
        raise ConfigurationError("TEACHLOOP_UPSTREAM_KEY is not set; the teacher's API key cannot be decrypted",
                                 param="TEACHLOOP_UPSTREAM_KEY")
    try:
        api_key = Fernet(key.encode()).decrypt(row.key_ciphertext.encode("ascii")).decode()
    except (InvalidToken, ValueError):
        raise ServiceUnavailable("the teacher's API key was stored under another TEACHLOOP_UPSTREAM_KEY") from None
    return OpenAICompleter(row.base_url, row.model, api_key=api_key, timeout_s=row.timeout_s)


def gate_baseline(database: Database, deployment: Deployment) -> tuple[str, OpenAICompleter] | None:
    """(label, completer) of the teacher when the deployment's primary arm is an upstream, else None.

    The loop's gate then compares the candidate with the teacher (reward suites: the same held-out tasks,
    the same paired test); the label (``upstream:MODEL``) names the baseline in the decision record.
    """
    if deployment.upstream_id is None:
        return None
    with database.session(write=False) as session:
        current = session.get(Deployment, deployment.id)
        if current is None or current.upstream_id is None:
            return None
        completer = teacher_completer(session, current)
        return f"upstream:{completer.model}", completer


__all__ = ["arm_figures", "from_upstream", "gate_baseline", "iteration_figures", "teacher_completer"]

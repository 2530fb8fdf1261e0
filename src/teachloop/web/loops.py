"""Loop pages: ``/loops`` (every loop) and ``/loops/{deployment}`` (config, state, iterations, online reward).

- ``/loops``: each loop with its deployment, on/off, phase, last tick, note and
  its latest iteration's outcome.
- ``/loops/{deployment}``: the config summarised (sources, trigger,
  algorithm, gate, promotion, budget; the whole config as JSON below), the
  state (on/paused, phase, the active iteration, cursor, last tick, note),
  what the deployment serves, the online reward over time as an SVG chart
  (the grader's mean score of the loop's scored traffic per time bucket, one
  series per arm, the last ``ONLINE_DAYS`` days, at most the newest
  ``ONLINE_SCORES`` scores), and the newest
  ``ITERATIONS`` iterations: trigger, data, run, baseline (the deployed adapter
  version, or the primary arm -- an upstream or the base model -- at the
  revision the iteration started from) and candidate, the
  gate's test and per-suite figures (an environment suite's slice of the task
  stream: fresh or fixed, offset, tasks, repeated prompts), the decision and its reason, the canary
  and watch evidence (both arms' online figures and the verdict) and the
  deployment revisions it wrote.
- ``POST /loops/{deployment}/pause`` and ``/resume``: ``loop.service.set_enabled``,
  the call ``POST /api/loops/{deployment}/pause|resume`` makes (member role;
  easy to undo, so no confirmation page).

Reading needs the viewer role. Everything is scoped to the signed-in member's
organisation: another organisation's deployment (or its loop) is a 404 page
like a missing one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.responses import RedirectResponse, Response

from teachloop.core.loop import CanaryRecord, GateSample, Revisions
from teachloop.core.tenancy import Role
from teachloop.loop.config import LoopConfig
from teachloop.loop.service import find_loop, set_enabled
from teachloop.store.repos.deployments import AdapterVersions, Deployments
from teachloop.store.repos.loops import Loops, canary_of, revisions_of
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.datasets import Dataset
from teachloop.store.schema.loops import LoopIteration, TraceScore
from teachloop.web.auth import SignedIn, app_deps, require, require_csrf
from teachloop.web.charts import LineChart, line_chart
from teachloop.web.deployments import StateView, deployment_rows, primaries_at
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

ITERATIONS = 30
ONLINE_DAYS = 30
ONLINE_SCORES = 50_000
#: time buckets of the online-reward chart, smallest first; the first giving at most MAX_BUCKETS is used
BUCKETS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400)
MAX_BUCKETS = 60


@dataclass(frozen=True)
class SuiteView:
    """One gate suite's figures (from the iteration's decision record)."""

    name: str
    metric: str
    n: int | None
    deciding: bool
    baseline_mean: float | None
    candidate_mean: float | None
    mean_diff: float | None
    sample: str | None = None  # an environment suite's slice of the task stream, in words (GateSample.describe)


@dataclass(frozen=True)
class GateView:
    """An iteration's eval-gate record, typed for the page (missing figures are None)."""

    passed: bool | None
    reason: str | None
    method: str | None
    n: int | None
    mean_diff: float | None
    lower_bound: float | None
    p_value: float | None
    confidence: float | None
    suites: list[SuiteView] = field(default_factory=list)


@dataclass(frozen=True)
class IterationView:
    """One iteration as the page shows it."""

    row: LoopIteration
    dataset: str | None
    baseline: str
    candidate: str | None
    gate: GateView | None
    canary: CanaryRecord
    revisions: Revisions


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _sample(raw: Any) -> str | None:
    sample = GateSample.of(raw)
    return sample.describe() if sample is not None else None


def gate_view(record: dict[str, Any] | None) -> GateView | None:
    """The gate's decision record (``loop.gate.GateDecision.to_json``) as a ``GateView``; None when absent."""
    if not record:
        return None
    raw = record.get("test")
    test: dict[str, Any] = raw if isinstance(raw, dict) else {}
    suites = [SuiteView(str(s.get("name", "")), str(s.get("metric", "")), _int(s.get("n")), bool(s.get("deciding")),
                        _num(s.get("baseline_mean")), _num(s.get("candidate_mean")), _num(s.get("mean_diff")),
                        _sample(s.get("sample")))
              for s in record.get("suites") or [] if isinstance(s, dict)]
    passed = record.get("passed")
    return GateView(passed if isinstance(passed, bool) else None, _str(record.get("reason")), _str(test.get("method")),
                    _int(test.get("n")), _num(test.get("mean_diff")), _num(test.get("lower_bound")),
                    _num(test.get("p_value")), _num(test.get("confidence")), suites)


def config_summary(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(section, one line) pairs summarising a stored loop config (empty when it no longer validates)."""
    try:
        cfg = LoopConfig.model_validate(config)
    except ValidationError:
        return []
    sources = ", ".join(
        s.kind + (f" ({getattr(s, 'env', '') or getattr(s, 'dataset', '') or ''})"
                  if getattr(s, "env", None) or getattr(s, "dataset", None) else "")
        for s in cfg.sources)
    t = cfg.trigger
    when = " or ".join(x for x in (f"every {t.every} new usable examples" if t.every else "",
                                   f"every {t.interval_minutes:g} minutes" if t.interval_minutes else "") if x)
    g, p = cfg.gate, cfg.promotion
    envs = ", ".join(e.env for e in g.environments)
    return [
        ("Sources", sources),
        ("Trigger", f"{when}; at least {t.min_examples} training rows"),
        ("Algorithm", f"{cfg.algorithm.kind}{' (warm start from the deployed adapter)' if cfg.algorithm.warm_start else ''}"),
        ("Gate", f"{g.metric} by {g.test} test at {g.confidence:.0%} confidence, min improvement {g.min_improvement:g}, "
                 f"max regression {g.max_regression:g}" + (f"; environments {envs}" if envs else "")),
        ("Promotion", f"canary {p.canary_percent} % for at least {p.canary_min_requests} requests; roll back on a "
                      f"drop of more than {p.max_drop:g} in {', '.join(p.signals)}"),
        ("Budget", f"{cfg.budget.train_minutes_per_day:g} training minutes a day"),
    ]


def online_scores(session: Any, org_id: str, loop_id: str) -> list[tuple[datetime, str | None, float]]:
    """(trace time, arm, score) of the loop's graded traffic of the last ``ONLINE_DAYS`` days (the newest
    ``ONLINE_SCORES`` at most), oldest first."""
    found = session.execute(
        select(TraceScore.trace_created_at, TraceScore.arm, TraceScore.score)
        .where(TraceScore.org_id == org_id, TraceScore.loop_id == loop_id, TraceScore.score.is_not(None),
               TraceScore.trace_created_at > utc_now() - timedelta(days=ONLINE_DAYS))
        .order_by(TraceScore.trace_created_at.desc()).limit(ONLINE_SCORES)
    )
    return [(at, arm, float(score)) for at, arm, score in found][::-1]


def online_chart(scores: list[tuple[datetime, str | None, float]]) -> LineChart:
    """The online reward: mean grader score per time bucket, one series per arm."""
    stamped = [(at.replace(tzinfo=at.tzinfo or UTC).timestamp(), arm or "primary", score)
               for at, arm, score in scores if math.isfinite(score)]
    span = (max(t for t, _, _ in stamped) - min(t for t, _, _ in stamped)) if stamped else 0.0
    size = next((b for b in BUCKETS if span / b <= MAX_BUCKETS), BUCKETS[-1])
    sums: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t, arm, score in stamped:
        sums[arm][t // size * size].append(score)
    series = {f"{arm} (mean per {_duration(size)})": [(t, sum(v) / len(v)) for t, v in sorted(buckets.items())]
              for arm, buckets in sorted(sums.items())}
    return line_chart(f"Online reward, last {ONLINE_DAYS} days", series, x_time=True, y_label="grader score")


def _duration(seconds: int) -> str:
    return f"{seconds // 86_400} d" if seconds >= 86_400 else (
        f"{seconds // 3600} h" if seconds >= 3600 else f"{seconds // 60} min")


@router.get("/loops")
def loop_list(request: Request, viewer: SignedIn) -> Response:
    """Every loop of the organisation with its latest iteration."""
    require(viewer, Role.VIEWER, "reading loops")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as session:
        names = {d.id: d.name for d in Deployments(session).list(org)}
        repo = Loops(session)
        rows = [(lp, names.get(lp.deployment_id, lp.deployment_id), next(iter(repo.iterations(org, lp.id, limit=1)), None))
                for lp in repo.list(org)]
    return page(request, "loops.html", rows=rows)


def _baseline(row: LoopIteration, refs: dict[str, str], primaries: dict[int, str]) -> str:
    """What the iteration compared against: the deployed adapter version, else the primary arm at the revision it
    started from (an upstream, or the base model), else the gate record's ``upstream:MODEL``, else the base model."""
    if row.baseline_version_id:
        return refs.get(row.baseline_version_id, row.baseline_version_id)
    before = revisions_of(row).before
    if before is not None and before in primaries:
        return primaries[before]
    gated = (row.gate or {}).get("baseline")
    if isinstance(gated, str) and gated.startswith("upstream:"):
        return f"upstream {gated.removeprefix('upstream:')}"
    return "base model"


def _iterations(session: Any, org: str, loop_id: str, deployment_id: str) -> list[IterationView]:
    rows = Loops(session).iterations(org, loop_id, limit=ITERATIONS)
    ids = {i for r in rows for i in (r.baseline_version_id, r.candidate_version_id) if i}
    refs = {v.id: v.ref for v in AdapterVersions(session).by_ids(org, ids).values()}
    started = {b for r in rows if not r.baseline_version_id and (b := revisions_of(r).before) is not None}
    primaries = primaries_at(session, org, deployment_id, started)
    ids = {r.dataset_id for r in rows if r.dataset_id}
    names = {d.id: d.ref for d in session.scalars(select(Dataset).where(Dataset.org_id == org, Dataset.id.in_(ids)))}
    return [IterationView(r, names.get(r.dataset_id or ""), _baseline(r, refs, primaries),
                          refs.get(r.candidate_version_id) if r.candidate_version_id else None, gate_view(r.gate),
                          canary_of(r), revisions_of(r)) for r in rows]


@router.get("/loops/{deployment}")
def loop_detail(request: Request, viewer: SignedIn, deployment: str, done: str = "") -> Response:
    """One deployment's loop: config, state, online reward, iterations."""
    require(viewer, Role.VIEWER, "reading loops")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as session:
        loop = find_loop(session, org, deployment)
        dep = Deployments(session).get(org, deployment)
        serving: StateView = next(state for d, state in deployment_rows(session, org) if d.id == dep.id)
        iterations = _iterations(session, org, loop.id, dep.id)
        scores = online_scores(session, org, loop.id)
        chart = online_chart(scores)
    return page(request, "loop.html", lp=loop, name=dep.name, revision=dep.revision, serving=serving,
                summary=config_summary(loop.config), iterations=iterations, chart=chart, chart_id="chart-online",
                scored=len(scores), can_write=viewer.can(Role.MEMBER), done=done)


def _toggle(request: Request, viewer: SignedIn, deployment: str, enabled: bool) -> Response:
    require(viewer, Role.MEMBER, "pausing or resuming a loop")
    set_enabled(app_deps(request).database, viewer.principal.org_id, deployment, enabled)
    return RedirectResponse(f"/loops/{quote(deployment, safe='')}?done={'resumed' if enabled else 'paused'}",
                            status_code=303)


@router.post("/loops/{deployment}/pause")
def pause(request: Request, viewer: SignedIn, deployment: str) -> Response:
    """Pause the loop: it stops ticking until resumed."""
    return _toggle(request, viewer, deployment, False)


@router.post("/loops/{deployment}/resume")
def resume(request: Request, viewer: SignedIn, deployment: str) -> Response:
    """Resume a paused loop."""
    return _toggle(request, viewer, deployment, True)


__all__ = ["GateView", "IterationView", "SuiteView", "config_summary", "gate_view", "online_chart", "online_scores",
           "router"]

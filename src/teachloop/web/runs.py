"""Training-run pages: ``/runs`` (the list) and ``/runs/{id}`` (config, curves, held-out eval, checkpoints).

- ``/runs``: the organisation's newest runs (``LIST_SIZE``) with status,
  algorithm, steps done of the total, base model and when each was created.
- ``/runs/{id}``: the record (status, error, pinned inputs), the config as
  indented JSON, one SVG curve per charted training metric (``?metric=KEY``,
  repeatable; by default ``reward_mean`` and ``loss``, whichever the run has),
  the held-out evaluation as a curve and as a before/after table (the eval row
  at the lowest step -- step 0 is the before-training evaluation -- against
  the newest), every figure per step (at most ``TABLE_ROWS`` rows, evenly
  thinned) and the checkpoints.
- ``/runs/{id}/deploy`` (``?name=NAME``): deploy a completed run's final
  adapter in one step -- the GET shows what will be created (the adapter
  ``NAME@next`` published from the run, served by the new deployment ``NAME``)
  and refuses early (a run without a final adapter is 400, an existing name
  409); only the POST creates it, through ``serve.deployments.create_deployment``
  with ``run`` -- the same call as ``POST /api/deployments {"run": ...}`` and
  ``teachloop deploy create NAME --run RUN_ID`` -- and redirects to the new
  deployment's page. Needs the member role.

Everything is read through ``train.runs.RunStore``, the store
``/api/runs`` reads, scoped to the signed-in member's organisation: another
organisation's run is a 404 page like a missing one. Reading needs the viewer
role; nothing here changes a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from sqlalchemy import select
from starlette.responses import RedirectResponse, Response

from teachloop.core.errors import Conflict, InvalidInput
from teachloop.core.tenancy import Role
from teachloop.serve.deployments import DeploymentCreate, create_deployment
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema.runs import TrainingRun
from teachloop.train.runs import RunStore
from teachloop.web.auth import SignedIn, Viewer, app_deps, require, require_csrf, serving_of
from teachloop.web.charts import LineChart, line_chart
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

LIST_SIZE = 100
TABLE_ROWS = 200
#: training metrics charted when the page names none (each one the run has)
DEFAULT_CURVES = ("reward_mean", "loss")
#: held-out figures, in order of preference, for the eval curve
EVAL_KEYS = ("reward_mean", "heldout_nll", "heldout_dpo_loss", "heldout_accuracy")

Rows = list[tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class EvalChange:
    """One held-out figure before and after training."""

    name: str
    before: float | None
    after: float | None

    @property
    def change(self) -> float | None:
        """``after - before`` (None without both)."""
        return None if self.before is None or self.after is None else self.after - self.before


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def metric_names(rows: Rows) -> list[str]:
    """The numeric figures any row has, sorted."""
    return sorted({k for _, v in rows for k, x in v.items() if _is_number(x)})


def _curve(rows: Rows, key: str) -> list[tuple[float, float]]:
    return [(float(s), float(v[key])) for s, v in rows if _is_number(v.get(key))]


def eval_changes(evals: Rows) -> list[EvalChange]:
    """Each held-out figure at the first evaluation and at the last (one row: before only)."""
    if not evals:
        return []
    first, last = evals[0][1], evals[-1][1] if len(evals) > 1 else {}
    return [EvalChange(k, float(first[k]) if _is_number(first.get(k)) else None,
                       float(last[k]) if _is_number(last.get(k)) else None)
            for k in metric_names(evals)]


def _thin(rows: Rows) -> tuple[Rows, int]:
    """At most ``TABLE_ROWS`` rows (every k-th, the last kept) and the stride k."""
    if len(rows) <= TABLE_ROWS:
        return rows, 1
    stride = math.ceil(len(rows) / TABLE_ROWS)
    kept = rows[::stride]
    return (kept if kept[-1] is rows[-1] else [*kept, rows[-1]]), stride


@router.get("/runs")
def run_list(request: Request, viewer: SignedIn) -> Response:
    """The organisation's training runs, newest first."""
    require(viewer, Role.VIEWER, "reading training runs")
    deps = app_deps(request)
    org = viewer.principal.org_id
    runs = RunStore(deps.database, deps.blobs).list_runs(org, limit=LIST_SIZE)
    with deps.database.session(write=False) as session:  # RunInfo carries no start time
        found = session.execute(select(TrainingRun.id, TrainingRun.started_at).where(
            TrainingRun.org_id == org, TrainingRun.id.in_([r.id for r in runs])))
        started = {run_id: at for run_id, at in found}
    return page(request, "runs.html", runs=runs, started=started, limit=LIST_SIZE)


@router.get("/runs/{run_id}")
def run_detail(request: Request, viewer: SignedIn, run_id: str,
               metric: Annotated[list[str] | None, Query(max_length=200)] = None) -> Response:
    """One run: its record and config, metric curves, held-out eval before and after, checkpoints."""
    require(viewer, Role.VIEWER, "reading training runs")
    deps = app_deps(request)
    store = RunStore(deps.database, deps.blobs)
    org = viewer.principal.org_id
    run = store.get(org, run_id)
    rows = store.metrics(org, run.id)
    checkpoints = store.checkpoints(org, run.id)
    train: Rows = [(s, v) for s, p, v in rows if p == "train"]
    evals: Rows = [(s, v) for s, p, v in rows if p == "eval"]
    names = metric_names(train)
    wanted = [m for m in dict.fromkeys(metric or []) if m.strip()] or [k for k in DEFAULT_CURVES if k in names]
    charts: list[tuple[str, LineChart]] = [
        (f"chart-train-{i}", line_chart(f"Training: {key}", {key: _curve(train, key)}, y_label=key))
        for i, key in enumerate(wanted[:6])
    ]
    eval_key = next((k for k in EVAL_KEYS if any(k in v for _, v in evals)), None)
    if eval_key is not None:
        charts.append(("chart-eval", line_chart(f"Held-out eval: {eval_key}", {f"eval {eval_key}": _curve(evals, eval_key)},
                                                y_label=eval_key, dots=[f"eval {eval_key}"])))
    table, stride = _thin(train)
    return page(request, "run.html", run=run, charts=charts, names=names, charted=wanted, changes=eval_changes(evals),
                evals=evals, eval_names=metric_names(evals), table=table, stride=stride, checkpoints=checkpoints,
                member_role=Role.MEMBER)


def _deployable(request: Request, viewer: Viewer, run_id: str, name: str) -> tuple[Any, str]:
    """The run (404 if missing or another organisation's) and the name, refused early: no final adapter (400),
    no or a taken name (400 / 409)."""
    deps = app_deps(request)
    org = viewer.principal.org_id
    run = RunStore(deps.database, deps.blobs).get(org, run_id)
    if not run.final_adapter_key:
        raise InvalidInput(f"run {run.id} is {run.status} and has no final adapter yet; deploy it once it has "
                           "completed", param="run")
    name = name.strip()
    if not name:
        raise InvalidInput("name the deployment (what clients will pass as model)", param="name")
    with deps.database.session(write=False) as session:
        if Deployments(session).find(org, name) is not None:
            raise Conflict(f"deployment {name!r} already exists; change it from its page", param="name")
    return run, name


@router.get("/runs/{run_id}/deploy")
def confirm_deploy(request: Request, viewer: SignedIn, run_id: str, name: str = "") -> Response:
    """What deploying the run as ``name`` will create, and the button that does it."""
    require(viewer, Role.MEMBER, "deploying a run")
    run, name = _deployable(request, viewer, run_id, name[:200])
    return page(request, "confirm_deploy_run.html", run=run, name=name)


@router.post("/runs/{run_id}/deploy")
def deploy_run(request: Request, viewer: SignedIn, run_id: str,
               name: Annotated[str, Form(max_length=200)] = "") -> Response:
    """Publish the run's final adapter as ``name`` and create the deployment ``name`` serving it."""
    require(viewer, Role.MEMBER, "deploying a run")
    run, name = _deployable(request, viewer, run_id, name)
    out = create_deployment(serving_of(request), viewer.principal, DeploymentCreate(name=name, run=run.id))
    return RedirectResponse(f"/deployments/{quote(name, safe='')}?done=created-{out.get('revision', 1)}",
                            status_code=303)


__all__ = ["DEFAULT_CURVES", "EVAL_KEYS", "EvalChange", "eval_changes", "metric_names", "router"]

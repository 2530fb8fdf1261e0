"""``/api/runs``: training runs over REST -- create from a config, list, show, metrics, checkpoints, cancel, resume.

- ``POST /api/runs`` ``{"config": {...}}`` validates the config (422 naming the
  dotted field, e.g. ``optim.lr``, and nothing is queued), creates the run in
  status ``queued`` and queues a ``train`` job that a worker (``teachloop up``'s
  in-process one, or ``teachloop worker``) executes. An ``Idempotency-Key``
  header makes a retry safe: the same key and config return the same run (200),
  the same key with another config is 409.
- ``GET /api/runs``, ``GET /api/runs/{id}``, ``/metrics``, ``/checkpoints``.
- ``POST /api/runs/{id}/cancel``: a queued run is cancelled at once, a running one
  stops at its next step boundary; ``POST /api/runs/{id}/resume`` queues a failed
  or cancelled run again from its last checkpoint.

Every route is scoped to the caller's organisation: another organisation's run
is a 404 exactly like a missing one. Reads need a viewer key, writes a member
key. The services live in ``train.jobs`` and ``train.runs``. Creating a run past the organisation's
``concurrent_runs`` or ``spend_per_month`` quota is 429 naming the quota (``market.quotas``); nothing is queued.
"""

from __future__ import annotations

from fastapi import APIRouter, Header, Query, Response

from teachloop.app.auth import Deps, Member, Viewer
from teachloop.core.api import Checkpoint, CheckpointList, MetricPoint, Run, RunCreate, RunList, RunMetrics
from teachloop.market.quotas import run_admission
from teachloop.train.jobs import cancel_run, resume_run, submit_run
from teachloop.train.runs import RunInfo, RunStore

router = APIRouter(prefix="/api", tags=["runs"])

_KEY_HELP = "Makes a retried POST safe: the same key and body return the first response's run."


def run_out(run: RunInfo) -> Run:
    """The wire form of a run record."""
    return Run(id=run.id, name=run.name, algorithm=run.algorithm, status=run.status, base_model=run.base_model,
               step=run.step, total_steps=run.total_steps, config=run.config, inputs=run.inputs,
               last_checkpoint_step=run.last_checkpoint_step, has_adapter=run.final_adapter_key is not None,
               error=run.error, created_at=run.created_at, finished_at=run.finished_at, best_step=run.best_step,
               best_score=run.best_score, stop_reason=run.stop_reason, alarm=run.alarm)


@router.post("/runs", status_code=201, response_model=Run)
def create_run(
    body: RunCreate, principal: Member, deps: Deps, response: Response,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", description=_KEY_HELP),
) -> Run:
    """Queue a training run from a config; a worker runs it. 422 (naming the field) for a bad config.

    A config without ``model`` trains on the server's configured model.
    """
    run, created = submit_run(deps.database, deps.blobs, principal.org_id, body.config,
                              idempotency_key=idempotency_key, default_model=deps.settings.model,
                              admit=run_admission)
    if not created:
        response.status_code = 200
    return run_out(run)


@router.get("/runs", response_model=RunList)
def list_runs(principal: Viewer, deps: Deps, limit: int = Query(50, ge=1, le=1000)) -> RunList:
    """The organisation's training runs, newest first."""
    return RunList(data=[run_out(r) for r in RunStore(deps.database, deps.blobs).list_runs(principal.org_id, limit)])


@router.get("/runs/{run_id}", response_model=Run)
def get_run(run_id: str, principal: Viewer, deps: Deps) -> Run:
    """One run."""
    return run_out(RunStore(deps.database, deps.blobs).get(principal.org_id, run_id))


@router.get("/runs/{run_id}/metrics", response_model=RunMetrics)
def run_metrics(
    run_id: str, principal: Viewer, deps: Deps,
    phase: str | None = Query(None, pattern="^(train|eval)$", description="Only train or only eval rows."),
) -> RunMetrics:
    """A run's metrics (train and eval rows) in step order."""
    rows = RunStore(deps.database, deps.blobs).metrics(principal.org_id, run_id, phase)
    return RunMetrics(run_id=run_id, data=[MetricPoint(step=s, phase=p, values=v) for s, p, v in rows])


@router.get("/runs/{run_id}/checkpoints", response_model=CheckpointList)
def run_checkpoints(run_id: str, principal: Viewer, deps: Deps) -> CheckpointList:
    """A run's stored checkpoints in step order (the last one is where a resume starts)."""
    rows = RunStore(deps.database, deps.blobs).checkpoints(principal.org_id, run_id)
    return CheckpointList(run_id=run_id, data=[Checkpoint(step=s, created_at=at) for s, _, at in rows])


@router.post("/runs/{run_id}/cancel", response_model=Run)
def cancel(run_id: str, principal: Member, deps: Deps) -> Run:
    """Cancel a queued run now, or stop a running one at its next step boundary (409 once it has ended)."""
    return run_out(cancel_run(deps.database, deps.blobs, principal.org_id, run_id, actor=principal.key_id))


@router.post("/runs/{run_id}/resume", response_model=Run)
def resume(run_id: str, principal: Member, deps: Deps) -> Run:
    """Queue a failed or cancelled run again; it continues from its last checkpoint (409 otherwise)."""
    return run_out(resume_run(deps.database, deps.blobs, principal.org_id, run_id))


__all__ = ["router", "run_out"]

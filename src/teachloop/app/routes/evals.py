"""``/api/evals``: evaluations over REST -- start one on the worker, list them, show one.

``POST /api/evals`` checks the request (environment reference, adapter version
or completed run in the caller's organisation) and queues an ``eval`` job; a
refused request queues nothing. The evaluation's id is its job's id; once the
job succeeds, ``result`` holds the stored result (also listed under
``/api/envs/{name}/evals``). Another organisation's evaluation is a 404 exactly
like a missing one. Reads need a viewer key, starting one a member key. The
service lives in ``train.evaluations``.
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import ValidationError

from teachloop.app.auth import Deps, Member, Viewer
from teachloop.app.routes.envs import result_out
from teachloop.core.api import EvalRequest, Evaluation, EvaluationList
from teachloop.core.errors import NotFound
from teachloop.store.queue import Job
from teachloop.store.schema.environments import EnvironmentEval
from teachloop.train.evaluations import JOB_KIND, submit_eval

router = APIRouter(prefix="/api", tags=["evaluations"])


def _out(job: Job, deps: Deps) -> Evaluation:
    try:
        request = EvalRequest.model_validate(job.payload)
    except ValidationError:  # pragma: no cover - payloads are written by submit_eval
        request = EvalRequest(env="?")
    result = None
    eval_id = (job.result or {}).get("eval_id")
    if isinstance(eval_id, str):
        with deps.database.session(write=False) as session:
            row = session.get(EnvironmentEval, eval_id)
            if row is not None and row.org_id == job.org_id:
                result = result_out(row)
    error = f"{job.error.get('type')}: {job.error.get('message')}" if job.error and job.status.value == "failed" \
        else None
    return Evaluation(id=job.id, status=job.status.value, request=request, result=result, error=error,
                      created_at=job.created_at, finished_at=job.finished_at)


@router.post("/evals", status_code=201, response_model=Evaluation)
def start_eval(body: EvalRequest, principal: Member, deps: Deps) -> Evaluation:
    """Queue an evaluation of an environment against a base model (and adapter or run) on the worker."""
    job_id = submit_eval(deps.database, deps.blobs, principal.org_id, body)
    return _out(deps.queue.get(principal.org_id, job_id), deps)


@router.get("/evals", response_model=EvaluationList)
def list_evals(principal: Viewer, deps: Deps, limit: int = Query(50, ge=1, le=1000)) -> EvaluationList:
    """Evaluations started over the API, newest first."""
    return EvaluationList(data=[_out(j, deps) for j in deps.queue.list(principal.org_id, kind=JOB_KIND, limit=limit)])


@router.get("/evals/{eval_id}", response_model=Evaluation)
def get_eval(eval_id: str, principal: Viewer, deps: Deps) -> Evaluation:
    """One evaluation: its status while it runs, its result when done."""
    job = deps.queue.get(principal.org_id, eval_id)
    if job.kind != JOB_KIND:
        raise NotFound(f"evaluation {eval_id!r} not found", param="eval_id")
    return _out(job, deps)


__all__ = ["router"]

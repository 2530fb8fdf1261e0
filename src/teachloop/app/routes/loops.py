"""``/api/loops``: the autopilot loop of each deployment over REST.

- ``GET /api/loops``: the organisation's loops.
- ``PUT /api/loops/{deployment}``: the loop config as JSON (docs/loop.md);
  refused with the field named, nothing changed, when invalid or when it names
  a missing deployment, environment or dataset. 200 either way; ``created``
  says whether the loop is new.
- ``GET /api/loops/{deployment}``: status -- phase, serving state, online
  figures of the last 24 hours, latest iteration.
- ``GET /api/loops/{deployment}/iterations``: every iteration, newest first.
- ``POST /api/loops/{deployment}/pause|resume``; ``POST
  /api/loops/{deployment}/tick`` (202: one tick queued for the worker).

Every route is scoped to the caller's organisation; reads need a viewer key,
changes a member key. The services live in ``loop.service``; this module knows
HTTP and the response models only.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field

from teachloop.app.auth import Deps, Member, Viewer
from teachloop.core.loop import (
    CanaryRecord,
    IterationStage,
    IterationStatus,
    LoopPhase,
    OnlineSummary,
    Revisions,
)
from teachloop.loop import service
from teachloop.store.repos.deployments import Deployments
from teachloop.store.repos.loops import Loops

router = APIRouter(prefix="/api", tags=["loops"])


class LoopOut(BaseModel):
    """A deployment's loop."""

    id: str = Field(description="Loop id (loop_...).")
    deployment: str = Field(description="The deployment it improves.")
    enabled: bool = Field(description="False while paused.")
    phase: LoopPhase = Field(description="Where the loop stands: idle, canary or watch.")
    active_iteration_id: str | None = Field(description="The iteration in progress (lit_...), if any.")
    config: dict[str, Any] = Field(description="The validated loop config, every default filled in (docs/loop.md).")
    config_digest: str = Field(description="sha256 of the canonical config.")
    cursor: datetime | None = Field(description="Traces up to this time have been considered for data.")
    last_tick_at: datetime | None = Field(description="When the loop last ticked.")
    note: str | None = Field(description="Why the last tick did nothing, when it did nothing.")
    created_at: datetime = Field(description="When the loop was first configured.")
    updated_at: datetime = Field(description="When it last changed.")


class LoopPut(LoopOut):
    """The loop as stored by ``PUT``."""

    created: bool = Field(description="True when this call created the loop, false when it replaced its config.")


class LoopList(BaseModel):
    """The organisation's loops."""

    data: list[LoopOut] = Field(description="One per deployment that has a loop.")


class IterationDataset(BaseModel):
    """The dataset snapshot an iteration trained on."""

    id: str = Field(description="Dataset snapshot id (ds_...).")
    ref: str | None = Field(description="NAME@N (null when the snapshot is gone).")
    digest: str | None = Field(description="The snapshot's digest as the iteration pinned it.")
    rows: int | None = Field(description="Rows in the snapshot.")


class IterationRun(BaseModel):
    """The training run of an iteration."""

    id: str = Field(description="Run id (run_...).")
    status: str | None = Field(description="The run's status.")
    steps: int | None = Field(description="Optimizer steps done.")
    error: str | None = Field(description="Why the run failed, if it did.")


class Iteration(BaseModel):
    """One iteration of a loop: data used, run, eval figures, decision and reason, canary."""

    id: str = Field(description="Iteration id (lit_...).")
    number: int = Field(description="1 for the loop's first iteration, then counting up.")
    trigger: str = Field(description="What started it.")
    status: IterationStatus = Field(description="Its outcome, or running.")
    stage: IterationStage = Field(description="How far it got.")
    reason: str | None = Field(description="Why it ended as it did, in words.")
    dataset: IterationDataset | None = Field(description="The curated dataset, once made.")
    counts: dict[str, Any] = Field(description="Curation counts (traces seen, kept, dropped by each rule).")
    run: IterationRun | None = Field(description="The training run, once started.")
    baseline: str = Field(description="The primary arm it was compared against, as served when it started: the "
                          "adapter NAME@N, upstream:MODEL for an upstream (an OpenAI-compatible hosted model; the "
                          "gate record's baseline), or base for the base model.")
    candidate: str | None = Field(description="The adapter version it trained (NAME@N).")
    gate: dict[str, Any] = Field(description="The offline eval gate's figures and decision (test, passed, ...).")
    canary: CanaryRecord = Field(description="The canary and, once promoted, the watch.")
    revisions: Revisions = Field(description="Deployment revisions it saw and wrote.")
    train_seconds: float = Field(description="Seconds spent training.")
    started_at: datetime = Field(description="When it started.")
    finished_at: datetime | None = Field(description="When it ended.")
    arms: dict[str, Any] | None = Field(default=None, description="With an upstream source (issue 17): the "
                                        "teacher's and the student's requests, scores and cost per 1,000 requests "
                                        "over the iteration's traffic, and cost_saved_per_1k.")


class IterationList(BaseModel):
    """A loop's iterations, newest first."""

    data: list[Iteration] = Field(description="The iterations.")


class LoopServing(BaseModel):
    """What the deployment serves now."""

    revision: int = Field(description="The deployment's state revision.")
    adapter_version_id: str | None = Field(description="The adapter version served to everyone (null: the base).")
    canary_version_id: str | None = Field(description="The canary's adapter version, if any.")
    canary_percent: int = Field(description="Share of users on the canary.")
    adapter: str = Field(description="The primary arm: NAME@N of the adapter served, upstream:MODEL for an "
                         "upstream, or base.")
    canary: str | None = Field(description="The canary arm, if any: NAME@N, or upstream:MODEL for an upstream.")


class LoopStatus(LoopOut):
    """A loop with what its deployment serves, its online figures and its latest iteration."""

    serving: LoopServing
    online_24h: OnlineSummary = Field(description="Online figures of the primary arm over the last 24 hours.")
    latest_iteration: Iteration | None = Field(description="The newest iteration, if any.")


class TickQueued(BaseModel):
    """A queued loop tick."""

    job_id: str = Field(description="The queued job (job_...); a worker runs it.")


@router.get("/loops", response_model=LoopList)
def list_loops(principal: Viewer, deps: Deps) -> LoopList:
    """The organisation's loops."""
    with deps.database.session(write=False) as s:
        names = {d.id: d.name for d in Deployments(s).list(principal.org_id)}
        loops = [service.loop_json(lp, names.get(lp.deployment_id, "?")) for lp in Loops(s).list(principal.org_id)]
    return LoopList(data=[LoopOut.model_validate(lp) for lp in loops])


@router.put("/loops/{deployment}", response_model=LoopPut)
async def put_loop(deployment: str, principal: Member, deps: Deps,
                   body: dict[str, Any] = Body(..., description="The loop config (docs/loop.md).")) -> LoopPut:
    """Create or replace the loop of ``deployment``; a bad config is refused with the field named."""
    out, created = await asyncio.to_thread(
        service.configure_deployment_loop, deps.database, deps.blobs, principal.org_id, deployment, body,
        cache=deps.settings.home / "envs", actor=principal.key_id)
    return LoopPut.model_validate({**out, "created": created})


@router.get("/loops/{deployment}", response_model=LoopStatus)
def get_loop(deployment: str, principal: Viewer, deps: Deps) -> LoopStatus:
    """The loop's status: phase, what the deployment serves, online figures, latest iteration."""
    return LoopStatus.model_validate(service.status(deps.database, principal.org_id, deployment))


@router.get("/loops/{deployment}/iterations", response_model=IterationList)
def list_iterations(deployment: str, principal: Viewer, deps: Deps,
                    limit: int = Query(50, ge=1, le=1000)) -> IterationList:
    """Every iteration, newest first: data, run, eval figures, decision and reason."""
    rows = service.history(deps.database, principal.org_id, deployment, limit=limit)
    return IterationList(data=[Iteration.model_validate(r) for r in rows])


@router.post("/loops/{deployment}/pause", response_model=LoopOut)
def pause_loop(deployment: str, principal: Member, deps: Deps) -> LoopOut:
    """Stop starting iterations (a candidate in canary or watch is still judged when resumed)."""
    return LoopOut.model_validate(service.set_enabled(deps.database, principal.org_id, deployment, False))


@router.post("/loops/{deployment}/resume", response_model=LoopOut)
def resume_loop(deployment: str, principal: Member, deps: Deps) -> LoopOut:
    """Start ticking again."""
    return LoopOut.model_validate(service.set_enabled(deps.database, principal.org_id, deployment, True))


@router.post("/loops/{deployment}/tick", status_code=202, response_model=TickQueued)
def tick_loop(deployment: str, principal: Member, deps: Deps) -> TickQueued:
    """Queue one tick of the loop for a worker (the worker queues the following ones)."""
    return TickQueued(job_id=service.request_tick(deps.database, deps.queue, principal.org_id, deployment))


__all__ = [
    "Iteration",
    "IterationDataset",
    "IterationList",
    "IterationRun",
    "LoopList",
    "LoopOut",
    "LoopPut",
    "LoopServing",
    "LoopStatus",
    "TickQueued",
    "router",
]

"""``/api/deployments``, ``/api/adapters`` and ``/api/serving/stats``: what this server serves, over REST.

- ``/api/deployments`` (list, create; ``{"run": RUN_ID}`` deploys a completed
  training run's final adapter in one step), ``/api/deployments/{name}`` (get,
  PATCH), ``/api/deployments/{name}/rollback``, ``/api/deployments/{name}/history``.
- ``/api/adapters``: the organisation's adapter versions (``?name=``).
- ``/api/serving/stats``: the caller's organisation's requests (in flight,
  completed, failed), tokens, tokens/s and traces on this server -- never
  server-wide load, which would reveal other organisations' traffic.

Every route is scoped to the caller's organisation; another organisation's
deployment or adapter is a 404 exactly like a missing one. Reads need a viewer
key, writes a member key. A change takes effect for the next request, without a
restart (``serve.deployments`` does the work); this module knows HTTP and the
response models only.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from teachloop.app.auth import Member, ServingDep, Viewer
from teachloop.serve import deployments as service
from teachloop.serve.deployments import DeploymentCreate, DeploymentPatch, RollbackIn

router = APIRouter(prefix="/api", tags=["deployments"])


class AdapterVersionOut(BaseModel):
    """An immutable, numbered adapter version."""

    id: str = Field(description="Adapter version id (av_...).")
    ref: str = Field(description="NAME@N.")
    name: str = Field(description="The adapter's name.")
    version: int = Field(description="The version number (1, 2, ...).")
    digest: str = Field(description="sha256 of the adapter's files (publishing the same files again is a no-op).")
    base_model: str = Field(description="The base model it adapts.")
    source_run_id: str | None = Field(description="The training run that made it, if any.")
    info: dict[str, Any] = Field(description="What its publisher recorded (rank, algorithm, metrics, ...).")
    created_at: datetime = Field(description="When it was published.")


class AdapterVersionList(BaseModel):
    """Adapter versions, newest first per name."""

    data: list[AdapterVersionOut] = Field(description="The versions.")


class UpstreamOut(BaseModel):
    """An upstream OpenAI-compatible endpoint answering an arm (its API key is never shown)."""

    id: str = Field(description="Upstream id (ups_...); immutable: a change stores a new one.")
    base_url: str = Field(description="The upstream's OpenAI base URL.")
    model: str = Field(description="The model asked upstream.")
    api_key: str = Field(description="Always `set`: the key is stored encrypted and never returned.")
    timeout_s: float = Field(description="Longest wait for the first byte and between two bytes.")
    connect_timeout_s: float = Field(description="Longest wait to connect.")
    max_retries: int = Field(description="Retries of a refused connection, a 429, a 5xx or a timeout.")


class CanaryOut(BaseModel):
    """A canary: another adapter version (or an upstream) served to a share of the users."""

    adapter: AdapterVersionOut | None = Field(description="The canary's adapter version.")
    upstream: UpstreamOut | None = Field(default=None, description="The canary's upstream, when it is one.")
    percent: int = Field(description="Share of users (by a hash of `user`) who get it.")


class ShadowOut(BaseModel):
    """A shadow arm: a share of requests also sent there; its answers are traced, never returned."""

    adapter: AdapterVersionOut | None = Field(description="The shadow's adapter version.")
    upstream: UpstreamOut | None = Field(description="The shadow's upstream, when it is one.")
    percent: int = Field(description="Share of requests (at random) also sent to the shadow.")


class DeploymentOut(BaseModel):
    """A deployment: a name clients call, mapped to a base model, an adapter version and a canary."""

    id: str = Field(description="Deployment id (dep_...).")
    name: str = Field(description="What clients pass as `model`.")
    base_model: str = Field(description="The base model it serves.")
    adapter: AdapterVersionOut | None = Field(description="The adapter version served to everyone; null: the base.")
    canary: CanaryOut | None = Field(description="The canary, if any.")
    upstream: UpstreamOut | None = Field(default=None, description="The upstream answering everyone (instead of "
                                                                   "an adapter), if any.")
    shadow: ShadowOut | None = Field(default=None, description="The shadow arm, if any.")
    prices: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Token prices by model id (minor "
                                              "units per 1,000,000 prompt / completion tokens).")
    revision: int = Field(description="Counts the changes of its state (1 when created).")
    created_at: datetime = Field(description="When it was created.")
    updated_at: datetime = Field(description="When it last changed.")


class DeploymentList(BaseModel):
    """The organisation's deployments."""

    data: list[DeploymentOut] = Field(description="The deployments.")


class DeploymentChangeOut(BaseModel):
    """One change of a deployment's state."""

    revision: int = Field(description="The revision it made.")
    action: str = Field(description="create, update or rollback.")
    state: dict[str, Any] = Field(description="The state it set (base model, adapter and canary version ids).")
    restored_from: int | None = Field(description="For a rollback: the revision whose state it restored.")
    actor: str = Field(description="The key or process that made it.")
    at: datetime = Field(description="When.")


class DeploymentHistory(BaseModel):
    """A deployment's changes, newest first."""

    data: list[DeploymentChangeOut] = Field(description="The changes.")


class RequestCounts(BaseModel):
    """The organisation's requests on this server."""

    in_flight: int = Field(description="Accepted requests not yet finished.")
    completed: int = Field(description="Requests answered in full.")
    failed: int = Field(description="Accepted requests that ended without a full answer.")


class TokenCounts(BaseModel):
    """The organisation's tokens on this server."""

    prompt: int = Field(description="Prompt tokens of the recorded requests.")
    completion: int = Field(description="Tokens generated for them.")
    completion_per_s: float = Field(description="Generated tokens per second over the last window_s.")
    window_s: float = Field(description="The rate's window, in seconds.")


class TraceCounts(BaseModel):
    """The organisation's traces written by this server."""

    written: int = Field(description="Traces committed.")


class ServingStats(BaseModel):
    """This server's figures for the caller's organisation only."""

    model: str | None = Field(description="The base model this server serves (null without one).")
    running: bool = Field(description="Whether this server can generate (has an engine).")
    org_id: str = Field(description="The caller's organisation (the only one counted).")
    since: datetime = Field(description="When this server started counting.")
    requests: RequestCounts
    tokens: TokenCounts
    traces: TraceCounts


@router.get("/deployments", response_model=DeploymentList)
def list_deployments(principal: Viewer, serving: ServingDep) -> DeploymentList:
    """The organisation's deployments."""
    rows = service.list_deployments(serving.database, principal.org_id)
    return DeploymentList(data=[DeploymentOut.model_validate(d) for d in rows])


@router.post("/deployments", status_code=201, response_model=DeploymentOut)
async def create_deployment(body: DeploymentCreate, principal: Member, serving: ServingDep) -> DeploymentOut:
    """Create a deployment: a name mapped to a base model and an optional adapter version (and canary)."""
    out = await asyncio.to_thread(service.create_deployment, serving, principal, body)
    return DeploymentOut.model_validate(out)


@router.get("/deployments/{name}", response_model=DeploymentOut)
def get_deployment(name: str, principal: Viewer, serving: ServingDep) -> DeploymentOut:
    """One deployment."""
    return DeploymentOut.model_validate(service.get_deployment(serving.database, principal.org_id, name))


@router.patch("/deployments/{name}", response_model=DeploymentOut)
async def update_deployment(name: str, body: DeploymentPatch, principal: Member, serving: ServingDep) -> DeploymentOut:
    """Change a deployment's adapter and/or canary; takes effect for the next request, without a restart."""
    out = await asyncio.to_thread(service.update_deployment, serving, principal, name, body)
    return DeploymentOut.model_validate(out)


@router.post("/deployments/{name}/rollback", response_model=DeploymentOut)
async def rollback_deployment(
    name: str, principal: Member, serving: ServingDep, body: RollbackIn | None = None
) -> DeploymentOut:
    """Restore the previous state (or ``to_revision``) as a new revision."""
    to_revision = body.to_revision if body else None
    out = await asyncio.to_thread(service.rollback_deployment, serving, principal, name, to_revision)
    return DeploymentOut.model_validate(out)


@router.get("/deployments/{name}/history", response_model=DeploymentHistory)
def deployment_history(name: str, principal: Viewer, serving: ServingDep) -> DeploymentHistory:
    """Every change of the deployment, newest first."""
    rows = service.deployment_history(serving.database, principal.org_id, name)
    return DeploymentHistory(data=[DeploymentChangeOut.model_validate(c) for c in rows])


@router.get("/adapters", response_model=AdapterVersionList)
def list_adapters(principal: Viewer, serving: ServingDep, name: str | None = None) -> AdapterVersionList:
    """The organisation's adapter versions (of ``name``), newest first per name."""
    rows = service.list_adapters(serving.database, principal.org_id, name)
    return AdapterVersionList(data=[AdapterVersionOut.model_validate(v) for v in rows])


@router.get("/serving/stats", response_model=ServingStats, tags=["serving"])
def serving_stats(principal: Viewer, serving: ServingDep) -> ServingStats:
    """This server's figures for the caller's organisation only: requests, tokens, tokens/s, traces.

    Server-wide load (queue depth, active rows, adapters loaded, other organisations'
    requests) is not shown: it would let one organisation watch another's traffic.
    """
    usage = serving.usage.of(principal.org_id)
    return ServingStats(
        model=serving.base_model, running=serving.can_generate, org_id=principal.org_id, since=usage.since,
        requests=RequestCounts(in_flight=usage.in_flight, completed=usage.completed, failed=usage.failed),
        tokens=TokenCounts(prompt=usage.prompt_tokens, completion=usage.completion_tokens,
                           completion_per_s=usage.completion_tokens_per_s, window_s=usage.window_s),
        traces=TraceCounts(written=usage.traces_written),
    )


__all__ = [
    "AdapterVersionList",
    "AdapterVersionOut",
    "CanaryOut",
    "DeploymentChangeOut",
    "DeploymentHistory",
    "DeploymentList",
    "DeploymentOut",
    "RequestCounts",
    "ServingStats",
    "TokenCounts",
    "TraceCounts",
    "router",
]

"""The serving REST API under ``/api``: deployments, adapter versions, traces, feedback, stats.

- ``/api/deployments`` (list, create; ``{"run": RUN_ID}`` deploys a completed
  training run's final adapter in one step), ``/api/deployments/{name}`` (get, PATCH),
  ``/api/deployments/{name}/rollback``, ``/api/deployments/{name}/history``.
- ``/api/adapters``: the organisation's adapter versions (``?name=``).
- ``/api/traces`` (filters as query parameters), ``/api/traces/{id}``,
  ``/api/traces/{id}/feedback`` (GET, POST). ``{id}`` is a trace id or a
  completion id (``chatcmpl-tr_...``).
- ``/api/serving/stats``: the caller's organisation's requests (in flight,
  completed, failed), tokens, tokens/s and traces on this server -- never
  server-wide load, which would reveal other organisations' traffic.

Every route is scoped to the caller's organisation; another organisation's
deployment, adapter or trace is a 404 exactly like a missing one. Reads need a
viewer key or higher, writes a member key. A deployment change first loads
the new adapter version on this server's engine (so a version that cannot load
changes nothing), then commits, so the next request is served by it; requests
already running finish on the version they started with. This module knows
HTTP shapes only; the registry lives in ``store``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.chat import Message
from teachloop.core.errors import Conflict, InvalidInput
from teachloop.core.tenancy import Principal
from teachloop.serve.deps import Reader, ServingDep, Writer
from teachloop.serve.service import Serving
from teachloop.store.repos.deployments import AdapterVersions, Deployments, DeploymentState
from teachloop.store.repos.traces import TraceFilter, Traces
from teachloop.store.schema.deployments import AdapterVersion, Deployment, DeploymentChange
from teachloop.store.schema.traces import Feedback, Trace

router = APIRouter(prefix="/api", tags=["serving"])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CanaryIn(_Strict):
    """A canary: an adapter reference served to ``percent`` % of users."""

    adapter: str = Field(min_length=1, description="NAME@N, NAME (newest version) or an av_... id.")
    percent: int = Field(ge=0, le=100, description="Share of users (by a hash of `user`) who get the canary.")


class DeploymentCreate(_Strict):
    """A new deployment."""

    name: str = Field(description="What clients pass as `model`.")
    base_model: str | None = Field(default=None, description="Base model id (default: the one this server serves).")
    adapter: str | None = Field(default=None, description="Adapter reference; null serves the base model alone.")
    run: str | None = Field(default=None, description="A completed training run (run_...): its final adapter is "
                            "published as the next version of the adapter named like the deployment and served.")
    canary: CanaryIn | None = None


class DeploymentPatch(_Strict):
    """A change: fields left out keep their value; ``adapter: null`` serves the base; ``canary: null`` ends it."""

    adapter: str | None = None
    canary: CanaryIn | None = None


class RollbackIn(_Strict):
    """Which state to restore (default: the one before the state in force)."""

    to_revision: int | None = Field(default=None, ge=1)


class CorrectedMessage(_Strict):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class FeedbackIn(_Strict):
    """Feedback on one choice of a trace: at least one of score, label, comment, corrected_output."""

    score: float | None = None
    label: str | None = Field(default=None, min_length=1, max_length=100)
    comment: str | None = Field(default=None, max_length=20_000)
    corrected_output: str | CorrectedMessage | None = Field(
        default=None, description="The reply it should have been: a string, or an assistant message."
    )
    choice_index: int = Field(default=0, ge=0)


# ---------------------------------------------------------------------------------------------- JSON


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _version_json(v: AdapterVersion | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"id": v.id, "ref": v.ref, "name": v.name, "version": v.version, "digest": v.digest,
            "base_model": v.base_model, "source_run_id": v.source_run_id, "info": v.info,
            "created_at": _iso(v.created_at)}


def _deployment_json(d: Deployment, versions: dict[str, AdapterVersion]) -> dict[str, Any]:
    canary = None
    if d.canary_version_id:
        canary = {"adapter": _version_json(versions.get(d.canary_version_id)), "percent": d.canary_percent}
    return {"id": d.id, "name": d.name, "base_model": d.base_model,
            "adapter": _version_json(versions.get(d.adapter_version_id or "")), "canary": canary,
            "revision": d.revision, "created_at": _iso(d.created_at), "updated_at": _iso(d.updated_at)}


def _deployments_json(session: Any, org_id: str, rows: list[Deployment]) -> list[dict[str, Any]]:
    ids = {i for d in rows for i in (d.adapter_version_id, d.canary_version_id) if i}
    versions = AdapterVersions(session).by_ids(org_id, ids)
    return [_deployment_json(d, versions) for d in rows]


def _change_json(c: DeploymentChange) -> dict[str, Any]:
    return {"revision": c.revision, "action": c.action, "state": c.state, "restored_from": c.restored_from,
            "actor": c.actor, "at": _iso(c.at)}


def _feedback_json(f: Feedback) -> dict[str, Any]:
    return {"id": f.id, "trace_id": f.trace_id, "choice_index": f.choice_index, "score": f.score, "label": f.label,
            "comment": f.comment, "corrected_output": f.corrected_output, "author": f.author,
            "created_at": _iso(f.created_at)}


def trace_json(t: Trace, feedback: list[Feedback]) -> dict[str, Any]:
    """A trace as the REST API and ``teachloop traces show`` present it."""
    return {
        "id": t.id, "completion_id": f"chatcmpl-{t.id}", "created_at": _iso(t.created_at), "model": t.model,
        "deployment_id": t.deployment_id, "deployment_revision": t.deployment_revision, "arm": t.arm,
        "adapter_version_id": t.adapter_version_id, "base_model": t.base_model, "messages": t.messages,
        "tools": t.tools, "choices": t.choices, "params": t.params, "finish_reason": t.finish_reason,
        "usage": {"prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                  "total_tokens": t.prompt_tokens + t.completion_tokens},
        "latency_ms": t.latency_ms, "ttft_ms": t.ttft_ms, "stream": t.stream, "user": t.user,
        "metadata": t.request_metadata, "feedback": [_feedback_json(f) for f in feedback],
    }


# ---------------------------------------------------------------------------------------------- deployments


def _versions_for(session: Any, org_id: str, adapter: str | None, canary: CanaryIn | None) -> tuple[
    AdapterVersion | None, AdapterVersion | None
]:
    versions = AdapterVersions(session)
    primary = versions.resolve(org_id, adapter) if adapter is not None else None
    second = versions.resolve(org_id, canary.adapter) if canary is not None else None
    return primary, second


def _apply_change(serving: Serving, principal: Principal, name: str, plan: Any) -> dict[str, Any]:
    """Preload the versions the new state serves, commit the change, resync adapters (runs in a thread)."""
    with serving.database.session(write=False) as session:
        state, versions = plan(session)
    held: list[str] = []
    try:
        if serving.pool is not None and state.base_model == serving.base_model:
            for v in versions:
                held.append(serving.pool.acquire(v.digest, v.blob_key))
        with serving.database.session() as session:
            repo = Deployments(session)
            actor = principal.key_id
            if repo.find(principal.org_id, name) is None:
                row = repo.create(principal.org_id, name, state, actor=actor)
            else:
                row, _ = repo.update(principal.org_id, name, state, actor=actor)
            out = _deployments_json(session, principal.org_id, [row])[0]
        if serving.pool is not None:
            serving.sync_adapters()
        return out
    finally:
        for adapter in held:
            if serving.pool is not None:
                serving.pool.release(adapter)


@router.get("/deployments")
def list_deployments(principal: Reader, serving: ServingDep) -> dict[str, Any]:
    """The organisation's deployments."""
    with serving.database.session(write=False) as session:
        rows = Deployments(session).list(principal.org_id)
        return {"data": _deployments_json(session, principal.org_id, rows)}


@router.post("/deployments", status_code=201)
async def create_deployment(body: DeploymentCreate, principal: Writer, serving: ServingDep) -> dict[str, Any]:
    """Create a deployment: a name mapped to a base model and an optional adapter version (and canary)."""
    base = body.base_model or serving.base_model
    if body.run is not None:
        if body.adapter is not None:
            raise InvalidInput("give adapter or run, not both", param="run")
        version_id, run_base = await asyncio.to_thread(_publish_run, serving, principal, body)
        body = body.model_copy(update={"adapter": version_id})
        base = body.base_model or run_base
    if not base:
        raise InvalidInput("base_model is required: this server serves no model to default to", param="base_model")

    def plan(session: Any) -> tuple[DeploymentState, list[AdapterVersion]]:
        if Deployments(session).find(principal.org_id, body.name) is not None:
            raise Conflict(f"deployment {body.name!r} already exists; use PATCH", param="name")
        primary, canary = _versions_for(session, principal.org_id, body.adapter, body.canary)
        state = DeploymentState(base, primary.id if primary else None, canary.id if canary else None,
                                body.canary.percent if body.canary else 0)
        return state, [v for v in (primary, canary) if v is not None]

    return await asyncio.to_thread(_apply_change, serving, principal, body.name, plan)


def _publish_run(serving: Serving, principal: Principal, body: DeploymentCreate) -> tuple[str, str]:
    """Publish the final adapter of ``body.run`` as adapter ``body.name``: (version id, base model); in a thread."""
    from teachloop.catalog.adapters import publish_run_adapter

    with serving.database.session() as session:
        if Deployments(session).find(principal.org_id, body.name) is not None:
            raise Conflict(f"deployment {body.name!r} already exists; use PATCH", param="name")
        version, _ = publish_run_adapter(session, serving.blobs, principal.org_id, body.run or "", name=body.name,
                                         actor=principal.key_id)
        return version.id, version.base_model


@router.get("/deployments/{name}")
def get_deployment(name: str, principal: Reader, serving: ServingDep) -> dict[str, Any]:
    """One deployment."""
    with serving.database.session(write=False) as session:
        row = Deployments(session).get(principal.org_id, name)
        return _deployments_json(session, principal.org_id, [row])[0]


@router.patch("/deployments/{name}")
async def update_deployment(name: str, body: DeploymentPatch, principal: Writer, serving: ServingDep) -> dict[str, Any]:
    """Change a deployment's adapter and/or canary; takes effect for the next request, without a restart."""
    given = body.model_fields_set
    if not given:
        raise InvalidInput("nothing to change: send adapter and/or canary", param="adapter")

    def plan(session: Any) -> tuple[DeploymentState, list[AdapterVersion]]:
        row = Deployments(session).get(principal.org_id, name)
        current = DeploymentState.of(row)
        versions = AdapterVersions(session)
        primary_id, canary_id, percent = current.adapter_version_id, current.canary_version_id, current.canary_percent
        if "adapter" in given:
            primary_id = versions.resolve(principal.org_id, body.adapter).id if body.adapter else None
        if "canary" in given:
            if body.canary is None:
                canary_id, percent = None, 0
            else:
                canary_id, percent = versions.resolve(principal.org_id, body.canary.adapter).id, body.canary.percent
        state = DeploymentState(current.base_model, primary_id, canary_id, percent)
        loaded = versions.by_ids(principal.org_id, {i for i in (primary_id, canary_id) if i})
        return state, list(loaded.values())

    return await asyncio.to_thread(_apply_change, serving, principal, name, plan)


@router.post("/deployments/{name}/rollback")
async def rollback_deployment(
    name: str, principal: Writer, serving: ServingDep, body: RollbackIn | None = None
) -> dict[str, Any]:
    """Restore the previous state (or ``to_revision``) as a new revision."""

    def run() -> dict[str, Any]:
        with serving.database.session() as session:
            row = Deployments(session).rollback(
                principal.org_id, name, to_revision=body.to_revision if body else None, actor=principal.key_id
            )
            out = _deployments_json(session, principal.org_id, [row])[0]
        serving.sync_adapters()
        return out

    return await asyncio.to_thread(run)


@router.get("/deployments/{name}/history")
def deployment_history(name: str, principal: Reader, serving: ServingDep) -> dict[str, Any]:
    """Every change of the deployment, newest first."""
    with serving.database.session(write=False) as session:
        return {"data": [_change_json(c) for c in Deployments(session).history(principal.org_id, name)]}


@router.get("/adapters")
def list_adapters(principal: Reader, serving: ServingDep, name: str | None = None) -> dict[str, Any]:
    """The organisation's adapter versions (of ``name``), newest first per name."""
    with serving.database.session(write=False) as session:
        return {"data": [_version_json(v) for v in AdapterVersions(session).list(principal.org_id, name)]}


# ---------------------------------------------------------------------------------------------- traces


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get("/traces")
def list_traces(
    principal: Reader,
    serving: ServingDep,
    model: str | None = Query(None, description="Deployment name or base model id the client asked for."),
    since: datetime | None = Query(None, description="Created at or after (ISO 8601; UTC if no zone)."),
    until: datetime | None = Query(None, description="Created before."),
    has_feedback: bool | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    label: str | None = None,
    has_correction: bool | None = None,
    user: str | None = None,
    adapter_version_id: str | None = None,
    arm: str | None = None,
    metadata: Annotated[list[str] | None, Query(description="key=value, repeatable; all must match.")] = None,
    before: str | None = Query(None, description="Only traces older than this trace id (paging)."),
    limit: int = Query(50, ge=1, le=1000),
) -> dict[str, Any]:
    """The organisation's traces, newest first."""
    pairs: dict[str, str] = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"metadata filters read key=value, got {item!r}", param="metadata")
        pairs[key] = value
    filt = TraceFilter(
        model=model, since=_aware(since), until=_aware(until), has_feedback=has_feedback, min_score=min_score,
        max_score=max_score, label=label, has_correction=has_correction, user=user,
        adapter_version_id=adapter_version_id, arm=arm, metadata=pairs, before=before, limit=limit,
    )
    with serving.database.session(write=False) as session:
        repo = Traces(session)
        rows = repo.list(principal.org_id, filt)
        feedback = repo.feedback(principal.org_id, [t.id for t in rows])
        data = [trace_json(t, feedback[t.id]) for t in rows]
    return {"data": data, "next_before": data[-1]["id"] if len(data) == limit else None}


@router.get("/traces/{trace_id}")
def get_trace(trace_id: str, principal: Reader, serving: ServingDep) -> dict[str, Any]:
    """One trace with its feedback."""
    with serving.database.session(write=False) as session:
        repo = Traces(session)
        row = repo.get(principal.org_id, trace_id)
        return trace_json(row, repo.feedback(principal.org_id, [row.id])[row.id])


@router.get("/traces/{trace_id}/feedback")
def list_feedback(trace_id: str, principal: Reader, serving: ServingDep) -> dict[str, Any]:
    """The feedback on one trace, oldest first."""
    with serving.database.session(write=False) as session:
        repo = Traces(session)
        row = repo.get(principal.org_id, trace_id)
        return {"data": [_feedback_json(f) for f in repo.feedback(principal.org_id, [row.id])[row.id]]}


@router.post("/traces/{trace_id}/feedback", status_code=201)
async def add_feedback(trace_id: str, body: FeedbackIn, principal: Writer, serving: ServingDep) -> JSONResponse:
    """Record a score, label, comment and/or corrected output on one choice of a trace."""
    corrected = None
    if isinstance(body.corrected_output, str):
        corrected = Message(role="assistant", content=body.corrected_output).to_openai()
    elif body.corrected_output is not None:
        if body.corrected_output.role != "assistant":
            raise InvalidInput("corrected_output must be an assistant message", param="corrected_output.role")
        corrected = body.corrected_output.model_dump(exclude_none=True)

    def write() -> dict[str, Any]:
        with serving.database.session() as session:
            row = Traces(session).add_feedback(
                principal.org_id, trace_id, score=body.score, label=body.label, comment=body.comment,
                corrected_output=corrected, choice_index=body.choice_index, author=principal.user_id or principal.key_id,
            )
            return _feedback_json(row)

    return JSONResponse(await asyncio.to_thread(write), status_code=201)


# ---------------------------------------------------------------------------------------------- stats


@router.get("/serving/stats")
def serving_stats(principal: Reader, serving: ServingDep) -> dict[str, Any]:
    """This server's figures for the caller's organisation only: requests, tokens, tokens/s, traces.

    Server-wide load (queue depth, active rows, adapters loaded, other organisations'
    requests) is not shown: it would let one organisation watch another's traffic.
    """
    usage = serving.usage.of(principal.org_id)
    return {
        "model": serving.base_model,
        "running": serving.can_generate,
        "org_id": principal.org_id,
        "since": _iso(usage.since),
        "requests": {"in_flight": usage.in_flight, "completed": usage.completed, "failed": usage.failed},
        "tokens": {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens,
                   "completion_per_s": usage.completion_tokens_per_s, "window_s": usage.window_s},
        "traces": {"written": usage.traces_written},
    }


__all__ = ["router", "trace_json"]

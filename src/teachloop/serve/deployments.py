"""Deployment operations the REST API and the console share: list, create, change, roll back, history.

A deployment maps a name (what clients pass as ``model``) to a base model, an
optional adapter version and an optional canary. Every call is scoped to an
organisation: another organisation's deployment or adapter is a ``NotFound``
exactly like a missing one. A change first loads the new adapter versions on
this server's engine (so a version that cannot load changes nothing), then
commits, then resyncs the engine's adapters, so the next request is served by
the new state; requests already running finish on the version they started
with. ``create_deployment`` with ``run`` publishes a completed training run's
final adapter as the next version of the adapter named like the deployment and
serves it, in one step.

An arm may be an **upstream** OpenAI-compatible endpoint instead of an adapter
(``upstream`` for the primary arm, ``canary.upstream``, ``shadow.upstream``;
issue 17): each is probed first (``serve.upstream.probe``: a model the upstream
answers 404 for is refused naming ``upstream.model``) and stored as a new
immutable row with its key encrypted; the views show ``api_key: "set"``, never
the key. ``shadow`` sends ``percent`` % of requests to a second arm in the
background; ``prices`` prices each model's tokens (``core.upstream.ModelPrice``).

The ``*_json`` views are the records as the API and the CLI present them.
Blocking (database and engine work): call from a thread on an event loop. The
registry itself lives in ``store.repos.deployments``; knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from teachloop.core.errors import Conflict, InvalidInput
from teachloop.core.tenancy import Principal
from teachloop.core.upstream import ModelPrice, UpstreamSpec
from teachloop.serve.service import Serving
from teachloop.serve.upstream import probe, register_upstream, upstream_json
from teachloop.store.db import Database
from teachloop.store.repos.deployments import AdapterVersions, Deployments, DeploymentState
from teachloop.store.schema.deployments import AdapterVersion, Deployment, DeploymentChange, UpstreamEndpoint


class _Strict(BaseModel):
    """Unknown fields and wrong types are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CanaryIn(_Strict):
    """A canary: an adapter reference (or an upstream) served to ``percent`` % of users."""

    adapter: str | None = Field(default=None, min_length=1, description="NAME@N, NAME (newest version) or an av_... id.")
    upstream: UpstreamSpec | None = Field(default=None, description="An upstream endpoint as the canary arm.")
    percent: int = Field(ge=0, le=100, description="Share of users (by a hash of `user`) who get the canary.")

    @model_validator(mode="after")
    def _one_arm(self) -> CanaryIn:
        if (self.adapter is None) == (self.upstream is None):
            raise ValueError("give the canary an adapter or an upstream (exactly one)")
        return self


class ShadowIn(_Strict):
    """A shadow arm: ``percent`` % of requests also go there; only the primary's answer is returned."""

    adapter: str | None = Field(default=None, min_length=1, description="NAME@N, NAME or an av_... id.")
    upstream: UpstreamSpec | None = Field(default=None, description="An upstream endpoint as the shadow arm.")
    percent: int = Field(ge=0, le=100, description="Share of requests (at random) also sent to the shadow.")

    @model_validator(mode="after")
    def _one_arm(self) -> ShadowIn:
        if (self.adapter is None) == (self.upstream is None):
            raise ValueError("give the shadow an adapter or an upstream (exactly one)")
        return self


class DeploymentCreate(_Strict):
    """A new deployment."""

    name: str = Field(description="What clients pass as `model`.")
    base_model: str | None = Field(default=None, description="Base model id (default: the one this server serves).")
    adapter: str | None = Field(default=None, description="Adapter reference; null serves the base model alone.")
    run: str | None = Field(default=None, description="A completed training run (run_...): its final adapter is "
                            "published as the next version of the adapter named like the deployment and served.")
    canary: CanaryIn | None = None
    upstream: UpstreamSpec | None = Field(default=None, description="An upstream endpoint as the primary arm "
                                                                    "(instead of an adapter).")
    shadow: ShadowIn | None = Field(default=None, description="A shadow arm and its share of requests.")
    prices: dict[str, ModelPrice] | None = Field(default=None, description="Model id (upstream model, adapter "
                                                 "NAME@N or NAME, base model) -> its token prices.")
    check_upstream: bool = Field(default=True, description="Probe each upstream (GET BASE/models/MODEL) first.")


class DeploymentPatch(_Strict):
    """A change: fields left out keep their value; ``adapter: null`` serves the base; ``canary: null`` ends it."""

    adapter: str | None = Field(default=None, description="Adapter reference; null serves the base model alone.")
    canary: CanaryIn | None = Field(default=None, description="The canary; null ends it.")
    upstream: UpstreamSpec | None = Field(default=None, description="An upstream as the primary arm (replaces the "
                                                                    "adapter); null serves the adapter (or base).")
    shadow: ShadowIn | None = Field(default=None, description="The shadow arm; null ends it.")
    prices: dict[str, ModelPrice] | None = Field(default=None, description="Token prices by model id (replaced).")
    check_upstream: bool = Field(default=True, description="Probe each upstream (GET BASE/models/MODEL) first.")


class RollbackIn(_Strict):
    """Which state to restore (default: the one before the state in force)."""

    to_revision: int | None = Field(default=None, ge=1, description="The revision whose state to restore.")


Plan = Callable[[Any], tuple[DeploymentState, list[AdapterVersion]]]


# ---------------------------------------------------------------------------------------------- JSON


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def version_json(v: AdapterVersion | None) -> dict[str, Any] | None:
    """An adapter version's record (None for None)."""
    if v is None:
        return None
    return {"id": v.id, "ref": v.ref, "name": v.name, "version": v.version, "digest": v.digest,
            "base_model": v.base_model, "source_run_id": v.source_run_id, "info": v.info,
            "created_at": _iso(v.created_at)}


def deployment_json(d: Deployment, versions: dict[str, AdapterVersion],
                    upstreams: dict[str, UpstreamEndpoint] | None = None) -> dict[str, Any]:
    """A deployment with its adapter, canary and shadow arms (``versions`` and ``upstreams`` map ids to rows).

    An upstream shows its URL, model and limits and ``api_key: "set"``, never the key.
    """
    ups = upstreams or {}
    canary = None
    if d.canary_version_id or d.canary_upstream_id:
        canary = {"adapter": version_json(versions.get(d.canary_version_id or "")),
                  "upstream": upstream_json(ups.get(d.canary_upstream_id or "")), "percent": d.canary_percent}
    shadow = None
    if d.shadow_version_id or d.shadow_upstream_id:
        shadow = {"adapter": version_json(versions.get(d.shadow_version_id or "")),
                  "upstream": upstream_json(ups.get(d.shadow_upstream_id or "")), "percent": d.shadow_percent}
    return {"id": d.id, "name": d.name, "base_model": d.base_model,
            "adapter": version_json(versions.get(d.adapter_version_id or "")),
            "upstream": upstream_json(ups.get(d.upstream_id or "")), "canary": canary, "shadow": shadow,
            "prices": dict(d.prices or {}),
            "revision": d.revision, "created_at": _iso(d.created_at), "updated_at": _iso(d.updated_at)}


def _deployments_json(session: Any, org_id: str, rows: list[Deployment]) -> list[dict[str, Any]]:
    ids = {i for d in rows for i in (d.adapter_version_id, d.canary_version_id, d.shadow_version_id) if i}
    versions = AdapterVersions(session).by_ids(org_id, ids)
    up_ids = {i for d in rows for i in (d.upstream_id, d.canary_upstream_id, d.shadow_upstream_id) if i}
    upstreams = {u.id: u for u in (session.get(UpstreamEndpoint, i) for i in up_ids)
                 if u is not None and u.org_id == org_id}
    return [deployment_json(d, versions, upstreams) for d in rows]


def change_json(c: DeploymentChange) -> dict[str, Any]:
    """One change of a deployment."""
    return {"revision": c.revision, "action": c.action, "state": c.state, "restored_from": c.restored_from,
            "actor": c.actor, "at": _iso(c.at)}


# ---------------------------------------------------------------------------------------------- reads


def list_deployments(database: Database, org_id: str) -> list[dict[str, Any]]:
    """The organisation's deployments."""
    with database.session(write=False) as session:
        return _deployments_json(session, org_id, Deployments(session).list(org_id))


def get_deployment(database: Database, org_id: str, name: str) -> dict[str, Any]:
    """One deployment; ``NotFound`` when the organisation has none of that name."""
    with database.session(write=False) as session:
        return _deployments_json(session, org_id, [Deployments(session).get(org_id, name)])[0]


def deployment_history(database: Database, org_id: str, name: str) -> list[dict[str, Any]]:
    """Every change of the deployment, newest first."""
    with database.session(write=False) as session:
        return [change_json(c) for c in Deployments(session).history(org_id, name)]


def list_adapters(database: Database, org_id: str, name: str | None = None) -> list[dict[str, Any]]:
    """The organisation's adapter versions (of ``name``), newest first per name."""
    with database.session(write=False) as session:
        return [v for v in (version_json(a) for a in AdapterVersions(session).list(org_id, name)) if v is not None]


# ---------------------------------------------------------------------------------------------- changes


def _upstream_specs(body: DeploymentCreate | DeploymentPatch) -> dict[str, UpstreamSpec]:
    """State field -> the upstream ``body`` configures there; each probed first (``check_upstream``)."""
    specs: dict[str, UpstreamSpec] = {}
    if body.upstream is not None:
        specs["upstream_id"] = body.upstream
    if body.canary is not None and body.canary.upstream is not None:
        specs["canary_upstream_id"] = body.canary.upstream
    if body.shadow is not None and body.shadow.upstream is not None:
        specs["shadow_upstream_id"] = body.shadow.upstream
    params = {"upstream_id": "upstream", "canary_upstream_id": "canary.upstream",
              "shadow_upstream_id": "shadow.upstream"}
    if body.check_upstream:
        for state_field, spec in specs.items():
            probe(spec, params[state_field])
    return specs


def _prices(prices: dict[str, ModelPrice] | None) -> dict[str, Any]:
    return {k: v.model_dump() for k, v in (prices or {}).items()}


def _apply_change(serving: Serving, principal: Principal, name: str, plan: Plan,
                  upstreams: dict[str, UpstreamSpec] | None = None) -> dict[str, Any]:
    """Preload the versions the new state serves, store new upstreams, commit the change, resync adapters."""
    keys = serving.keybox() if upstreams else None  # no Fernet key: refused before anything is written
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
            if upstreams and keys is not None:
                ids: dict[str, Any] = {f: register_upstream(session, keys, principal.org_id, spec, actor=actor, check=False).id
                       for f, spec in upstreams.items()}
                state = replace(state, **ids)
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


def _publish_run(serving: Serving, principal: Principal, body: DeploymentCreate) -> tuple[str, str]:
    """Publish the final adapter of ``body.run`` as adapter ``body.name``: (version id, base model)."""
    from teachloop.catalog.adapters import publish_run_adapter

    with serving.database.session() as session:
        if Deployments(session).find(principal.org_id, body.name) is not None:
            raise Conflict(f"deployment {body.name!r} already exists; use PATCH", param="name")
        version, _ = publish_run_adapter(session, serving.blobs, principal.org_id, body.run or "", name=body.name,
                                         actor=principal.key_id)
        return version.id, version.base_model


def create_deployment(serving: Serving, principal: Principal, body: DeploymentCreate) -> dict[str, Any]:
    """Create a deployment: a name mapped to a base model and an optional adapter version (and canary)."""
    base = body.base_model or serving.base_model
    if body.upstream is not None and (body.adapter is not None or body.run is not None):
        raise InvalidInput("the primary arm is an adapter (or run) or an upstream, not both", param="upstream")
    upstreams = _upstream_specs(body)
    if body.run is not None:
        if body.adapter is not None:
            raise InvalidInput("give adapter or run, not both", param="run")
        version_id, run_base = _publish_run(serving, principal, body)
        body = body.model_copy(update={"adapter": version_id})
        base = body.base_model or run_base
    if not base:
        raise InvalidInput("base_model is required: this server serves no model to default to", param="base_model")

    def plan(session: Any) -> tuple[DeploymentState, list[AdapterVersion]]:
        if Deployments(session).find(principal.org_id, body.name) is not None:
            raise Conflict(f"deployment {body.name!r} already exists; use PATCH", param="name")
        versions = AdapterVersions(session)
        primary = versions.resolve(principal.org_id, body.adapter) if body.adapter is not None else None
        canary = versions.resolve(principal.org_id, body.canary.adapter) if body.canary and body.canary.adapter else None
        shadow = versions.resolve(principal.org_id, body.shadow.adapter) if body.shadow and body.shadow.adapter else None
        state = DeploymentState(base, primary.id if primary else None, canary.id if canary else None,
                                body.canary.percent if body.canary else 0, shadow_version_id=shadow.id if shadow else None,
                                shadow_percent=body.shadow.percent if body.shadow else 0, prices=_prices(body.prices))
        return state, [v for v in (primary, canary, shadow) if v is not None]

    return _apply_change(serving, principal, body.name, plan, upstreams)


def update_deployment(serving: Serving, principal: Principal, name: str, body: DeploymentPatch) -> dict[str, Any]:
    """Change a deployment's adapter and/or canary (the fields ``body`` sets)."""
    given = body.model_fields_set - {"check_upstream"}
    if not given:
        raise InvalidInput("nothing to change: send adapter, upstream, canary, shadow and/or prices", param="adapter")
    if "adapter" in given and body.adapter is not None and body.upstream is not None:
        raise InvalidInput("the primary arm is an adapter or an upstream, not both", param="upstream")
    upstreams = _upstream_specs(body)

    def plan(session: Any) -> tuple[DeploymentState, list[AdapterVersion]]:
        row = Deployments(session).get(principal.org_id, name)
        current = DeploymentState.of(row)
        versions = AdapterVersions(session)
        state = current
        if "adapter" in given:
            state = replace(state, upstream_id=None,
                            adapter_version_id=versions.resolve(principal.org_id, body.adapter).id if body.adapter else None)
        if "upstream" in given:  # a new upstream's id is filled in when it is stored; null: back to the adapter
            state = replace(state, upstream_id=None if body.upstream is None else current.upstream_id)
            if body.upstream is not None:
                state = replace(state, adapter_version_id=None)
        if "canary" in given:
            if body.canary is None:
                state = replace(state, canary_version_id=None, canary_upstream_id=None, canary_percent=0)
            else:
                cid = versions.resolve(principal.org_id, body.canary.adapter).id if body.canary.adapter else None
                state = replace(state, canary_version_id=cid, canary_upstream_id=None, canary_percent=body.canary.percent)
        if "shadow" in given:
            if body.shadow is None:
                state = replace(state, shadow_version_id=None, shadow_upstream_id=None, shadow_percent=0)
            else:
                sid = versions.resolve(principal.org_id, body.shadow.adapter).id if body.shadow.adapter else None
                state = replace(state, shadow_version_id=sid, shadow_upstream_id=None, shadow_percent=body.shadow.percent)
        if "prices" in given:
            state = replace(state, prices=_prices(body.prices))
        wanted = {i for i in (state.adapter_version_id, state.canary_version_id, state.shadow_version_id) if i}
        loaded = versions.by_ids(principal.org_id, wanted)
        return state, list(loaded.values())

    return _apply_change(serving, principal, name, plan, upstreams)


def rollback_deployment(serving: Serving, principal: Principal, name: str, to_revision: int | None) -> dict[str, Any]:
    """Restore the previous state (or ``to_revision``'s) as a new revision."""
    with serving.database.session() as session:
        row = Deployments(session).rollback(principal.org_id, name, to_revision=to_revision, actor=principal.key_id)
        out = _deployments_json(session, principal.org_id, [row])[0]
    serving.sync_adapters()
    return out


__all__ = [
    "CanaryIn",
    "DeploymentCreate",
    "DeploymentPatch",
    "RollbackIn",
    "ShadowIn",
    "change_json",
    "create_deployment",
    "deployment_history",
    "deployment_json",
    "get_deployment",
    "list_adapters",
    "list_deployments",
    "rollback_deployment",
    "update_deployment",
    "version_json",
]

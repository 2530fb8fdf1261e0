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

The ``*_json`` views are the records as the API and the CLI present them.
Blocking (database and engine work): call from a thread on an event loop. The
registry itself lives in ``store.repos.deployments``; knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.errors import Conflict, InvalidInput
from teachloop.core.tenancy import Principal
from teachloop.serve.service import Serving
from teachloop.store.db import Database
from teachloop.store.repos.deployments import AdapterVersions, Deployments, DeploymentState
from teachloop.store.schema.deployments import AdapterVersion, Deployment, DeploymentChange


class _Strict(BaseModel):
    """Unknown fields and wrong types are refused (400 naming the field)."""

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

    adapter: str | None = Field(default=None, description="Adapter reference; null serves the base model alone.")
    canary: CanaryIn | None = Field(default=None, description="The canary; null ends it.")


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


def deployment_json(d: Deployment, versions: dict[str, AdapterVersion]) -> dict[str, Any]:
    """A deployment with its adapter and canary versions (``versions`` maps their ids to rows)."""
    canary = None
    if d.canary_version_id:
        canary = {"adapter": version_json(versions.get(d.canary_version_id)), "percent": d.canary_percent}
    return {"id": d.id, "name": d.name, "base_model": d.base_model,
            "adapter": version_json(versions.get(d.adapter_version_id or "")), "canary": canary,
            "revision": d.revision, "created_at": _iso(d.created_at), "updated_at": _iso(d.updated_at)}


def _deployments_json(session: Any, org_id: str, rows: list[Deployment]) -> list[dict[str, Any]]:
    ids = {i for d in rows for i in (d.adapter_version_id, d.canary_version_id) if i}
    versions = AdapterVersions(session).by_ids(org_id, ids)
    return [deployment_json(d, versions) for d in rows]


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


def _versions_for(session: Any, org_id: str, adapter: str | None, canary: CanaryIn | None) -> tuple[
    AdapterVersion | None, AdapterVersion | None
]:
    versions = AdapterVersions(session)
    primary = versions.resolve(org_id, adapter) if adapter is not None else None
    second = versions.resolve(org_id, canary.adapter) if canary is not None else None
    return primary, second


def _apply_change(serving: Serving, principal: Principal, name: str, plan: Plan) -> dict[str, Any]:
    """Preload the versions the new state serves, commit the change, resync adapters."""
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
        primary, canary = _versions_for(session, principal.org_id, body.adapter, body.canary)
        state = DeploymentState(base, primary.id if primary else None, canary.id if canary else None,
                                body.canary.percent if body.canary else 0)
        return state, [v for v in (primary, canary) if v is not None]

    return _apply_change(serving, principal, body.name, plan)


def update_deployment(serving: Serving, principal: Principal, name: str, body: DeploymentPatch) -> dict[str, Any]:
    """Change a deployment's adapter and/or canary (the fields ``body`` sets)."""
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

    return _apply_change(serving, principal, name, plan)


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

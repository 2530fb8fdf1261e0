"""Loop operations shared by the CLI, the REST API and the worker: configure, read, enqueue.

* ``configure_loop`` validates a config (shape, then every reference against
  the store) and stores it as the deployment's loop -- all or nothing: a bad
  config changes nothing.
* ``loop_json`` / ``iteration_json`` / ``status`` / ``history`` present a
  loop and its iterations: the data used (dataset and digest, counts), the
  run, the baseline, the gate's figures and the decision with its reason, the
  canary. An arm is named ``NAME@N`` (an adapter version), ``upstream:MODEL``
  (an upstream, the gate record's word; ``arm_name``) or ``base``; an
  iteration's baseline is the primary arm at the revision it started from
  (``primaries_at``, from the deployment's change rows).
* ``set_enabled`` pauses or resumes a loop; ``enqueue_tick`` queues a ``loop``
  job for the worker (one tick; the handler queues the next), ``request_tick``
  does so for an existing loop only.
* ``configure_deployment_loop`` is ``configure_loop`` for a config addressed to
  one deployment (``PUT /api/loops/{deployment}``): the config's own
  ``deployment``, if any, must agree.

Every call is scoped to an organisation. Knows nothing of HTTP or engines.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.loop.config import LoopConfig, check_references, validate_loop_config
from teachloop.loop.distill import iteration_figures
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.queue import JobQueue
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.deployments import AdapterVersions, Deployments
from teachloop.store.repos.loops import Loops, revisions_of
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.datasets import Dataset
from teachloop.store.schema.loops import Loop, LoopIteration
from teachloop.store.schema.runs import TrainingRun

JOB_KIND = "loop"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def configure_loop(database: Database, blobs: BlobStore, org_id: str, raw: dict[str, Any], *, cache: Path,
                   actor: str = "system") -> tuple[dict[str, Any], bool]:
    """Validate ``raw`` and store it as its deployment's loop; returns (loop JSON, created)."""
    cfg = validate_loop_config(raw)
    with database.session() as s:
        refs = check_references(cfg, s, blobs=blobs, org_id=org_id, cache=cache)
        loop, created = Loops(s).configure(org_id, refs.deployment.id, cfg.to_dict(), cfg.digest,
                                           enabled=cfg.enabled, actor=actor)
        return loop_json(loop, cfg.deployment), created


def configure_deployment_loop(database: Database, blobs: BlobStore, org_id: str, deployment: str,
                              raw: dict[str, Any], *, cache: Path, actor: str = "system") -> tuple[dict[str, Any], bool]:
    """``configure_loop`` of ``raw`` as the loop of ``deployment``; ``InvalidInput`` when ``raw`` names another."""
    given = raw.get("deployment", deployment)
    if given != deployment:
        raise InvalidInput(f"config field deployment: {given!r} does not match the path's {deployment!r}",
                           param="deployment")
    return configure_loop(database, blobs, org_id, {**raw, "deployment": deployment}, cache=cache, actor=actor)


def find_loop(session: Any, org_id: str, deployment: str) -> Loop:
    """The loop of ``deployment``; ``NotFound`` when the deployment or its loop is missing."""
    dep = Deployments(session).get(org_id, deployment)
    loop = Loops(session).for_deployment(org_id, dep.id)
    if loop is None:
        raise NotFound(f"deployment {deployment!r} has no loop; configure one first", param="deployment")
    return loop


def loop_json(loop: Loop, deployment: str) -> dict[str, Any]:
    """A loop as the API and the CLI present it."""
    return {"id": loop.id, "deployment": deployment, "enabled": loop.enabled, "phase": loop.phase,
            "active_iteration_id": loop.active_iteration_id, "config": loop.config, "config_digest": loop.config_digest,
            "cursor": _iso(loop.cursor), "last_tick_at": _iso(loop.last_tick_at), "note": loop.note,
            "created_at": _iso(loop.created_at), "updated_at": _iso(loop.updated_at)}


def arm_name(version_id: str | None, upstream_id: str | None, versions: dict[str, str],
             models: dict[str, str]) -> str | None:
    """An arm as the loop's records name it: the adapter ``NAME@N`` (``versions``: id -> ref) or, for an
    upstream, ``upstream:MODEL`` (``models``: upstream id -> model; the gate record's word); None: no such arm."""
    if upstream_id:
        return f"upstream:{models.get(upstream_id, upstream_id)}"
    if version_id:
        return versions.get(version_id, version_id)
    return None


def primaries_at(session: Any, org_id: str, deployment_id: str, revisions: set[int]) -> dict[int, str]:
    """The primary arm (``arm_name``, else ``base``) at each of ``revisions`` of a deployment, read from its
    append-only change rows (``Deployments.states_at``); a revision without a row is left out."""
    repo = Deployments(session)
    states = repo.states_at(org_id, deployment_id, revisions)
    ids = {s.adapter_version_id for s in states.values() if s.adapter_version_id}
    versions = {v.id: v.ref for v in AdapterVersions(session).by_ids(org_id, ids).values()}
    up_ids = {s.upstream_id for s in states.values() if s.upstream_id}
    models = {u.id: u.model for u in repo.upstreams(org_id, up_ids).values()}
    return {revision: arm_name(state.adapter_version_id, state.upstream_id, versions, models) or "base"
            for revision, state in states.items()}


def _baseline(it: LoopIteration, refs: dict[str, str], primaries: dict[int, str]) -> str:
    """What the iteration compared against: the deployed adapter version, else the primary arm at the revision it
    started from (``upstream:MODEL`` or ``base``), else the gate record's ``upstream:MODEL``, else ``base``."""
    if it.baseline_version_id:
        return refs.get(it.baseline_version_id, "base")
    before = revisions_of(it).before
    if before is not None and before in primaries:
        return primaries[before]
    gated = (it.gate or {}).get("baseline")
    return gated if isinstance(gated, str) and gated.startswith("upstream:") else "base"


def iteration_json(it: LoopIteration, *, dataset: Dataset | None = None, run: TrainingRun | None = None,
                   versions: dict[str, str] | None = None, primaries: dict[int, str] | None = None) -> dict[str, Any]:
    """An iteration: data used, run, eval figures, decision and reason, canary.

    ``versions``: adapter version id -> ``NAME@N``; ``primaries``: revision -> the primary arm then
    (``primaries_at``), which names the baseline of an iteration that started on an upstream or the base model.
    """
    refs = versions or {}
    return {
        "id": it.id, "number": it.number, "trigger": it.trigger, "status": it.status, "stage": it.stage,
        "reason": it.reason,
        "dataset": {"id": it.dataset_id, "ref": dataset.ref if dataset else None, "digest": it.dataset_digest,
                    "rows": dataset.row_count if dataset else None} if it.dataset_id else None,
        "counts": it.counts,
        "run": {"id": it.run_id, "status": run.status if run else None, "steps": run.step if run else None,
                "error": run.error if run else None} if it.run_id else None,
        "baseline": _baseline(it, refs, primaries or {}),
        "candidate": refs.get(it.candidate_version_id or "") if it.candidate_version_id else None,
        "plan": it.plan,  # issue 16: where the candidate started, its steps and temperature (loop.lineage)
        "gate": it.gate, "canary": it.canary, "revisions": it.revisions, "train_seconds": it.train_seconds,
        "started_at": _iso(it.started_at), "finished_at": _iso(it.finished_at),
    }


def history(database: Database, org_id: str, deployment: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """Every iteration of the deployment's loop, newest first."""
    with database.session(write=False) as s:
        loop = find_loop(s, org_id, deployment)
        rows = Loops(s).iterations(org_id, loop.id, limit=limit)
        ds = {i: Datasets(s).get(org_id, i) for i in {r.dataset_id for r in rows if r.dataset_id}}
        run_ids = [r.run_id for r in rows if r.run_id]
        runs = {r.id: r for r in s.scalars(select(TrainingRun).where(TrainingRun.id.in_(run_ids)))}
        ids = {i for r in rows for i in (r.baseline_version_id, r.candidate_version_id) if i}
        versions = {v.id: v.ref for v in AdapterVersions(s).by_ids(org_id, ids).values()}
        started = {b for r in rows if not r.baseline_version_id and (b := revisions_of(r).before) is not None}
        primaries = primaries_at(s, org_id, loop.deployment_id, started)
        out = [iteration_json(r, dataset=ds.get(r.dataset_id or ""), run=runs.get(r.run_id or ""), versions=versions,
                              primaries=primaries) for r in rows]
        if any(src.get("kind") == "upstream" for src in (loop.config or {}).get("sources", [])):
            # issue 17: student vs teacher and cost per 1,000 requests over the traffic of each iteration: from
            # the end of the one before (rows are newest first) to its own end (now, while it runs or canaries)
            for k, (item, r) in enumerate(zip(out, rows, strict=True)):
                since = rows[k + 1].finished_at if k + 1 < len(rows) else None
                item["arms"] = iteration_figures(s, org_id, loop.deployment_id, loop.id, since, r.finished_at)
        return out


def status(database: Database, org_id: str, deployment: str) -> dict[str, Any]:
    """The loop, its latest iteration, and the deployment's online figures of the last 24 hours."""
    with database.session(write=False) as s:
        loop = find_loop(s, org_id, deployment)
        dep = Deployments(s).get(org_id, deployment)
        repo = Loops(s)
        since = utc_now() - timedelta(days=1)
        current = repo.online(org_id, loop.id, dep.id, since=since, adapter_version_id=dep.adapter_version_id,
                              arm="primary")
        serving: dict[str, Any] = {"revision": dep.revision, "adapter_version_id": dep.adapter_version_id,
                                   "canary_version_id": dep.canary_version_id, "canary_percent": dep.canary_percent}
        ids = {i for i in (dep.adapter_version_id, dep.canary_version_id) if i}
        versions = {v.id: v.ref for v in AdapterVersions(s).by_ids(org_id, ids).values()}
        up_ids = {i for i in (dep.upstream_id, dep.canary_upstream_id) if i}
        models = {u.id: u.model for u in Deployments(s).upstreams(org_id, up_ids).values()}
        serving["adapter"] = arm_name(dep.adapter_version_id, dep.upstream_id, versions, models) or "base"
        serving["canary"] = arm_name(dep.canary_version_id, dep.canary_upstream_id, versions, models)
        out = loop_json(loop, deployment)
    out["serving"] = serving
    out["online_24h"] = current.to_json()
    latest = history(database, org_id, deployment, limit=1)
    out["latest_iteration"] = latest[0] if latest else None
    return out


def set_enabled(database: Database, org_id: str, deployment: str, enabled: bool) -> dict[str, Any]:
    """Pause (False) or resume (True) a loop."""
    with database.session() as s:
        loop = find_loop(s, org_id, deployment)
        cfg = LoopConfig.model_validate({**loop.config, "enabled": enabled})
        loop = Loops(s).update(org_id, loop.id, enabled=enabled, config=cfg.to_dict(), config_digest=cfg.digest)
        return loop_json(loop, deployment)


def enqueue_tick(queue: JobQueue, org_id: str, deployment: str, *, delay_s: float = 0.0) -> str:
    """Queue one ``loop`` tick of ``deployment`` for the worker; returns the job id."""
    run_after = utc_now() + timedelta(seconds=delay_s) if delay_s > 0 else None
    return queue.enqueue(JOB_KIND, {"deployment": deployment}, org_id, run_after=run_after, max_attempts=1)


def request_tick(database: Database, queue: JobQueue, org_id: str, deployment: str) -> str:
    """Queue one tick of the loop of ``deployment``; ``NotFound`` when it has none. Returns the job id."""
    with database.session(write=False) as s:
        find_loop(s, org_id, deployment)
    return enqueue_tick(queue, org_id, deployment)


__all__ = [
    "JOB_KIND",
    "arm_name",
    "configure_deployment_loop",
    "configure_loop",
    "enqueue_tick",
    "find_loop",
    "history",
    "iteration_json",
    "loop_json",
    "primaries_at",
    "request_tick",
    "set_enabled",
    "status",
]

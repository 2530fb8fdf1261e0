"""Evaluations on the worker: run N tasks of an environment against a base model (plus an adapter).

``submit_eval`` checks an ``EvalRequest`` -- the environment reference is
untrusted (names, ``rg:``, ``vf:``, published versions; never a path), the
adapter version or training run must exist in the caller's organisation --
and queues an ``eval`` job; a refused request queues nothing. ``eval_handler``
resolves the environment pinned by digest, loads the adapter (an adapter
version, or a completed run's final adapter) on the base model from
``models``, runs ``envs.evaluate`` and stores the report in the environment
registry (``EnvironmentRegistry.record_eval``); the job's result is
``{"eval_id", "mean", "ci_low", "ci_high", "n_tasks", "env_digest"}``. The
job is the evaluation's handle while it runs. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teachloop.catalog.envref import meter_env_run, resolve_env
from teachloop.core.api import EvalRequest
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.engine.base import Engine
from teachloop.engine.completer import EngineCompleter
from teachloop.envs.eval import evaluate
from teachloop.envs.registry import untrusted_references
from teachloop.render import Renderer
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.queue import Job, JobQueue
from teachloop.store.repos.deployments import AdapterVersions
from teachloop.store.repos.environments import EnvironmentRegistry
from teachloop.train.runs import RunStore

#: The job kind that runs an evaluation.
JOB_KIND = "eval"

#: Returns the engine and renderer of a base model (None: the configured one).
ModelProvider = Callable[[str | None], tuple[Engine, Renderer]]


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "~", ".", "\\")) or ref.endswith((".py", ".json", ".jsonl")) or (
        ":" in ref and not ref.startswith(("rg:", "vf:")))


def submit_eval(database: Database, blobs: BlobStore, org_id: str, request: EvalRequest) -> str:
    """Check ``request`` and queue its ``eval`` job; returns the job id (the evaluation's id)."""
    if _looks_like_path(request.env):
        raise InvalidInput(f"env {request.env!r} looks like a path or module:attr; the API takes environment names, "
                           "NAME@VERSION, rg:... or vf:...", param="env")
    with database.session() as session:
        if request.adapter is not None:
            AdapterVersions(session).resolve(org_id, request.adapter)
        if request.run is not None:
            try:
                run = RunStore(database, blobs).get(org_id, request.run, session=session)
            except NotFound:
                raise NotFound(f"run {request.run!r} not found", param="run") from None
            if not run.final_adapter_key:
                raise InvalidInput(f"run {run.id} is {run.status} and has no final adapter yet", param="run")
        return JobQueue(database).enqueue(JOB_KIND, request.model_dump(mode="json"), org_id, max_attempts=1,
                                          session=session)


def _adapter_blob(session: Any, database: Database, blobs: BlobStore, org_id: str,
                  request: EvalRequest) -> tuple[str | None, str]:
    """(blob key of the adapter folder or None, how the model is labelled)."""
    if request.adapter is not None:
        version = AdapterVersions(session).resolve(org_id, request.adapter)
        return version.blob_key, version.ref
    if request.run is not None:
        run = RunStore(database, blobs).get(org_id, request.run, session=session)
        if not run.final_adapter_key:
            raise InvalidInput(f"run {run.id} is {run.status} and has no final adapter", param="run")
        return run.final_adapter_key, f"run {run.id}"
    return None, ""


def eval_handler(database: Database, blobs: BlobStore, env_cache: Path,
                 models: ModelProvider) -> Callable[[Job], dict[str, Any]]:
    """The ``eval`` job handler (see the module docstring)."""

    def handle(job: Job) -> dict[str, Any]:
        request = EvalRequest.model_validate(job.payload)
        org = job.org_id
        with database.session(write=False) as session, untrusted_references():
            resolved = resolve_env(request.env, session=session, blobs=blobs, org_id=org, cache=env_cache,
                                   **request.env_args)
            blob_key, adapter_label = _adapter_blob(session, database, blobs, org, request)
        if resolved.bought:  # a bought environment: one metered run per evaluation, before any compute
            with database.session() as session:
                meter_env_run(session, org, resolved, detail={"eval": job.id})
        engine, renderer = models(request.model)
        base = request.model or "base"
        adapter = None
        try:
            if blob_key is not None:
                with tempfile.TemporaryDirectory(prefix="teachloop-eval-") as tmp:
                    blobs.get_dir(blob_key, Path(tmp) / "adapter")
                    adapter = engine.load_adapter(f"eval:{job.id}", Path(tmp) / "adapter").name
            env = resolved.env
            params = env.sampling.model_copy(update={
                "temperature": request.temperature,
                **({"max_tokens": request.max_tokens} if request.max_tokens else {})})
            label = base + (f" + {adapter_label}" if adapter_label else "")
            report = asyncio.run(evaluate(
                env, EngineCompleter(engine, renderer, adapter=adapter), n=request.n,
                group_size=request.group_size, seed=request.seed, params=params, label=resolved.ref, model=label))
        finally:
            if adapter is not None:
                engine.delete_adapter(adapter)
        report = report.model_copy(update={"metadata": {**report.metadata, "env_digest": resolved.digest}})
        with database.session() as session:
            row = EnvironmentRegistry(session).record_eval(
                org, env_name=resolved.ref if resolved.version is None else resolved.name,
                env_version=resolved.version, env_digest=resolved.digest, model=label,
                report=report.model_dump(mode="json"), actor=f"job:{job.id}")
            return {"eval_id": row.id, "mean": row.mean, "ci_low": row.ci_low, "ci_high": row.ci_high,
                    "n_tasks": row.n_tasks, "env_digest": row.env_digest}

    return handle


__all__ = ["JOB_KIND", "EvalRequest", "ModelProvider", "eval_handler", "submit_eval"]

"""Training runs on the worker: submit, resume and cancel a run; the ``train`` job that executes it.

``submit_run`` validates a config (``InvalidConfig``, HTTP 422, naming the
dotted field -- and then nothing is written), creates the run record in status
``queued`` and enqueues a ``train`` job (payload ``{"run_id": ...}``) in the
same transaction, so a run exists iff its job does. With an idempotency key,
the same key and the same config return the run the first call made; the
same key with another config is ``Conflict``. ``resume_run`` queues a failed or
cancelled run again (it continues from its last checkpoint); ``cancel_run``
cancels a queued run and its job at once, and asks a running one to stop at
its next step boundary.

Configs that come over the API are untrusted: environments resolve as
untrusted references (names, ``rg:``, ``vf:``, published versions; no paths or
``module:attr``), and server-side paths (``data.train``, ``data.eval``, a
``model`` folder) are refused.

``train_handler`` is the job: it loads the run, builds the base model through
``models`` (the app's runtime loader, cached per process), runs ``Trainer``
with a ``should_stop`` that reads the run's status, and returns
``{"run_id", "status", "step"}``. A run cancelled before its job starts is
skipped. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teachloop.core.errors import Conflict, InvalidConfig, InvalidInput, NotFound, TeachloopError
from teachloop.engine.base import Engine
from teachloop.envs.registry import untrusted_references
from teachloop.render import Renderer
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.queue import Job, JobQueue
from teachloop.store.repos.idempotency import IdempotencyKeys, request_digest
from teachloop.train.config import TrainConfig, validate_config
from teachloop.train.runs import FINAL_STATUSES, RunInfo, RunStore
from teachloop.train.trainer import RunCancelled, Trainer, TrainerDeps

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: The job kind that executes a training run.
JOB_KIND = "train"

#: Returns the engine and renderer of a base model (by the name a config gives).
ModelProvider = Callable[[str], tuple[Engine, Renderer]]

_SCOPE = "runs.create"


def _is_path(value: str) -> bool:
    return value.startswith(("/", "~", ".", "\\")) or (len(value) > 1 and value[1] == ":")


def check_api_config(raw: Any, default_model: str | None = None) -> TrainConfig:
    """The ``TrainConfig`` of an API request; ``InvalidConfig`` naming the dotted field otherwise.

    A config without ``model`` trains on ``default_model`` (the server's configured model).
    """
    if not isinstance(raw, dict):
        raise InvalidConfig("config must be a JSON object of the train config's sections", param="config")
    given = raw.get("model")
    if isinstance(given, str) and _is_path(given):
        raise InvalidConfig(f"config field model: {given!r} is a path; the API takes a model name", param="model")
    if given is None and default_model is not None:
        raw = {**raw, "model": default_model}
    try:
        cfg = validate_config(raw)
    except InvalidInput as err:
        raise InvalidConfig(err.message, param=err.param) from None
    if cfg.data is not None:
        field = "data.train"
        raise InvalidConfig(f"config field {field}: SFT and DPO data are files on the server; the API cannot name "
                            "them (train those with `teachloop train` on the server)", param=field)
    return cfg


def submit_run(database: Database, blobs: BlobStore, org_id: str, raw: Any, *, idempotency_key: str | None = None,
               default_model: str | None = None, admit: Callable[[Session, str], None] | None = None,
               ) -> tuple[RunInfo, bool]:
    """Validate ``raw``, create the run (``queued``) and its ``train`` job; returns (run, created).

    ``admit(session, org_id)`` runs in the transaction that would create the run (after an idempotent
    replay is answered) and may refuse it, e.g. with ``QuotaExceeded``; then nothing is stored.
    """
    from sqlalchemy.exc import IntegrityError

    cfg = check_api_config(raw, default_model)
    runs = RunStore(database, blobs)
    digest = request_digest(cfg.to_dict())
    for attempt in range(2):
        try:
            with database.session() as session:
                keys = IdempotencyKeys(session)
                if idempotency_key is not None:
                    existing = keys.seen(org_id, _SCOPE, idempotency_key, digest)
                    if existing is not None:
                        return runs.get(org_id, existing, session=session), False
                if admit is not None:
                    admit(session, org_id)
                run = runs.create(org_id, cfg, {}, status="queued", session=session)
                JobQueue(database).enqueue(JOB_KIND, {"run_id": run.id}, org_id, session=session)
                if idempotency_key is not None:
                    keys.remember(org_id, _SCOPE, idempotency_key, digest, run.id)
                return run, True
        except (IntegrityError, Conflict) as err:
            # two requests raced with one new key (PostgreSQL runs them concurrently): the loser's transaction
            # rolled back whole (the store reports the unique violation as a Conflict); the second attempt
            # finds the winner's key and answers with its run
            raced = isinstance(err, IntegrityError) or isinstance(err.__cause__, IntegrityError)
            if idempotency_key is None or attempt or not raced:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _open_job(queue: JobQueue, org_id: str, run_id: str) -> Job | None:
    for status in ("running", "queued"):
        for job in queue.list(org_id, status=status, kind=JOB_KIND, limit=10_000):
            if job.payload.get("run_id") == run_id:
                return job
    return None


def resume_run(database: Database, blobs: BlobStore, org_id: str, run_id: str) -> RunInfo:
    """Queue a failed or cancelled run again; it continues from its last checkpoint."""
    queue = JobQueue(database)
    runs = RunStore(database, blobs)
    with database.session() as session:
        run = runs.get(org_id, run_id, session=session)
        if run.status not in ("failed", "cancelled"):
            raise Conflict(f"run {run_id} is {run.status}; only a failed or cancelled run can be resumed",
                           param="run_id")
        runs.update(org_id, run_id, session=session, status="queued", error=None, finished_at=None)
        queue.enqueue(JOB_KIND, {"run_id": run_id}, org_id, session=session)
        return runs.get(org_id, run_id, session=session)


def cancel_run(database: Database, blobs: BlobStore, org_id: str, run_id: str, *, actor: str = "system") -> RunInfo:
    """Cancel a queued run (and its job) now; ask a running one to stop at the next step boundary."""
    run = RunStore(database, blobs).request_cancel(org_id, run_id)
    queue = JobQueue(database)
    job = _open_job(queue, org_id, run_id)
    if job is not None and job.status.value == "queued":
        with contextlib.suppress(Conflict):  # a worker claimed it meanwhile: it sees the run's status, skips it
            queue.cancel(org_id, job.id, actor=actor)
    return run


def train_handler(database: Database, blobs: BlobStore, env_cache: Path,
                  models: ModelProvider) -> Callable[[Job], dict[str, Any]]:
    """The ``train`` job handler (see the module docstring)."""

    def handle(job: Job) -> dict[str, Any]:
        run_id = job.payload.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise InvalidInput("a train job needs {'run_id': RUN}", param="run_id")
        runs = RunStore(database, blobs)
        try:
            run = runs.get(job.org_id, run_id)
        except NotFound:
            raise InvalidInput(f"run {run_id!r} no longer exists", param="run_id") from None
        if run.status in ("cancelling", *FINAL_STATUSES):
            if run.status == "cancelling":
                runs.finish(job.org_id, run_id, "cancelled", error="cancelled before it started")
            return {"run_id": run_id, "status": runs.get(job.org_id, run_id).status, "step": run.step}
        cfg = validate_config(run.config)
        try:
            engine, renderer = models(cfg.model)
        except TeachloopError as err:  # no such model here: retrying will not help
            runs.finish(job.org_id, run_id, "failed", error=f"{type(err).__name__}: {err}"[:2000])
            raise InvalidInput(f"run {run_id}: {err.message}", param="model") from None
        deps = TrainerDeps(engine=engine, renderer=renderer, database=database, blobs=blobs, org_id=job.org_id,
                           env_cache=env_cache)
        trainer = Trainer(cfg, deps, should_stop=lambda: runs.cancel_requested(job.org_id, run_id))
        try:
            with untrusted_references():  # a stored config may not name paths or module:attr
                done = asyncio.run(trainer.run(resume=run_id))
        except RunCancelled:
            done = runs.get(job.org_id, run_id)
        except InvalidInput as err:  # bad inputs fail the job at once (the run is marked failed)
            raise InvalidInput(err.message, param=err.param) from None
        except NotFound as err:  # a missing environment will not appear on a retry
            raise InvalidInput(err.message, param=err.param) from None
        return {"run_id": run_id, "status": done.status, "step": done.step}

    return handle


__all__ = ["JOB_KIND", "ModelProvider", "cancel_run", "check_api_config", "resume_run",
           "submit_run", "train_handler"]

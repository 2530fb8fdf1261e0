"""The worker's ``loop`` job: one tick of a deployment's loop, then the next tick queued.

A ``loop`` job's payload is ``{"deployment": NAME}``. The handler runs one
``LoopRunner.tick`` (which may run a whole iteration: snapshot, training,
gate, canary) and, while the loop exists and is enabled, queues the next
tick ``trigger.check_seconds`` later (also after a tick that failed) --
unless one is already queued, so asking twice never starts two chains. The job's result is the tick's
summary. The engine comes from ``engine_provider`` (the app shares the
serving engine, or loads the model once per worker process). Knows nothing
of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from teachloop.core.errors import InvalidInput, TeachloopError
from teachloop.engine.base import Engine
from teachloop.loop.runner import LoopRunner
from teachloop.loop.service import JOB_KIND, enqueue_tick, find_loop
from teachloop.loop.training import TrainDeps
from teachloop.render import Renderer
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.queue import Job, JobQueue

#: Returns (engine, its renderer, the base model id it runs).
EngineProvider = Callable[[], tuple[Engine, Renderer, str]]


def _queued(queue: JobQueue, org_id: str, deployment: str) -> bool:
    return any(j.payload.get("deployment") == deployment for j in queue.list(org_id, status="queued", kind=JOB_KIND))


def loop_handler(database: Database, blobs: BlobStore, queue: JobQueue, env_cache: Path,
                 engine_provider: EngineProvider) -> Callable[[Job], dict[str, Any]]:
    """The ``loop`` job handler (see the module docstring)."""

    def handle(job: Job) -> dict[str, Any]:
        deployment = job.payload.get("deployment")
        if not isinstance(deployment, str) or not deployment:
            raise InvalidInput("a loop job needs {'deployment': NAME}", param="deployment")
        engine, renderer, base_model = engine_provider()
        runner = LoopRunner(TrainDeps(engine, renderer, database, blobs, job.org_id, env_cache, base_model), deployment)
        result: dict[str, Any] = {}
        try:
            result = asdict(asyncio.run(runner.tick()))
        finally:  # a failed tick is the job's error; the chain goes on either way
            try:
                with database.session(write=False) as s:
                    enabled = find_loop(s, job.org_id, deployment).enabled
            except TeachloopError:
                enabled = False
            if enabled and not _queued(queue, job.org_id, deployment):
                result["next_job_id"] = enqueue_tick(queue, job.org_id, deployment, delay_s=runner.check_seconds)
        return result

    return handle


__all__ = ["EngineProvider", "loop_handler"]

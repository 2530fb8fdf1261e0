"""The job handlers a worker runs, assembled from the dependencies.

``job_handlers(deps)`` maps each job kind to its handler: ``echo`` (returns
its payload; a smoke test for a deployment's workers) and ``loop`` (one tick
of a deployment's loop, ``loop.jobs``). The loop trains and evaluates on
``deps.engine`` when the process serves the model (``teachloop up``), else it
loads the configured model once, on the first loop job of the process.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from teachloop.app.deps import AppDeps
from teachloop.store.queue import Job
from teachloop.store.worker import Handler

if TYPE_CHECKING:
    from teachloop.engine.base import Engine
    from teachloop.render import Renderer


def _echo(job: Job) -> dict[str, Any]:
    return {"echo": job.payload}


def _engine_provider(deps: AppDeps) -> Any:
    lock = threading.Lock()
    cached: list[tuple[Engine, Renderer, str]] = []

    def provide() -> tuple[Engine, Renderer, str]:
        with lock:
            if not cached:
                serving = deps.serving
                if deps.engine is not None and serving is not None and serving.renderer is not None:
                    cached.append((deps.engine, serving.renderer, serving.base_model or deps.settings.model))
                else:
                    from teachloop.engine.models import resolve_model
                    from teachloop.engine.torch_engine import TorchEngine
                    from teachloop.render import Renderer

                    path = resolve_model(deps.settings, deps.settings.model, download=False)
                    engine = TorchEngine(path, device=deps.settings.device)
                    deps.engine = engine
                    cached.append((engine, Renderer.from_pretrained(path), deps.settings.model))
            return cached[0]

    return provide


def job_handlers(deps: AppDeps) -> dict[str, Handler]:
    """Every job kind this installation can run, with its handler."""
    from teachloop.loop.jobs import loop_handler
    from teachloop.loop.service import JOB_KIND

    loop = loop_handler(deps.database, deps.blobs, deps.queue, deps.settings.home / "envs", _engine_provider(deps))
    return {"echo": _echo, JOB_KIND: loop}


__all__ = ["job_handlers"]

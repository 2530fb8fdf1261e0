"""The job handlers a worker runs, assembled from the dependencies.

``job_handlers(deps)`` maps each job kind to its handler: ``echo`` (returns
its payload; a smoke test for a deployment's workers), ``loop`` (one tick of
a deployment's loop, ``loop.jobs``), ``train`` (a training run submitted over
the API, ``train.jobs``) and ``eval`` (an evaluation, ``train.evaluations``).
They train and evaluate on ``deps.engine`` when the process serves that base
model (``teachloop up``), else on a model loaded once per process through the
runtime loader (``app.runtime.ModelCache``, which honours ``TEACHLOOP_ENGINE``).
Assembling them installs the marketplace's usage gate (``catalog.usage``), so a
loop iteration on a bought dataset is checked against its entitlement and metered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teachloop.app.deps import AppDeps
from teachloop.app.runtime import ModelCache
from teachloop.catalog.usage import install_usage_gate
from teachloop.market.entitlements import MarketUsageGate
from teachloop.store.queue import Job
from teachloop.store.worker import Handler

if TYPE_CHECKING:
    from teachloop.engine.base import Engine
    from teachloop.render import Renderer


def _echo(job: Job) -> dict[str, Any]:
    return {"echo": job.payload}


def model_cache(deps: AppDeps) -> ModelCache:
    """A model cache for this process, seeded with the serving engine when ``deps`` has one."""
    cache = ModelCache(deps.settings)
    serving = deps.serving
    if deps.engine is not None and serving is not None and serving.renderer is not None:
        cache.add(serving.base_model or deps.settings.model, deps.engine, serving.renderer)
    return cache


def job_handlers(deps: AppDeps) -> dict[str, Handler]:
    """Every job kind this installation can run, with its handler."""
    from teachloop.loop.jobs import loop_handler
    from teachloop.loop.service import JOB_KIND as LOOP
    from teachloop.train.evaluations import JOB_KIND as EVAL
    from teachloop.train.evaluations import eval_handler
    from teachloop.train.jobs import JOB_KIND as TRAIN
    from teachloop.train.jobs import train_handler

    install_usage_gate(MarketUsageGate())
    cache = model_cache(deps)

    def models(name: str | None = None) -> tuple[Engine, Renderer]:
        engine, renderer = cache.get(name)
        if deps.engine is None:
            deps.engine = engine
        return engine, renderer

    def loop_engine() -> tuple[Engine, Renderer, str]:
        base = deps.serving.base_model if deps.serving is not None and deps.serving.base_model else None
        name = base or deps.settings.model
        return (*models(name), name)

    env_cache = deps.settings.home / "envs"
    return {
        "echo": _echo,
        LOOP: loop_handler(deps.database, deps.blobs, deps.queue, env_cache, loop_engine),
        TRAIN: train_handler(deps.database, deps.blobs, env_cache, models),
        EVAL: eval_handler(deps.database, deps.blobs, env_cache, models),
    }


__all__ = ["job_handlers", "model_cache"]

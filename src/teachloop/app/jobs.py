"""The job handlers a worker runs, assembled from the dependencies.

``job_handlers(deps)`` maps each job kind to its handler. Only ``echo`` (returns
its payload; a smoke test for a deployment's workers) exists so far; the
training, evaluation and promotion layers add their kinds here.
"""

from __future__ import annotations

from typing import Any

from teachloop.app.deps import AppDeps
from teachloop.store.queue import Job
from teachloop.store.worker import Handler


def _echo(job: Job) -> dict[str, Any]:
    return {"echo": job.payload}


def job_handlers(deps: AppDeps) -> dict[str, Handler]:
    """Every job kind this installation can run, with its handler."""
    return {"echo": _echo}


__all__ = ["job_handlers"]

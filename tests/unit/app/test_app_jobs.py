"""The job handlers the app registers, run by a real worker on SQLite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from teachloop.app import AppDeps, job_handlers
from teachloop.core.settings import Settings
from teachloop.store import BlobStore, Database, JobStatus, Worker, bootstrap


def test_echo_job_round_trip(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> None:
    url = migrated_sqlite(tmp_path / "t.db")
    database = Database(url)
    settings = Settings(
        home=tmp_path, model_cache=tmp_path / "m", database_url=url, blob_url=str(tmp_path / "b")
    )
    deps = AppDeps(settings, database, BlobStore(settings.blob_url))
    with database.session() as s:
        org_id = bootstrap(s).org.id
    job_id = deps.queue.enqueue("echo", {"hello": "world"}, org_id)
    done = Worker(deps.queue, job_handlers(deps), worker_id="w").run_once()
    assert done is not None and done.id == job_id
    assert (done.status, done.result) == (JobStatus.SUCCEEDED, {"echo": {"hello": "world"}})
    database.close()

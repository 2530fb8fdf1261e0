"""Worker: handlers, failures, heartbeats, a killed worker process, and exactly-once draining."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, func, insert, select

from teachloop.core.errors import InvalidInput
from teachloop.store import Database, Job, JobQueue, JobStatus, Worker
from teachloop.store.schema import Membership


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_run_once_records_the_result(db: Database, tenant: Membership) -> None:
    queue = JobQueue(db)
    job_id = queue.enqueue("echo", {"text": "hi"}, tenant.org_id)
    worker = Worker(db, {"echo": lambda job: {"echo": job.payload["text"]}}, worker_id="w")
    done = worker.run_once()
    assert done is not None and (done.id, done.status, done.result) == (
        job_id,
        JobStatus.SUCCEEDED,
        {"echo": "hi"},
    )
    assert worker.run_once() is None


def test_handler_errors_are_recorded_and_never_kill_the_worker(db: Database, tenant: Membership) -> None:
    queue = JobQueue(db)
    flaky = queue.enqueue("flaky", {}, tenant.org_id, priority=3)
    invalid = queue.enqueue("invalid", {}, tenant.org_id, priority=2)
    odd = queue.enqueue("odd", {}, tenant.org_id, priority=1)
    fine = queue.enqueue("fine", {}, tenant.org_id)

    def boom(job: Job) -> None:
        raise ZeroDivisionError("division by zero")

    def bad_payload(job: Job) -> None:
        raise InvalidInput("payload needs 'dataset'", param="dataset")

    def not_a_dict(job: Job) -> Any:
        return [1, 2]

    handlers = {"flaky": boom, "invalid": bad_payload, "odd": not_a_dict, "fine": lambda job: None}
    worker = Worker(db, handlers, worker_id="w")
    outcomes = {job.id: job for job in iter(worker.run_once, None)}
    assert outcomes[flaky].status == JobStatus.QUEUED  # retried later, with backoff
    assert outcomes[flaky].error == {"type": "ZeroDivisionError", "message": "division by zero"}
    assert outcomes[invalid].status == JobStatus.FAILED  # bad input is never retried
    assert outcomes[invalid].error == {"type": "InvalidInput", "message": "payload needs 'dataset'"}
    assert outcomes[odd].status == JobStatus.FAILED
    assert "returned list" in str(outcomes[odd].error)
    assert outcomes[fine].status == JobStatus.SUCCEEDED


def test_heartbeats_keep_a_long_job_leased(db: Database, tenant: Membership) -> None:
    queue = JobQueue(db)
    queue.enqueue("long", {}, tenant.org_id)
    stolen: list[Job | None] = []

    def long(job: Job) -> dict[str, Any]:
        time.sleep(1.2)  # twice the lease
        stolen.append(queue.claim("thief"))
        return {}

    done = Worker(db, {"long": long}, worker_id="w", lease_seconds=0.6).run_once()
    assert stolen == [None]
    assert done is not None and done.status == JobStatus.SUCCEEDED and done.attempts == 1


def test_a_job_cancelled_while_running_keeps_its_cancellation(db: Database, tenant: Membership) -> None:
    queue = JobQueue(db)
    queue.enqueue("k", {}, tenant.org_id)

    def cancelled_midway(job: Job) -> dict[str, Any]:
        queue.cancel(job.org_id, job.id)
        return {"x": 1}

    done = Worker(db, {"k": cancelled_midway}, worker_id="w").run_once()
    assert done is not None and done.status == JobStatus.CANCELLED and done.result is None


def test_run_forever_until_stopped(db: Database, tenant: Membership) -> None:
    queue = JobQueue(db)
    ids = [queue.enqueue("k", {"i": i}, tenant.org_id) for i in range(3)]
    stop = threading.Event()
    worker = Worker(db, {"k": lambda job: {"i": job.payload["i"]}}, worker_id="w", poll_interval=0.05)
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    try:
        _wait_for(
            lambda: all(queue.get(tenant.org_id, i).status == JobStatus.SUCCEEDED for i in ids), 20, "3 jobs"
        )
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_job_survives_the_kill_of_its_worker_process(
    db: Database, tenant: Membership, tmp_path: Path
) -> None:
    queue = JobQueue(db)
    job_id = queue.enqueue("slow", {"n": 1}, tenant.org_id)
    marker = tmp_path / "claimed"
    script = Path(__file__).with_name("hanging_worker.py")
    url = db.url.render_as_string(hide_password=False)
    proc = subprocess.Popen([sys.executable, str(script), url, "doomed", str(marker)])
    try:
        _wait_for(marker.exists, 60, "the worker process to claim the job")
        first = queue.get(tenant.org_id, job_id)
        assert (first.status, first.lease_owner, first.attempts) == (JobStatus.RUNNING, "doomed", 1)
        assert first.lease_expires_at is not None
        _wait_for(  # the process heartbeats while its handler hangs
            lambda: queue.get(tenant.org_id, job_id).lease_expires_at > first.lease_expires_at,  # type: ignore[operator]
            10,
            "a heartbeat",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    rescuer = Worker(
        db, {"slow": lambda job: {"attempt": job.attempts}}, worker_id="rescuer", lease_seconds=5
    )
    assert rescuer.run_once() is None  # the dead worker's lease has not run out yet
    deadline = time.monotonic() + 10
    while (final := rescuer.run_once()) is None:
        assert time.monotonic() < deadline, "the dead worker's lease never expired"
        time.sleep(0.1)
    assert (final.id, final.status, final.lease_owner) == (job_id, JobStatus.SUCCEEDED, "rescuer")
    assert (final.attempts, final.result) == (2, {"attempt": 2})


@pytest.fixture
def executions(db: Database) -> Iterator[Table]:
    """A side table recording every handler execution (no unique constraint: duplicates would show)."""
    table = Table(
        "test_executions", MetaData(), Column("job_id", String(40)), Column("worker_id", String(40))
    )
    table.create(db.engine)
    try:
        yield table
    finally:
        table.drop(db.engine)


def test_two_workers_drain_the_queue_exactly_once(
    db: Database, tenant: Membership, executions: Table
) -> None:
    jobs = 40
    queue = JobQueue(db)
    ids = {queue.enqueue("count", {"i": i}, tenant.org_id) for i in range(jobs)}
    url = db.url.render_as_string(hide_password=False)
    stop = threading.Event()
    threads, databases = [], []
    for name in ("w1", "w2"):
        own = Database(url)  # a separate engine: separate connections, as in separate processes
        databases.append(own)

        def count(job: Job, own: Database = own, name: str = name) -> dict[str, Any]:
            time.sleep(0.02)
            with own.session() as s:
                s.execute(insert(executions).values(job_id=job.id, worker_id=name))
            return {"by": name}

        worker = Worker(own, {"count": count}, worker_id=name, poll_interval=0.02)
        threads.append(threading.Thread(target=worker.run_forever, args=(stop,)))
    for thread in threads:
        thread.start()
    try:

        def executed() -> int:
            with db.session(write=False) as s:
                return int(s.scalar(select(func.count()).select_from(executions)) or 0)

        _wait_for(lambda: executed() == jobs, 60, f"{jobs} executions")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for own in databases:
            own.close()
    with db.session(write=False) as s:
        runs = s.execute(select(executions.c.job_id, executions.c.worker_id)).all()
    assert sorted(job_id for job_id, _ in runs) == sorted(ids)  # every job ran, none twice
    by_worker = {w: sum(1 for _, x in runs if x == w) for w in ("w1", "w2")}
    assert by_worker["w1"] > 0 and by_worker["w2"] > 0, by_worker
    assert {j.status for j in queue.list(tenant.org_id)} == {JobStatus.SUCCEEDED}

"""JobQueue semantics on SQLite and PostgreSQL, with a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.store import AuditLog, Database, JobQueue, JobStatus
from teachloop.store.schema import Membership


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(db: Database, clock: FakeClock) -> JobQueue:
    return JobQueue(db, clock=clock, backoff_base=10, backoff_cap=25)


def test_enqueue_claim_complete(queue: JobQueue, tenant: Membership, clock: FakeClock) -> None:
    job_id = queue.enqueue("echo", {"x": [1, 2]}, tenant.org_id)
    queued = queue.get(tenant.org_id, job_id)
    assert (queued.status, queued.attempts, queued.payload) == (JobStatus.QUEUED, 0, {"x": [1, 2]})
    job = queue.claim("w1", lease_seconds=30)
    assert job is not None and job.id == job_id
    assert (job.status, job.attempts, job.lease_owner) == (JobStatus.RUNNING, 1, "w1")
    assert job.lease_expires_at == clock.now + timedelta(seconds=30)
    assert queue.claim("w2") is None
    done = queue.complete(job_id, {"ok": True}, worker_id="w1")
    assert (done.status, done.result, done.finished_at) == (JobStatus.SUCCEEDED, {"ok": True}, clock.now)
    assert queue.claim("w2") is None


def test_claim_order_priority_then_age_and_run_after(
    queue: JobQueue, tenant: Membership, clock: FakeClock
) -> None:
    low = queue.enqueue("k", {}, tenant.org_id)
    clock.advance(1)
    high = queue.enqueue("k", {}, tenant.org_id, priority=5)
    later = queue.enqueue("k", {}, tenant.org_id, priority=9, run_after=clock.now + timedelta(seconds=60))
    clock.advance(1)
    low2 = queue.enqueue("k", {}, tenant.org_id)
    order = [queue.claim("w") for _ in range(3)]
    assert [j.id for j in order if j] == [high, low, low2]
    assert queue.claim("w") is None
    clock.advance(60)
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == later


def test_claim_only_the_asked_kinds(queue: JobQueue, tenant: Membership) -> None:
    train = queue.enqueue("train", {}, tenant.org_id)
    queue.enqueue("eval", {}, tenant.org_id)
    assert queue.claim("w", kinds=[]) is None
    job = queue.claim("w", kinds=["train", "other"])
    assert job is not None and job.id == train
    assert queue.claim("w", kinds=["train"]) is None


def test_fail_retries_with_backoff_then_fails(queue: JobQueue, tenant: Membership, clock: FakeClock) -> None:
    job_id = queue.enqueue("flaky", {}, tenant.org_id, max_attempts=3)
    delays = []
    for attempt in (1, 2):
        job = queue.claim("w")
        assert job is not None and job.attempts == attempt
        failed = queue.fail(job_id, ValueError(f"bad {attempt}"), worker_id="w")
        assert failed.status == JobStatus.QUEUED
        assert failed.error == {"type": "ValueError", "message": f"bad {attempt}"}
        delays.append((failed.run_after - clock.now).total_seconds())
        assert queue.claim("w") is None  # not before the backoff
        clock.advance(delays[-1])
    assert delays == [10, 20]
    job = queue.claim("w")
    assert job is not None and job.attempts == 3
    final = queue.fail(job_id, "still bad", worker_id="w")
    assert (final.status, final.error) == (JobStatus.FAILED, {"type": "Error", "message": "still bad"})
    clock.advance(1000)
    assert queue.claim("w") is None


def test_backoff_is_capped(queue: JobQueue) -> None:
    assert [queue.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [10, 20, 25, 25]


def test_fail_without_retry_is_final(queue: JobQueue, tenant: Membership) -> None:
    job_id = queue.enqueue("k", {}, tenant.org_id)
    queue.claim("w")
    assert queue.fail(job_id, KeyError("x"), retry=False).status == JobStatus.FAILED


def test_expired_lease_is_reclaimed_with_the_attempt_counted(
    queue: JobQueue, tenant: Membership, clock: FakeClock
) -> None:
    job_id = queue.enqueue("k", {}, tenant.org_id, max_attempts=2)
    assert queue.claim("dead", lease_seconds=10) is not None
    clock.advance(9)
    assert queue.claim("w2") is None
    clock.advance(2)
    job = queue.claim("w2", lease_seconds=10)
    assert job is not None and (job.attempts, job.lease_owner) == (2, "w2")
    assert job.error is not None and job.error["type"] == "LeaseExpired"
    with pytest.raises(Conflict, match="lost it"):
        queue.complete(job_id, {"late": True}, worker_id="dead")
    with pytest.raises(Conflict, match="lost it"):
        queue.heartbeat(job_id, "dead")
    clock.advance(11)  # w2 dies too: no attempts left
    assert queue.claim("w3") is None
    final = queue.get(tenant.org_id, job_id)
    assert final.status == JobStatus.FAILED
    assert final.error is not None and "no attempts left (2/2)" in final.error["message"]


def test_heartbeat_extends_the_lease(queue: JobQueue, tenant: Membership, clock: FakeClock) -> None:
    job_id = queue.enqueue("k", {}, tenant.org_id)
    queue.claim("w1", lease_seconds=10)
    clock.advance(8)
    assert queue.heartbeat(job_id, "w1", lease_seconds=10) == clock.now + timedelta(seconds=10)
    clock.advance(8)
    assert queue.claim("w2") is None


def test_cancel(queue: JobQueue, tenant: Membership) -> None:
    queued = queue.enqueue("k", {}, tenant.org_id)
    running = queue.enqueue("k", {}, tenant.org_id)
    assert queue.cancel(tenant.org_id, queued, actor="usr_x").status == JobStatus.CANCELLED
    assert queue.claim("w") is not None
    assert queue.cancel(tenant.org_id, running).status == JobStatus.CANCELLED
    with pytest.raises(Conflict, match="not running"):
        queue.complete(running, {}, worker_id="w")
    with pytest.raises(Conflict, match="not running"):
        queue.heartbeat(running, "w")
    with pytest.raises(Conflict, match="already cancelled"):
        queue.cancel(tenant.org_id, queued)
    assert queue.claim("w") is None
    with queue.db.session(write=False) as s:
        assert [e.target for e in AuditLog(s).list(tenant.org_id, action="job.cancel")] == [running, queued]


def test_other_orgs_jobs_are_not_found(queue: JobQueue, tenant: Membership, other_tenant: Membership) -> None:
    theirs = queue.enqueue("k", {"secret": 1}, other_tenant.org_id)
    mine = queue.enqueue("k", {}, tenant.org_id)
    calls: list[Callable[[], object]] = [
        lambda: queue.get(tenant.org_id, theirs),
        lambda: queue.cancel(tenant.org_id, theirs),
    ]
    for call in calls:
        with pytest.raises(NotFound) as info:
            call()
        assert str(info.value) == f"job {theirs!r} not found"
    with pytest.raises(NotFound) as missing:
        queue.get(tenant.org_id, "job_missing")
    assert str(missing.value) == "job 'job_missing' not found"
    assert [j.id for j in queue.list(tenant.org_id)] == [mine]
    assert queue.get(other_tenant.org_id, theirs).status == JobStatus.QUEUED


def test_list_filters(queue: JobQueue, tenant: Membership) -> None:
    a = queue.enqueue("a", {}, tenant.org_id)
    b = queue.enqueue("b", {}, tenant.org_id)
    queue.claim("w", kinds=["a"])
    assert [j.id for j in queue.list(tenant.org_id, status="running")] == [a]
    assert [j.id for j in queue.list(tenant.org_id, kind="b")] == [b]
    with pytest.raises(InvalidInput, match="unknown job status") as info:
        queue.list(tenant.org_id, status="paused")
    assert info.value.param == "status"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"kind": "Bad Kind"}, "kind"),
        ({"payload": ["not", "a", "dict"]}, "payload"),
        ({"payload": {"x": object()}}, "payload"),
        ({"payload": {"x": float("nan")}}, "payload"),
        ({"priority": 1.5}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"run_after": datetime(2030, 1, 1)}, "run_after"),
        ({"org_id": "org_missing"}, "org_id"),
    ],
)
def test_bad_enqueue_is_refused_and_changes_nothing(
    queue: JobQueue, tenant: Membership, kwargs: dict[str, object], param: str
) -> None:
    args: dict[str, Any] = {"kind": "ok", "payload": {}, "org_id": tenant.org_id, **kwargs}
    with pytest.raises((InvalidInput, NotFound)) as info:
        queue.enqueue(**args)
    assert info.value.param == param
    assert queue.list(tenant.org_id) == []


def test_bad_result_is_refused_and_changes_nothing(queue: JobQueue, tenant: Membership) -> None:
    job_id = queue.enqueue("k", {}, tenant.org_id)
    queue.claim("w")
    with pytest.raises(InvalidInput, match="result"):
        queue.complete(job_id, {"x": {1, 2}}, worker_id="w")
    assert queue.get(tenant.org_id, job_id).status == JobStatus.RUNNING


def test_enqueue_joins_the_callers_transaction(db: Database, queue: JobQueue, tenant: Membership) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        queue.enqueue("k", {}, tenant.org_id, session=s)
        raise RuntimeError("the surrounding write failed")
    assert queue.list(tenant.org_id) == []
    with db.session() as s:
        job_id = queue.enqueue("k", {}, tenant.org_id, session=s)
    assert queue.get(tenant.org_id, job_id).status == JobStatus.QUEUED

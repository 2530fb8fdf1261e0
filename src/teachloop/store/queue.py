"""A durable job queue in the database, safe for many workers on PostgreSQL.

Contract:

- ``enqueue`` stores a job (``queued``) and returns its id; pass ``session=`` to
  enqueue inside a caller's transaction (the job exists iff that commits).
- ``claim`` hands the best runnable job to one worker: highest ``priority``,
  then oldest ``run_after``. Runnable means ``queued`` with ``run_after <= now``,
  or ``running`` with an expired lease (its worker died) and attempts left.
  Each claim counts an attempt and sets a lease of ``lease_seconds``. On
  PostgreSQL the candidate row is locked with ``FOR UPDATE SKIP LOCKED``, so
  concurrent claimers never wait on or receive the same job; on SQLite the
  claim runs in a ``BEGIN IMMEDIATE`` transaction, so claims are serialised.
  An expired job with no attempts left is marked ``failed`` during a claim.
- ``heartbeat`` extends the lease of a job the caller still holds; ``complete``
  and ``fail`` finish it. With ``worker_id`` given they refuse (``Conflict``)
  when that worker no longer holds the job (lease lost, or cancelled).
- ``fail(retry=True)`` re-queues the job after an exponential backoff
  (``backoff_base * 2**(attempts-1)``, capped) while attempts remain; otherwise,
  or with ``retry=False``, the job ends ``failed``. The error is kept as
  ``{"type", "message"}``.
- ``get``/``list``/``cancel`` are tenant reads: they take the ``org_id`` and a
  job of another organisation is ``NotFound`` like a missing one.

Times come from ``clock`` (default: this process's UTC clock), so workers on
several machines need synchronised clocks (NTP), as for any lease. Delivery is
at-least-once: a worker that dies after its handler's side effects but before
``complete`` leaves a job that runs again, so handlers should be idempotent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.store.db import Database
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.jobs import JobRow, JobStatus
from teachloop.store.schema.tenancy import Organisation

_KIND_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
DEFAULT_LEASE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job (immutable; re-read with ``JobQueue.get``)."""

    id: str
    org_id: str
    kind: str
    payload: dict[str, Any]
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    run_after: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
        """The snapshot of an ORM row."""
        return cls(
            id=row.id,
            org_id=row.org_id,
            kind=row.kind,
            payload=dict(row.payload),
            status=JobStatus(row.status),
            priority=row.priority,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            run_after=row.run_after,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            result=row.result,
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


def error_info(error: BaseException | str | dict[str, Any]) -> dict[str, Any]:
    """An error as the ``{"type", "message"}`` dict stored on a job."""
    if isinstance(error, BaseException):
        return {"type": type(error).__name__, "message": str(error)[:4000]}
    if isinstance(error, dict):
        return {"type": str(error.get("type", "Error")), "message": str(error.get("message", ""))[:4000]}
    return {"type": "Error", "message": str(error)[:4000]}


def _json_dict(value: Any, param: str, *, optional: bool = False) -> dict[str, Any] | None:
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"{param} must be a JSON object (dict), got {type(value).__name__}", param=param)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"{param} is not JSON-serialisable: {err}", param=param) from None
    return value


class JobQueue:
    """The job queue over one ``Database``."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utc_now,
        backoff_base: float = 5.0,
        backoff_cap: float = 300.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap

    def backoff(self, attempts: int) -> timedelta:
        """The delay before retrying a job that has failed ``attempts`` times."""
        return timedelta(seconds=min(self.backoff_base * 2 ** max(attempts - 1, 0), self.backoff_cap))

    # -- producers ----------------------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        org_id: str,
        *,
        priority: int = 0,
        max_attempts: int = 3,
        run_after: datetime | None = None,
        session: Session | None = None,
    ) -> str:
        """Queue a job of ``kind`` for ``org_id``; return its id."""
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise InvalidInput(
                f"job kind must be 1-64 lower-case letters, digits or _.:- starting with a letter, got {kind!r}",
                param="kind",
            )
        _json_dict(payload, "payload")
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 1_000_000:
            raise InvalidInput(f"priority must be an integer in ±1000000, got {priority!r}", param="priority")
        if (
            isinstance(max_attempts, bool)
            or not isinstance(max_attempts, int)
            or not 1 <= max_attempts <= 100
        ):
            raise InvalidInput(
                f"max_attempts must be an integer 1..100, got {max_attempts!r}", param="max_attempts"
            )
        if run_after is not None and (not isinstance(run_after, datetime) or run_after.tzinfo is None):
            raise InvalidInput("run_after must be a timezone-aware datetime", param="run_after")
        row = JobRow(
            org_id=org_id,
            kind=kind,
            payload=payload,
            status=JobStatus.QUEUED.value,
            priority=priority,
            attempts=0,
            max_attempts=max_attempts,
            run_after=run_after or self.clock(),
        )
        if session is not None:
            return self._insert(session, row)
        with self.db.session() as own:
            return self._insert(own, row)

    @staticmethod
    def _insert(session: Session, row: JobRow) -> str:
        if session.get(Organisation, row.org_id) is None:
            raise NotFound(f"organisation {row.org_id!r} not found", param="org_id")
        session.add(row)
        session.flush()
        return row.id

    # -- workers ------------------------------------------------------------------------------

    def claim(
        self, worker_id: str, kinds: Iterable[str] | None = None, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> Job | None:
        """Lease the next runnable job to ``worker_id`` (only of ``kinds``, when given); None if there is none."""
        if not worker_id or len(worker_id) > 200:
            raise InvalidInput("worker_id must be 1-200 characters", param="worker_id")
        if lease_seconds <= 0:
            raise InvalidInput(f"lease_seconds must be positive, got {lease_seconds}", param="lease_seconds")
        wanted = None if kinds is None else sorted(set(kinds))
        if wanted is not None and not wanted:
            return None
        now = self.clock()
        expired = and_(JobRow.status == JobStatus.RUNNING.value, JobRow.lease_expires_at < now)
        with self.db.session() as s:
            exhausted = select(JobRow).where(expired, JobRow.attempts >= JobRow.max_attempts)
            for row in s.scalars(exhausted.with_for_update(skip_locked=True)).all():
                self._finish(row, JobStatus.FAILED, now, error=self._lost(row, exhausted=True))
            runnable = or_(
                and_(JobRow.status == JobStatus.QUEUED.value, JobRow.run_after <= now),
                and_(expired, JobRow.attempts < JobRow.max_attempts),
            )
            query = select(JobRow).where(runnable)
            if wanted is not None:
                query = query.where(JobRow.kind.in_(wanted))
            query = query.order_by(JobRow.priority.desc(), JobRow.run_after, JobRow.id).limit(1)
            job = s.scalars(query.with_for_update(skip_locked=True)).first()
            if job is None:
                return None
            if job.status == JobStatus.RUNNING.value:
                job.error = self._lost(job, exhausted=False)
            job.status = JobStatus.RUNNING.value
            job.attempts += 1
            job.lease_owner = worker_id
            job.lease_expires_at = now + timedelta(seconds=lease_seconds)
            job.started_at = now
            s.flush()
            return Job.from_row(job)

    @staticmethod
    def _lost(row: JobRow, *, exhausted: bool) -> dict[str, Any]:
        tail = f"; no attempts left ({row.attempts}/{row.max_attempts})" if exhausted else "; retrying"
        return {"type": "LeaseExpired", "message": f"worker {row.lease_owner} stopped heartbeating{tail}"}

    def heartbeat(
        self, job_id: str, worker_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> datetime:
        """Extend the lease ``worker_id`` holds on a job; return the new expiry. ``Conflict`` if it lost it."""
        with self.db.session() as s:
            row = self._held(s, job_id, worker_id)
            row.lease_expires_at = self.clock() + timedelta(seconds=lease_seconds)
            s.flush()
            return row.lease_expires_at

    def complete(
        self, job_id: str, result: dict[str, Any] | None = None, *, worker_id: str | None = None
    ) -> Job:
        """Mark a running job ``succeeded`` with ``result``."""
        _json_dict(result, "result", optional=True)
        with self.db.session() as s:
            row = self._held(s, job_id, worker_id)
            self._finish(row, JobStatus.SUCCEEDED, self.clock(), result=result)
            return Job.from_row(row)

    def fail(
        self,
        job_id: str,
        error: BaseException | str | dict[str, Any],
        *,
        retry: bool = True,
        worker_id: str | None = None,
        delay: float | None = None,
    ) -> Job:
        """Record a failed attempt: re-queue after a backoff (or ``delay`` s) if allowed, else ``failed``."""
        info = error_info(error)
        with self.db.session() as s:
            row = self._held(s, job_id, worker_id)
            now = self.clock()
            if retry and row.attempts < row.max_attempts:
                wait = self.backoff(row.attempts) if delay is None else timedelta(seconds=max(delay, 0.0))
                row.status = JobStatus.QUEUED.value
                row.run_after = now + wait
                row.lease_expires_at = None
                row.error = info
            else:
                self._finish(row, JobStatus.FAILED, now, error=info)
            s.flush()
            return Job.from_row(row)

    def _held(self, s: Session, job_id: str, worker_id: str | None) -> JobRow:
        row = s.get(JobRow, job_id, with_for_update=True)
        if row is None:
            raise NotFound(f"job {job_id!r} not found", param="job_id")
        if row.status != JobStatus.RUNNING.value:
            raise Conflict(f"job {job_id} is {row.status}, not running", param="job_id")
        if worker_id is not None and row.lease_owner != worker_id:
            raise Conflict(
                f"job {job_id} is now leased by {row.lease_owner}; {worker_id} lost it", param="job_id"
            )
        return row

    @staticmethod
    def _finish(
        row: JobRow,
        status: JobStatus,
        now: datetime,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        row.status = status.value
        row.finished_at = now
        row.lease_expires_at = None
        if result is not None:
            row.result = result
        if error is not None:
            row.error = error

    # -- tenant reads -------------------------------------------------------------------------

    def get(self, org_id: str, job_id: str) -> Job:
        """The organisation's job with this id; ``NotFound`` otherwise."""
        with self.db.session(write=False) as s:
            return Job.from_row(self._owned(s, org_id, job_id))

    @staticmethod
    def _owned(s: Session, org_id: str, job_id: str, *, lock: bool = False) -> JobRow:
        query = select(JobRow).where(JobRow.id == job_id, JobRow.org_id == org_id)
        row = s.scalars(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFound(f"job {job_id!r} not found", param="job_id")
        return row

    def list(
        self, org_id: str, *, status: JobStatus | str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[Job]:
        """The organisation's jobs, newest first, optionally filtered by status and kind."""
        if not 1 <= limit <= 10_000:
            raise InvalidInput(f"limit must be 1..10000, got {limit}", param="limit")
        query = select(JobRow).where(JobRow.org_id == org_id)
        if status is not None:
            try:
                query = query.where(JobRow.status == JobStatus(status).value)
            except ValueError:
                choices = ", ".join(s.value for s in JobStatus)
                raise InvalidInput(
                    f"unknown job status {status!r}; use one of {choices}", param="status"
                ) from None
        if kind is not None:
            query = query.where(JobRow.kind == kind)
        query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit)
        with self.db.session(write=False) as s:
            return [Job.from_row(row) for row in s.scalars(query)]

    def cancel(self, org_id: str, job_id: str, *, actor: str = "system") -> Job:
        """Cancel a queued or running job (a running worker's result is then refused)."""
        with self.db.session() as s:
            row = self._owned(s, org_id, job_id, lock=True)
            if JobStatus(row.status).finished:
                raise Conflict(f"job {job_id} already {row.status}; nothing to cancel", param="job_id")
            self._finish(row, JobStatus.CANCELLED, self.clock())
            s.flush()
            AuditLog(s).record(org_id, actor, "job.cancel", job_id)
            return Job.from_row(row)


__all__ = ["DEFAULT_LEASE_SECONDS", "Job", "JobQueue", "error_info"]

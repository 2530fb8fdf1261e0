"""The job table behind ``teachloop.store.queue``.

One row per job. The queue's state machine lives in ``queue.py``; this module
only declares the columns and the index the claim query uses:

    queued --claim--> running --complete--> succeeded
      ^                  |  \\--fail(retry, attempts left)--> queued (run_after = now + backoff)
      |                  |   \\-fail(no retry | no attempts left)--> failed
      |                  \\--lease expired--> claimable again (attempt counted)
      \\--cancel (queued or running)--> cancelled
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, Timestamps, id_column, utc_now


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job will never run again."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobRow(OrgOwned, Timestamps, Base):
    """A durable background job."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "status", "run_after", "priority"),)

    id: Mapped[str] = id_column("job")
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(default=utc_now)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


__all__ = ["JobRow", "JobStatus"]

"""teachloop.store -- schema, migrations, repositories, blob store and job queue (layer L2).

The database (SQLite embedded, PostgreSQL in production) is the system of
record: every tenant row carries its ``org_id`` and every tenant read filters
by it. Blobs (adapters, dataset snapshots) live in a ``BlobStore``; background
work goes through the ``JobQueue`` and ``Worker``. Nothing here knows about
HTTP, models or training.
"""

from teachloop.store.blobs import BlobStore
from teachloop.store.bootstrap import Bootstrap, bootstrap
from teachloop.store.db import Database, head_revision, mask_url
from teachloop.store.queue import Job, JobQueue, error_info
from teachloop.store.repos import ApiKeys, AuditLog, CreatedKey, OrgSummary, Tenancy
from teachloop.store.schema import JobStatus
from teachloop.store.worker import Handler, Worker

__all__ = [
    "ApiKeys",
    "AuditLog",
    "BlobStore",
    "Bootstrap",
    "CreatedKey",
    "Database",
    "Handler",
    "Job",
    "JobQueue",
    "JobStatus",
    "OrgSummary",
    "Tenancy",
    "Worker",
    "bootstrap",
    "error_info",
    "head_revision",
    "mask_url",
]

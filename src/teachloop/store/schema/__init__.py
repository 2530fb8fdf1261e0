"""The teachloop schema: every table, one module per concern.

Importing this package registers every table on ``Base.metadata`` (Alembic's
``env.py`` and the schema tests rely on that). A new concern adds a module
here, imports it below, and ships a migration in ``store/migrations/versions``.
"""

from teachloop.store.schema.audit import AuditEvent
from teachloop.store.schema.base import (
    GLOBAL_TABLE,
    Base,
    JSONType,
    OrgOwned,
    Timestamps,
    UTCDateTime,
    id_column,
    ref_column,
    utc_now,
)
from teachloop.store.schema.billing import BillingInvoice, BillingPrice, BillingQuota
from teachloop.store.schema.console import ConsoleSession, ServerSecret, SigninAttempt, SigninLink
from teachloop.store.schema.datasets import Dataset, DatasetRow
from teachloop.store.schema.deployments import AdapterVersion, Deployment, DeploymentChange, UpstreamEndpoint
from teachloop.store.schema.environments import EnvironmentEval, EnvironmentVersion
from teachloop.store.schema.idempotency import IdempotencyKey
from teachloop.store.schema.jobs import JobRow, JobStatus
from teachloop.store.schema.ledger import LedgerAccount, LedgerEntry, LedgerPosting
from teachloop.store.schema.loops import Loop, LoopIteration, TraceScore
from teachloop.store.schema.market import (
    MarketEntitlement,
    MarketListing,
    MarketOffer,
    MarketOrder,
    MarketUsage,
)
from teachloop.store.schema.requests import DataRequest, RequestProposal
from teachloop.store.schema.runs import RunCheckpoint, RunMetric, TrainingRun
from teachloop.store.schema.tenancy import ApiKey, Membership, Organisation, User
from teachloop.store.schema.tinker import TinkerCheckpoint, TinkerModel, TinkerSession
from teachloop.store.schema.traces import Feedback, Trace
from teachloop.store.schema.work import (
    WorkAnswer,
    WorkAssignment,
    WorkDispute,
    WorkExam,
    WorkExamAttempt,
    WorkExpert,
    WorkItem,
    WorkPayPeriod,
    WorkProject,
    WorkTemplate,
)

__all__ = [
    "GLOBAL_TABLE",
    "AdapterVersion",
    "ApiKey",
    "AuditEvent",
    "Base",
    "BillingInvoice",
    "BillingPrice",
    "BillingQuota",
    "ConsoleSession",
    "DataRequest",
    "Dataset",
    "DatasetRow",
    "Deployment",
    "DeploymentChange",
    "EnvironmentEval",
    "EnvironmentVersion",
    "Feedback",
    "IdempotencyKey",
    "JSONType",
    "JobRow",
    "JobStatus",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerPosting",
    "Loop",
    "LoopIteration",
    "MarketEntitlement",
    "MarketListing",
    "MarketOffer",
    "MarketOrder",
    "MarketUsage",
    "Membership",
    "OrgOwned",
    "Organisation",
    "RequestProposal",
    "RunCheckpoint",
    "RunMetric",
    "ServerSecret",
    "SigninAttempt",
    "SigninLink",
    "Timestamps",
    "TinkerCheckpoint",
    "TinkerModel",
    "TinkerSession",
    "Trace",
    "TraceScore",
    "TrainingRun",
    "UTCDateTime",
    "UpstreamEndpoint",
    "User",
    "WorkAnswer",
    "WorkAssignment",
    "WorkDispute",
    "WorkExam",
    "WorkExamAttempt",
    "WorkExpert",
    "WorkItem",
    "WorkPayPeriod",
    "WorkProject",
    "WorkTemplate",
    "id_column",
    "ref_column",
    "utc_now",
]

"""Per-organisation quotas and their enforcement (HTTP 429 naming the quota and when it resets).

An operator sets, per organisation, any of (``core.billing.QuotaName``):

- ``tokens_per_day``: prompt + completion tokens of the organisation's traces since 00:00 UTC;
  resets at the next 00:00 UTC (``Retry-After`` is the seconds until then);
- ``concurrent_runs``: training runs ``queued``, ``running`` or ``cancelling``; frees up when one ends;
- ``spend_per_month``: minor units of this month's metered usage (``market.billing``); resets on the 1st.

``Quotas(session)`` sets, removes and reads them. The checks raise ``QuotaExceeded`` with
``param`` = the quota's name; a request that is refused stores nothing. They are wired in
without ``serve`` or ``train`` importing this package: ``serving_admission(database)``
returns the ``(org_id, model, conn) -> None`` callable that ``serve.Serving(admission=...)`` calls
before it queues a completion (tokens per day, spend), and ``run_admission`` is the
``(session, org_id) -> None`` callable ``train.jobs.submit_run(admit=...)`` calls inside the
transaction that would create the run (concurrent runs, spend). A check that finds no quota
for the organisation costs one indexed read (on a Core connection, no ORM session).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from teachloop.core.billing import Quota, QuotaName, parse_period, period_of
from teachloop.core.errors import InvalidInput, NotFound, QuotaExceeded
from teachloop.market.billing import Billing
from teachloop.store.db import Database
from teachloop.store.schema import BillingQuota, Organisation, Trace, TrainingRun

ACTIVE_RUN_STATUSES = ("queued", "running", "cancelling")


def _as_name(name: object) -> QuotaName:
    try:
        return QuotaName(str(name))
    except ValueError:
        raise InvalidInput(f"quota must be one of {', '.join(q.value for q in QuotaName)}, not {name!r}",
                           param="name") from None


def _next_midnight(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


#: An organisation's limits (name, limit), read before every completion.
_LIMITS = select(BillingQuota.name, BillingQuota.limit).where(BillingQuota.org_id == bindparam("org_id"))


class Quotas:
    """An organisation's quotas over one session (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def limits(self, org_id: str) -> dict[QuotaName, int]:
        """The organisation's limits by quota name."""
        rows = self.session.connection().execute(_LIMITS, {"org_id": org_id})  # Core: every request checks this
        return {QuotaName(name): int(limit) for name, limit in rows}

    def set(self, org_id: str, name: object, limit: int | None, *, actor: str = "operator") -> None:
        """Set one quota (``limit`` None removes it); ``NotFound`` for an unknown organisation."""
        quota = _as_name(name)
        if self.session.get(Organisation, org_id) is None:
            raise NotFound(f"organisation {org_id!r} not found", param="org_id")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidInput(f"limit must be a whole number of at least 0, not {limit!r}", param="limit")
        row = self.session.scalar(select(BillingQuota).where(BillingQuota.org_id == org_id,
                                                             BillingQuota.name == quota.value))
        if limit is None:
            if row is not None:
                self.session.delete(row)
        elif row is None:
            self.session.add(BillingQuota(org_id=org_id, name=quota.value, limit=limit, set_by=actor))
        else:
            row.limit, row.set_by = limit, actor
        self.session.flush()

    def status(self, org_id: str, now: datetime | None = None) -> list[Quota]:
        """Each quota of the organisation with what is used now and when it resets."""
        now = now or datetime.now(UTC)
        out = []
        for name, limit in sorted(self.limits(org_id).items()):
            used, resets = self._used(org_id, name, now)
            out.append(Quota(name=name, limit=limit, used=used, resets=resets))
        return out

    def _used(self, org_id: str, name: QuotaName, now: datetime) -> tuple[int, str]:
        if name is QuotaName.TOKENS_PER_DAY:
            day = datetime(now.year, now.month, now.day, tzinfo=UTC)
            used = self.session.scalar(
                select(func.coalesce(func.sum(Trace.prompt_tokens + Trace.completion_tokens), 0))
                .where(Trace.org_id == org_id, Trace.created_at >= day)
            )
            return int(used or 0), _next_midnight(now).isoformat()
        if name is QuotaName.CONCURRENT_RUNS:
            used = self.session.scalar(
                select(func.count()).select_from(TrainingRun)
                .where(TrainingRun.org_id == org_id, TrainingRun.status.in_(ACTIVE_RUN_STATUSES))
            )
            return int(used or 0), "when one of the organisation's queued or running training runs ends"
        _, end = parse_period(period_of(now))
        return Billing(self.session).spend(org_id, now), end.isoformat()

    def check(self, org_id: str, names: tuple[QuotaName, ...], now: datetime | None = None) -> None:
        """``QuotaExceeded`` (429) for the first of ``names`` the organisation has used up."""
        limits = self.limits(org_id)
        if not limits:
            return
        now = now or datetime.now(UTC)
        for name in names:
            limit = limits.get(name)
            if limit is None:
                continue
            used, resets = self._used(org_id, name, now)
            if used < limit:
                continue
            if name is QuotaName.CONCURRENT_RUNS:
                raise QuotaExceeded(
                    f"quota {name.value} is used up: {used} runs are queued or running and the limit is {limit}; "
                    f"it frees up {resets}", param=name.value)
            reset_at = datetime.fromisoformat(resets)
            retry = max(1, int((reset_at - now).total_seconds()))
            unit = "tokens" if name is QuotaName.TOKENS_PER_DAY else "minor units"
            raise QuotaExceeded(
                f"quota {name.value} is used up: {used} of {limit} {unit}; it resets at {resets} "
                f"(retry after {retry} s)", param=name.value, retry_after=retry)


def serving_admission(database: Database) -> Callable[[str, str, Connection | None], None]:
    """The callable ``serve.Serving(admission=...)`` calls before queueing a completion: ``(org_id, model, conn)``,
    reading on ``conn`` (the caller's read transaction) or, without one, in a read transaction of its own."""

    def admit(org_id: str, model: str, conn: Connection | None = None) -> None:
        if conn is None:
            with database.connection(write=False) as conn:
                return admit(org_id, model, conn)
        if conn.execute(_LIMITS, {"org_id": org_id}).first() is None:
            return  # no quota set: nothing to count (Core, no ORM session: every completion runs this)
        with Session(bind=conn) as session:  # joins the caller's transaction
            Quotas(session).check(org_id, (QuotaName.TOKENS_PER_DAY, QuotaName.SPEND_PER_MONTH))

    return admit


def run_admission(session: Session, org_id: str) -> None:
    """The callable ``train.jobs.submit_run(admit=...)`` calls in the transaction that would create a run."""
    Quotas(session).check(org_id, (QuotaName.CONCURRENT_RUNS, QuotaName.SPEND_PER_MONTH))


__all__ = ["ACTIVE_RUN_STATUSES", "Quotas", "run_admission", "serving_admission"]

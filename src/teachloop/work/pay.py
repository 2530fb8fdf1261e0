"""Pay for expert work, through ``teachloop.ledger`` only.

A project pays per accepted task (``rate``) or per tracked active minute (``rate`` times the
answer's active seconds // 60), in its ``currency``. Ledger accounts, in the books of the
organisation that owns the project (per currency ``CUR``):

- ``work:labor:CUR`` (expense): what the organisation's labeling cost;
- ``work:pending:expert:<user>:CUR`` (non-negative liability): accepted work in its review window;
- ``work:payable:expert:<user>:CUR`` (non-negative liability): the expert's payable balance.

Entries, each with an idempotency key derived from what it pays for, so a retry posts once:

- ``earn`` (kind ``work.earn``, key ``work:earn:<answer>``) when an answer is accepted (or fixed):
  Dr labor / Cr pending; the answer becomes payable ``review_window_s`` after its acceptance.
- ``release_due`` (``work.release``, key ``work:release:<answer>``): every answer whose window
  closed: Dr pending / Cr payable.
- ``close_period`` (``work.topup``, key ``work:topup:<project>:<period>:<user>``): the minimum
  effective hourly rate -- for each expert, ``min_hourly * active seconds // 3600`` of the work
  accepted in the period, less what that work earned; a positive difference is posted straight
  to the payable balance. A period is closed once (``Conflict`` after).
- ``payout`` pays a payable balance out through a ``ledger.Payouts`` provider.

``earnings`` is what an expert sees: pending and available work pay, and the royalties the
marketplace credited them (its ``royalty:pending|payable:expert:<user>:CUR`` accounts, read by
name from the ledger -- this package never imports the marketplace).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, InvalidInput
from teachloop.core.money import Money
from teachloop.core.work import EarningsOut, PeriodOut, ProjectSettings
from teachloop.ledger import Ledger, Payout, Payouts
from teachloop.store.db import Database
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.ledger import LedgerAccount
from teachloop.store.schema.work import WorkAnswer, WorkPayPeriod, WorkProject

PAID_STATES = ("accepted", "fixed")


def amount_for(settings: ProjectSettings, active_seconds: int) -> int:
    """What one accepted answer earns, in minor units."""
    if settings.pay_mode == "minute":
        return settings.rate * max(0, int(active_seconds)) // 60
    return settings.rate


def _labor(ledger: Ledger, org_id: str, currency: str) -> str:
    return ledger.accounts.open(org_id, f"work:labor:{currency}", kind="expense", currency=currency).id


def expert_account(ledger: Ledger, org_id: str, user_id: str, state: str, currency: str) -> str:
    """The id of the expert's ``pending`` or ``payable`` account, opened on first use."""
    return ledger.accounts.open(org_id, f"work:{state}:expert:{user_id}:{currency}", kind="liability",
                                currency=currency, non_negative=True).id


def earn(session: Session, answer: WorkAnswer, settings: ProjectSettings, *, now: datetime | None = None) -> None:
    """Credit an accepted answer's pay to the expert's pending balance (once: the key is the answer's)."""
    now = now or utc_now()
    answer.payable_at = now + timedelta(seconds=settings.review_window_s)
    if answer.amount <= 0 or answer.earn_entry_id is not None:
        session.flush()
        return
    ledger = Ledger(session)
    cur = answer.currency
    entry = ledger.post(answer.org_id, f"work:earn:{answer.id}",
                        [(_labor(ledger, answer.org_id, cur), answer.amount, cur),
                         (expert_account(ledger, answer.org_id, answer.expert_id, "pending", cur), -answer.amount, cur)],
                        kind="work.earn", memo=f"accepted answer {answer.id}",
                        info={"answer": answer.id, "project": answer.project_id, "item": answer.item_id})
    answer.earn_entry_id = entry.id
    session.flush()


def release_due(session: Session, org_id: str, *, now: datetime | None = None) -> list[str]:
    """Move the pay of every answer whose review window closed to the expert's payable balance; their ids."""
    now = now or utc_now()
    ledger = Ledger(session)
    due = list(session.scalars(select(WorkAnswer).where(
        WorkAnswer.org_id == org_id, WorkAnswer.earn_entry_id.is_not(None), WorkAnswer.release_entry_id.is_(None),
        WorkAnswer.payable_at <= now).order_by(WorkAnswer.id)))
    for a in due:
        cur = a.currency
        entry = ledger.post(org_id, f"work:release:{a.id}",
                            [(expert_account(ledger, org_id, a.expert_id, "pending", cur), a.amount, cur),
                             (expert_account(ledger, org_id, a.expert_id, "payable", cur), -a.amount, cur)],
                            kind="work.release", memo=f"review window of {a.id} closed", info={"answer": a.id})
        a.release_entry_id = entry.id
    session.flush()
    return [a.id for a in due]


def close_period(session: Session, org_id: str, project: WorkProject, period: str, *, until: datetime | None = None,
                 actor: str = "system", now: datetime | None = None) -> WorkPayPeriod:
    """Close the project's pay period ending at ``until`` and post the minimum-rate top-ups (module docstring)."""
    now = now or utc_now()
    until = until or now
    if until.tzinfo is None:
        raise InvalidInput("until must carry a time zone", param="until")
    if until > now:
        raise InvalidInput("a pay period cannot end in the future", param="until")
    if session.scalars(select(WorkPayPeriod.id).where(WorkPayPeriod.project_id == project.id,
                                                      WorkPayPeriod.period == period)).first():
        raise Conflict(f"pay period {period!r} of project {project.name!r} is closed already", param="period")
    start = session.scalar(select(func.max(WorkPayPeriod.ends_at)).where(WorkPayPeriod.project_id == project.id))
    start = start or project.created_at
    if until <= start:
        raise InvalidInput(f"until must be after the previous period's end ({start.isoformat()})", param="until")
    settings = ProjectSettings.model_validate(project.settings or {})
    earned: dict[str, int] = {}
    seconds: dict[str, int] = {}
    for a in session.scalars(select(WorkAnswer).where(
            WorkAnswer.project_id == project.id, WorkAnswer.status.in_(PAID_STATES),
            WorkAnswer.reviewed_at > start, WorkAnswer.reviewed_at <= until)):
        earned[a.expert_id] = earned.get(a.expert_id, 0) + a.amount
        seconds[a.expert_id] = seconds.get(a.expert_id, 0) + a.active_seconds
    topups: dict[str, int] = {}
    ledger = Ledger(session)
    cur = settings.currency
    for user in sorted(earned):
        floor = settings.min_hourly * seconds[user] // 3600
        top = floor - earned[user]
        if top <= 0:
            continue
        ledger.post(org_id, f"work:topup:{project.id}:{period}:{user}",
                    [(_labor(ledger, org_id, cur), top, cur),
                     (expert_account(ledger, org_id, user, "payable", cur), -top, cur)],
                    kind="work.topup", memo=f"minimum hourly rate, period {period} of {project.name}",
                    info={"project": project.id, "period": period, "seconds": seconds[user], "earned": earned[user]})
        topups[user] = top
    row = WorkPayPeriod(org_id=org_id, project_id=project.id, period=period, starts_at=start, ends_at=until,
                        topups=topups, closed_by=actor)
    session.add(row)
    session.flush()
    AuditLog(session).record(org_id, actor, "work.period.close", project.id, {"period": period, "topups": topups})
    return row


def list_periods(session: Session, org_id: str, project: WorkProject) -> list[WorkPayPeriod]:
    """The project's closed pay periods, latest first."""
    return list(session.scalars(select(WorkPayPeriod).where(WorkPayPeriod.org_id == org_id,
                                                            WorkPayPeriod.project_id == project.id)
                                .order_by(WorkPayPeriod.ends_at.desc(), WorkPayPeriod.id.desc())))


def period_out(row: WorkPayPeriod) -> PeriodOut:
    """A closed period as returned by the API."""
    return PeriodOut(id=row.id, project_id=row.project_id, period=row.period, starts_at=row.starts_at,
                     ends_at=row.ends_at, topups={k: int(v) for k, v in (row.topups or {}).items()})


def _held(session: Session, org_id: str, name: str) -> int:
    balance = session.scalar(select(LedgerAccount.balance).where(LedgerAccount.org_id == org_id,
                                                                 LedgerAccount.name == name))
    return -int(balance or 0)


def earnings(session: Session, org_id: str, user_id: str, currency: str = "USD") -> EarningsOut:
    """The expert's pending and available pay and royalties in ``currency`` (minor units)."""
    accepted = int(session.scalar(select(func.count()).select_from(WorkAnswer).where(
        WorkAnswer.org_id == org_id, WorkAnswer.expert_id == user_id, WorkAnswer.status.in_(PAID_STATES))) or 0)
    royalties_payable = _held(session, org_id, f"royalty:payable:expert:{user_id}:{currency}")
    return EarningsOut(
        expert_id=user_id, currency=currency,
        pending=_held(session, org_id, f"work:pending:expert:{user_id}:{currency}"),
        available=_held(session, org_id, f"work:payable:expert:{user_id}:{currency}") + royalties_payable,
        royalties_pending=_held(session, org_id, f"royalty:pending:expert:{user_id}:{currency}"),
        royalties_available=royalties_payable, accepted_tasks=accepted)


def payout(db: Database, payouts: Payouts, org_id: str, user_id: str, key: str, currency: str = "USD") -> Payout | None:
    """Pay the expert's whole work payable balance out (None when it is empty); ``key`` makes it idempotent."""
    with db.session() as s:
        ledger = Ledger(s)
        account = expert_account(ledger, org_id, user_id, "payable", currency)
        held = -ledger.balance(org_id, account)
    if held <= 0:
        return None
    return payouts.request(org_id, key, account, Money(amount=held, currency=currency), f"expert:{user_id}")


__all__ = ["PAID_STATES", "amount_for", "close_period", "earn", "earnings", "expert_account", "list_periods",
           "payout", "period_out", "release_due"]

"""RL-as-a-service billing: the operator's price table, the usage meter, and invoices through the ledger.

``Billing(session)`` works inside the caller's transaction:

- ``set_price(meter, scope, price, currency)`` / ``delete_price`` / ``prices()``: the operator's
  table (``core.billing``: token meters per 1,000 tokens, per deployment or base model, else ``*``).
  Every price shares one currency (a price in another is 409).
- ``usage(org_id, period)`` meters an organisation's month from the store: prompt and
  completion tokens from ``traces`` (per deployment, else per base model), training steps
  from a run's ``train`` metric rows, compute seconds from a run's ``started_at`` ..
  ``finished_at`` (clipped to the period; a run still going counts up to now), environment
  episodes from environment evaluations. Each line is priced by the most specific price
  (``deployment:<id>``, ``base_model:<name>``, ``*``) and rounded once, half up, to the minor unit.
- ``invoice(org_id, period)`` turns a *closed* period's usage into one ``billing_invoices`` row
  and one ledger entry in the organisation's book (Dr ``billing:receivable`` asset / Cr
  ``billing:revenue`` revenue), with idempotency key ``billing:invoice:<period>``: running it
  again for the same (organisation, period) returns the stored invoice (``replayed``) and
  posts nothing. A period with nothing due stores an invoice with no entry.

``spend(org_id, now)`` is the current month's metered total (the ``spend_per_month`` quota).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from teachloop.core.billing import (
    Invoice,
    Meter,
    Price,
    Usage,
    UsageLine,
    check_scope,
    line_amount,
    micro_to_price,
    parse_period,
    period_of,
    price_to_micro,
)
from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.core.money import AccountKind, check_currency
from teachloop.ledger import Ledger
from teachloop.store.schema import (
    BillingInvoice,
    BillingPrice,
    EnvironmentEval,
    RunMetric,
    Trace,
    TrainingRun,
)

RECEIVABLE = "billing:receivable"
REVENUE = "billing:revenue"


def _as_meter(meter: object) -> Meter:
    try:
        return Meter(str(meter))
    except ValueError:
        raise InvalidInput(f"meter must be one of {', '.join(m.value for m in Meter)}, not {meter!r}",
                           param="meter") from None


def _price_out(row: BillingPrice) -> Price:
    meter = Meter(row.meter)
    return Price(meter=meter, scope=row.scope, price=micro_to_price(row.micro_minor, row.currency),
                 currency=row.currency, per=meter.per, updated_at=row.updated_at)


def _invoice_out(row: BillingInvoice, *, replayed: bool = False) -> Invoice:
    return Invoice(id=row.id, org_id=row.org_id, period=row.period, currency=row.currency, total=row.total,
                   lines=[UsageLine.model_validate(line) for line in row.lines], entry_id=row.entry_id,
                   created_at=row.created_at, replayed=replayed)


class Billing:
    """Prices, usage and invoices over one session (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # ------------------------------------------------------------------ prices
    def prices(self) -> list[Price]:
        """The price table, by meter and scope."""
        rows = self.session.scalars(select(BillingPrice).order_by(BillingPrice.meter, BillingPrice.scope))
        return [_price_out(r) for r in rows]

    def currency(self) -> str | None:
        """The currency every price is in (None while there is no price)."""
        return self.session.scalar(select(BillingPrice.currency).limit(1))

    def set_price(self, meter: object, scope: object, price: str, currency: str, *, actor: str = "operator") -> Price:
        """Set the price of ``meter`` within ``scope`` (replacing the one there); 409 in a second currency."""
        meter = _as_meter(meter)
        scope = check_scope(scope)
        currency = check_currency(currency)
        micro = price_to_micro(price, currency)
        existing = self.currency()
        if existing is not None and existing != currency:
            raise Conflict(f"prices are in {existing}; a price in {currency} cannot join them", param="currency")
        row = self.session.scalar(select(BillingPrice).where(BillingPrice.meter == meter.value,
                                                             BillingPrice.scope == scope))
        if row is None:
            row = BillingPrice(meter=meter.value, scope=scope, currency=currency, micro_minor=micro, set_by=actor)
            self.session.add(row)
        else:
            row.micro_minor, row.set_by = micro, actor
        self.session.flush()
        return _price_out(row)

    def delete_price(self, meter: object, scope: object) -> None:
        """Remove one price; ``NotFound`` when there is none."""
        meter = _as_meter(meter)
        scope = check_scope(scope)
        row = self.session.scalar(select(BillingPrice).where(BillingPrice.meter == meter.value,
                                                             BillingPrice.scope == scope))
        if row is None:
            raise NotFound(f"no price for {meter.value} within {scope!r}", param="scope")
        self.session.delete(row)
        self.session.flush()

    # ------------------------------------------------------------------ usage
    def usage(self, org_id: str, period: str, *, now: datetime | None = None) -> Usage:
        """The organisation's metered usage in ``period`` (``YYYY-MM``) and what it costs."""
        start, end = parse_period(period)
        return self._usage(org_id, period, start, end, now or datetime.now(UTC))

    def spend(self, org_id: str, now: datetime | None = None) -> int:
        """Minor units of metered usage in the current month up to ``now``."""
        now = now or datetime.now(UTC)
        period = period_of(now)
        start, end = parse_period(period)
        return self._usage(org_id, period, start, end, now).total

    def _usage(self, org_id: str, period: str, start: datetime, end: datetime, now: datetime) -> Usage:
        table = {(r.meter, r.scope): r.micro_minor for r in self.session.scalars(select(BillingPrice))}
        currency = self.currency()
        lines: list[UsageLine] = []

        def add(meter: Meter, subject: str, quantity: int, scopes: Iterable[str]) -> None:
            if quantity <= 0:
                return
            for scope in (*scopes, "*"):
                micro = table.get((meter.value, scope))
                if micro is not None and currency is not None:
                    lines.append(UsageLine(meter=meter, scope=scope, subject=subject, quantity=quantity,
                                           price=micro_to_price(micro, currency),
                                           amount=line_amount(quantity, micro, meter)))
                    return
            lines.append(UsageLine(meter=meter, scope="*", subject=subject, quantity=quantity, price=None, amount=0))

        tokens = self.session.execute(
            select(Trace.deployment_id, Trace.base_model, func.sum(Trace.prompt_tokens),
                   func.sum(Trace.completion_tokens))
            .where(Trace.org_id == org_id, Trace.created_at >= start, Trace.created_at < end)
            .group_by(Trace.deployment_id, Trace.base_model)
            .order_by(Trace.base_model, Trace.deployment_id)
        )
        for deployment_id, base_model, prompt, completion in tokens:
            scopes = ([f"deployment:{deployment_id}"] if deployment_id else []) + [f"base_model:{base_model}"]
            subject = deployment_id or base_model
            add(Meter.PROMPT_TOKENS, subject, int(prompt or 0), scopes)
            add(Meter.COMPLETION_TOKENS, subject, int(completion or 0), scopes)

        steps = self.session.execute(
            select(RunMetric.run_id, TrainingRun.base_model, func.count())
            .join(TrainingRun, TrainingRun.id == RunMetric.run_id)
            .where(RunMetric.org_id == org_id, RunMetric.phase == "train",
                   RunMetric.created_at >= start, RunMetric.created_at < end)
            .group_by(RunMetric.run_id, TrainingRun.base_model)
            .order_by(RunMetric.run_id)
        )
        for run_id, base_model, count in steps:
            add(Meter.TRAINING_STEP, run_id, int(count), [f"base_model:{base_model}"])

        runs = self.session.scalars(
            select(TrainingRun)
            .where(TrainingRun.org_id == org_id, TrainingRun.started_at.is_not(None), TrainingRun.started_at < end)
            .order_by(TrainingRun.id)
        )
        for run in runs:
            assert run.started_at is not None
            stop = min(run.finished_at or now, end, now)
            seconds = int((stop - max(run.started_at, start)).total_seconds())
            add(Meter.COMPUTE_SECOND, run.id, seconds, [f"base_model:{run.base_model}"])

        episodes = self.session.execute(
            select(EnvironmentEval.env_name, EnvironmentEval.model, func.sum(EnvironmentEval.n_episodes))
            .where(EnvironmentEval.org_id == org_id, EnvironmentEval.created_at >= start,
                   EnvironmentEval.created_at < end)
            .group_by(EnvironmentEval.env_name, EnvironmentEval.model)
            .order_by(EnvironmentEval.env_name, EnvironmentEval.model)
        )
        for env_name, model, count in episodes:
            add(Meter.ENV_RUN, env_name, int(count or 0), [f"base_model:{model}"])

        return Usage(org_id=org_id, period=period, currency=currency, lines=lines,
                     total=sum(line.amount for line in lines))

    # ------------------------------------------------------------------ invoices
    def invoices(self, org_id: str) -> list[Invoice]:
        """The organisation's invoices, newest period first."""
        rows = self.session.scalars(select(BillingInvoice).where(BillingInvoice.org_id == org_id)
                                    .order_by(BillingInvoice.period.desc()))
        return [_invoice_out(r) for r in rows]

    def invoice(self, org_id: str, period: str, *, now: datetime | None = None) -> Invoice:
        """Invoice a closed period once (see the module docstring); a repeat returns it with ``replayed``."""
        start, end = parse_period(period)
        now = now or datetime.now(UTC)
        existing = self._stored(org_id, period)
        if existing is not None:
            return _invoice_out(existing, replayed=True)
        if end > now:
            raise InvalidInput(f"period {period} is not over until {end.isoformat()}; invoice a closed month",
                               param="period")
        usage = self._usage(org_id, period, start, end, now)
        entry_id = None
        if usage.total > 0 and usage.currency is not None:
            ledger = Ledger(self.session)
            receivable = ledger.accounts.open(org_id, RECEIVABLE, kind=AccountKind.ASSET, currency=usage.currency)
            revenue = ledger.accounts.open(org_id, REVENUE, kind=AccountKind.REVENUE, currency=usage.currency)
            entry = ledger.post(org_id, f"billing:invoice:{period}",
                                [(receivable.id, usage.total, usage.currency),
                                 (revenue.id, -usage.total, usage.currency)],
                                kind="invoice", memo=f"usage {period}", info={"period": period})
            entry_id = entry.id
        row = BillingInvoice(org_id=org_id, period=period, currency=usage.currency, total=usage.total,
                             lines=[line.model_dump(mode="json") for line in usage.lines], entry_id=entry_id)
        try:
            with self.session.begin_nested():
                self.session.add(row)
                self.session.flush()
        except IntegrityError:  # a concurrent invoice of the same period won: the ledger key made its entry once
            stored = self._stored(org_id, period)
            if stored is None:
                raise
            return _invoice_out(stored, replayed=True)
        return _invoice_out(row)

    def _stored(self, org_id: str, period: str) -> BillingInvoice | None:
        return self.session.scalar(select(BillingInvoice).where(BillingInvoice.org_id == org_id,
                                                                BillingInvoice.period == period))


__all__ = ["RECEIVABLE", "REVENUE", "Billing"]

"""RL-as-a-service billing: meters, prices, usage, invoices and quotas (domain and wire types).

An operator running teachloop for customer organisations sets **prices** per meter:

| meter | unit | measured from |
|---|---|---|
| ``prompt_tokens`` / ``completion_tokens`` | 1,000 tokens | traces (per deployment and base model) |
| ``training_step`` | one optimizer step | a run's ``train`` metric rows |
| ``compute_second`` | one second of a run | a run's ``started_at`` .. ``finished_at`` (clipped to the period) |
| ``env_run`` | one environment episode | environment evaluations (``n_episodes``) |

A price applies to a **scope**: ``deployment:<id>`` (one deployment), ``base_model:<name>``,
or ``*`` (everything else); the most specific one wins. A price is a decimal string in the
currency (``"0.0015"`` USD per 1,000 tokens); it is stored exactly as an integer of
millionths of a minor unit (``micro_minor``), so sub-cent token prices are exact, and an
invoice line rounds once, half up, to the minor unit. All prices share one currency.

A **period** is a calendar month in UTC, ``"YYYY-MM"``. **Quotas** are per organisation:
``tokens_per_day`` (prompt + completion tokens since 00:00 UTC), ``concurrent_runs``
(queued or running training runs) and ``spend_per_month`` (minor units of metered usage
this month); work past a limit is refused with ``errors.QuotaExceeded`` (429).

This module is pure: stdlib and pydantic only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from pydantic import BaseModel, Field

from teachloop.core.errors import InvalidInput
from teachloop.core.money import CURRENCIES, MAX_MINOR, check_currency

#: Prices are stored in millionths of a minor unit.
MICRO = 1_000_000


class Meter(StrEnum):
    """What a price is per."""

    PROMPT_TOKENS = "prompt_tokens"
    COMPLETION_TOKENS = "completion_tokens"
    TRAINING_STEP = "training_step"
    COMPUTE_SECOND = "compute_second"
    ENV_RUN = "env_run"

    @property
    def per(self) -> int:
        """How many units one price buys (1,000 for tokens, else 1)."""
        return 1000 if self in (Meter.PROMPT_TOKENS, Meter.COMPLETION_TOKENS) else 1


class QuotaName(StrEnum):
    """The quotas an operator can set on an organisation."""

    TOKENS_PER_DAY = "tokens_per_day"
    CONCURRENT_RUNS = "concurrent_runs"
    SPEND_PER_MONTH = "spend_per_month"


_SCOPE = re.compile(r"^(\*|deployment:[A-Za-z0-9_.-]{1,200}|base_model:[^\s]{1,300})$")
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


def check_scope(scope: object, param: str = "scope") -> str:
    """``*``, ``deployment:<id>`` or ``base_model:<name>``; ``InvalidInput`` naming ``param`` otherwise."""
    if not isinstance(scope, str) or not _SCOPE.match(scope):
        raise InvalidInput(f"{param} must be '*', 'deployment:<id>' or 'base_model:<name>', not {scope!r}",
                           param=param)
    return scope


def price_to_micro(value: str, currency: str, param: str = "price") -> int:
    """A decimal price string in ``currency`` -> millionths of a minor unit (exact, else ``InvalidInput``)."""
    currency = check_currency(currency)
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"{param} must be a decimal string such as '0.0015', not {value!r}", param=param) from None
    if not amount.is_finite() or amount < 0:
        raise InvalidInput(f"{param} must be a finite amount of at least 0, not {value!r}", param=param)
    micro = amount * (10 ** CURRENCIES[currency]) * MICRO
    if micro != micro.to_integral_value():
        raise InvalidInput(f"{param} {value!r} {currency} is finer than a millionth of a minor unit", param=param)
    if micro > MAX_MINOR * MICRO:
        raise InvalidInput(f"{param} {value!r} {currency} is too large", param=param)
    return int(micro)


def micro_to_price(micro: int, currency: str) -> str:
    """Millionths of a minor unit -> the decimal price string (``"0.0015"``)."""
    value = Decimal(micro) / (Decimal(10) ** CURRENCIES[currency]) / MICRO
    text = format(value.normalize(), "f")
    return text


def line_amount(quantity: int, micro: int, meter: Meter) -> int:
    """The minor units ``quantity`` units cost at ``micro`` per ``meter.per``: rounded once, half up."""
    numerator = quantity * micro
    denominator = meter.per * MICRO
    return (2 * numerator + denominator) // (2 * denominator)


def parse_period(period: object, param: str = "period") -> tuple[datetime, datetime]:
    """``"YYYY-MM"`` -> its [start, end) in UTC; ``InvalidInput`` naming ``param`` otherwise."""
    match = _PERIOD.match(period) if isinstance(period, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
        raise InvalidInput(f"{param} must be a month 'YYYY-MM' (e.g. '2026-11'), not {period!r}", param=param)
    year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_of(moment: datetime) -> str:
    """The ``"YYYY-MM"`` period ``moment`` falls in."""
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def previous_period(moment: datetime) -> str:
    """The period before the one ``moment`` falls in (the last closed month)."""
    moment = moment.astimezone(UTC)
    year, month = (moment.year, moment.month - 1) if moment.month > 1 else (moment.year - 1, 12)
    return f"{year:04d}-{month:02d}"


class PriceSet(BaseModel):
    """Body of ``PUT /api/billing/prices``: one price (replaces the one for the same meter and scope)."""

    meter: Meter
    scope: str = Field(default="*", description="'*', 'deployment:<id>' or 'base_model:<name>'; the most specific applies.")
    price: str = Field(description="Decimal amount in `currency` per unit (per 1,000 tokens for token meters).")
    currency: str = Field(default="USD", description="ISO 4217 code; every price shares one currency.")


class Price(BaseModel):
    """One operator-set price."""

    meter: Meter
    scope: str
    price: str
    currency: str
    per: int = Field(description="Units the price buys: 1000 for token meters, else 1.")
    updated_at: datetime


class PriceList(BaseModel):
    """The price table."""

    data: list[Price]


class UsageLine(BaseModel):
    """One meter's usage under one scope in a period, and what it costs."""

    meter: Meter
    scope: str = Field(description="The scope of the price that applied ('*' when none is set).")
    subject: str = Field(description="What was used: deployment id, base model, run id or environment.")
    quantity: int
    price: str | None = Field(default=None, description="The price that applied; null when no price covers the line.")
    amount: int = Field(description="Minor units this line costs.")


class Usage(BaseModel):
    """An organisation's metered usage in a period."""

    org_id: str
    period: str
    currency: str | None
    lines: list[UsageLine]
    total: int = Field(description="Sum of the lines' amounts in minor units.")


class Invoice(BaseModel):
    """An invoice: the usage of one organisation in one period, posted to the ledger once."""

    id: str
    org_id: str
    period: str
    currency: str | None
    total: int
    lines: list[UsageLine]
    entry_id: str | None = Field(default=None, description="The ledger entry (none when nothing was due).")
    created_at: datetime
    replayed: bool = Field(default=False, description="True when this invoice already existed and nothing was posted.")


class InvoiceList(BaseModel):
    """An organisation's invoices, newest period first."""

    data: list[Invoice]


class QuotaSet(BaseModel):
    """Body of ``PUT /api/billing/quotas/{org_id}``: set (or with ``limit: null`` remove) one quota."""

    name: QuotaName
    limit: int | None = Field(default=None, ge=0, le=MAX_MINOR, description="Tokens, runs, or minor units; null removes it.")


class Quota(BaseModel):
    """One quota of an organisation and how much of it is used now."""

    name: QuotaName
    limit: int
    used: int
    resets: str = Field(description="When the usage resets: an ISO time, or the event that frees it.")


class QuotaList(BaseModel):
    """An organisation's quotas."""

    org_id: str
    data: list[Quota]


__all__ = [
    "MICRO",
    "Invoice",
    "InvoiceList",
    "Meter",
    "Price",
    "PriceList",
    "PriceSet",
    "Quota",
    "QuotaList",
    "QuotaName",
    "QuotaSet",
    "Usage",
    "UsageLine",
    "check_scope",
    "line_amount",
    "micro_to_price",
    "parse_period",
    "period_of",
    "previous_period",
    "price_to_micro",
]

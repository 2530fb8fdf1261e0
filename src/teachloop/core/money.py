"""Money and the ledger's domain types: integer minor units, ISO 4217 currencies, double entry.

An amount is always an ``int`` of the currency's minor unit (cents for USD, yen for
JPY, fils for KWD), never a float. ``CURRENCIES`` maps every active ISO 4217 code
to its minor-unit exponent; an unknown code is refused. ``to_minor("12.34", "USD")``
turns a decimal string into minor units and refuses a fraction of a minor unit
(``"12.345"`` USD); ``format_minor`` turns minor units back into ``"12.34 USD"``.

Sign convention (``Posting.amount``): a debit is positive, a credit negative, so the
postings of every ``Entry`` sum to zero per currency. Each ``AccountKind`` has a
normal side: asset and expense accounts grow with debits, liability, revenue and
equity accounts with credits. ``AccountKind.normal_sign * balance`` is what the
account "holds"; an account flagged non-negative never holds less than zero.

The ``check_*`` / ``of`` helpers raise ``InvalidInput`` naming the parameter; building
the pydantic models directly with bad values raises pydantic's ``ValidationError``
(also a ``ValueError``). This module is pure: stdlib and pydantic only.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from teachloop.core.errors import InvalidInput

#: Largest magnitude of one posting or price, in minor units (10^15: sums of millions stay in 64 bits).
MAX_MINOR = 10**15

# Active ISO 4217 codes (2024 list) by minor-unit exponent; every code not listed has 2.
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN "
    "BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP "
    "GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK "
    "LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK "
    "NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD "
    "SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG "
    "YER ZAR ZMW ZWG ZWL"
)

#: Every known ISO 4217 currency code -> its minor-unit exponent (USD: 2, JPY: 0, KWD: 3).
CURRENCIES: MappingProxyType[str, int] = MappingProxyType(
    {
        code: exponent
        for exponent, codes in ((0, _EXPONENT_0), (2, _EXPONENT_2), (3, _EXPONENT_3), (4, _EXPONENT_4))
        for code in codes.split()
    }
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}$")
_KIND = re.compile(r"^[a-z][a-z0-9_.]{0,39}$")


def check_currency(code: object, param: str = "currency") -> str:
    """``code`` if it is a known ISO 4217 code (upper case, e.g. ``"USD"``); ``InvalidInput`` otherwise."""
    if not isinstance(code, str) or code not in CURRENCIES:
        hint = " (codes are upper case)" if isinstance(code, str) and code.upper() in CURRENCIES else ""
        raise InvalidInput(
            f"unknown currency {code!r}{hint}: use an ISO 4217 code such as USD or EUR", param=param
        )
    return code


def check_minor(amount: object, param: str = "amount", *, positive: bool = False) -> int:
    """``amount`` if it is an int of minor units within ``MAX_MINOR`` (and > 0 when ``positive``)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidInput(
            f"{param} must be an integer number of minor units (e.g. 1250 for 12.50 USD), "
            f"got {type(amount).__name__} {amount!r}",
            param=param,
        )
    if positive and amount <= 0:
        raise InvalidInput(f"{param} must be positive, got {amount}", param=param)
    if abs(amount) > MAX_MINOR:
        raise InvalidInput(
            f"{param} {amount} is beyond the largest amount, {MAX_MINOR} minor units", param=param
        )
    return amount


def to_minor(value: str | Decimal | int, currency: str, param: str = "amount") -> int:
    """Minor units of a decimal ``value`` in ``currency`` (``"12.34"`` USD -> 1234).

    Refuses text that is not a finite decimal and a fraction of a minor unit
    (``"12.345"`` USD, ``"1.5"`` JPY) with ``InvalidInput``. Floats are refused: pass text.
    """
    exponent = CURRENCIES[check_currency(currency)]
    if isinstance(value, float):
        raise InvalidInput(
            f"{param}: pass amounts as text or integers, never floats (got {value!r})", param=param
        )
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidInput(f"{param}: {value!r} is not a decimal number", param=param) from None
    if not number.is_finite():
        raise InvalidInput(f"{param}: {value!r} is not a finite number", param=param)
    minor = number.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise InvalidInput(
            f"{param}: {value} has a fraction of a minor unit; {currency} has {exponent} decimal places",
            param=param,
        )
    return check_minor(int(minor), param)


def format_minor(amount: int, currency: str) -> str:
    """``amount`` minor units as text with the currency's decimals (-1234 USD -> ``"-12.34 USD"``)."""
    exponent = CURRENCIES.get(currency, 2)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole}.{frac:0{exponent}d} {currency}" if exponent else f"{sign}{whole} {currency}"


def check_account_name(name: object, param: str = "name") -> str:
    """``name`` if it is 1-200 letters, digits and ``._:@/-``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"invalid account name {name!r}: use 1-200 letters, digits and '._:@/-', "
            "starting with a letter or digit (e.g. 'buyer:prepaid')",
            param=param,
        )
    return name


def check_entry_kind(kind: object, param: str = "kind") -> str:
    """``kind`` if it is 1-40 lower-case letters, digits, ``_`` and ``.``, starting with a letter."""
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise InvalidInput(
            f"invalid entry kind {kind!r}: use 1-40 lower-case letters, digits, '_' and '.' (e.g. 'order')",
            param=param,
        )
    return kind


def _currency_validator(value: Any) -> str:
    if not isinstance(value, str) or value not in CURRENCIES:
        raise ValueError(f"unknown currency {value!r}: use an ISO 4217 code such as USD or EUR")
    return value


class Money(BaseModel):
    """An amount of one currency in integer minor units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: StrictInt = Field(
        ge=-MAX_MINOR, le=MAX_MINOR, description="Integer minor units (cents for USD, yen for JPY)."
    )
    currency: str = Field(description="ISO 4217 code, upper case (a key of ``CURRENCIES``).")

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        return _currency_validator(value)

    @classmethod
    def of(cls, amount: object, currency: object, *, param: str = "amount", positive: bool = False) -> Money:
        """``Money`` from untrusted values; ``InvalidInput`` naming ``param`` (or ``currency``) when bad."""
        code = check_currency(currency, "currency")
        return cls(amount=check_minor(amount, param, positive=positive), currency=code)

    @classmethod
    def parse(cls, value: str | Decimal | int, currency: str, *, param: str = "amount") -> Money:
        """``Money`` of a decimal ``value`` (``"12.34"`` USD -> 1234 minor units); see ``to_minor``."""
        return cls(amount=to_minor(value, currency, param), currency=currency)

    def __str__(self) -> str:
        return format_minor(self.amount, self.currency)


class AccountKind(StrEnum):
    """The five kinds of account; each has a normal side (see ``normal_sign``)."""

    ASSET = "asset"
    LIABILITY = "liability"
    REVENUE = "revenue"
    EXPENSE = "expense"
    EQUITY = "equity"

    @property
    def normal_sign(self) -> int:
        """+1 for debit-normal kinds (asset, expense); -1 for liability, revenue and equity."""
        return 1 if self in (AccountKind.ASSET, AccountKind.EXPENSE) else -1


class Account(BaseModel):
    """A snapshot of one ledger account."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Account id, ``acct_...``.")
    org_id: str = Field(description="The organisation that owns the account.")
    name: str = Field(
        description="Unique within the organisation, e.g. 'buyer:prepaid' or 'psp_clearing:USD'."
    )
    kind: AccountKind = Field(description="Asset, liability, revenue, expense or equity.")
    currency: str = Field(description="The one ISO 4217 currency the account holds.")
    non_negative: bool = Field(description="Whether the account may never hold less than zero.")
    balance: int = Field(description="Sum of the account's postings in minor units (debits positive).")
    created_at: datetime = Field(description="When the account was opened (UTC).")

    @property
    def held(self) -> int:
        """What the account holds on its normal side: ``kind.normal_sign * balance``."""
        return self.kind.normal_sign * self.balance


class Posting(BaseModel):
    """One line of an entry: an amount debited (positive) or credited (negative) to one account."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account_id: str = Field(
        description="The account, ``acct_...`` (or its name within the entry's organisation)."
    )
    amount: StrictInt = Field(
        ge=-MAX_MINOR, le=MAX_MINOR, description="Minor units; positive debits, negative credits, never zero."
    )
    currency: str = Field(description="ISO 4217 code; must be the account's currency.")

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        return _currency_validator(value)

    @field_validator("amount")
    @classmethod
    def _nonzero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("a posting of zero moves nothing")
        return value

    @property
    def money(self) -> Money:
        """The amount as ``Money``."""
        return Money(amount=self.amount, currency=self.currency)


class Entry(BaseModel):
    """One journal entry: two or more postings summing to zero per currency. Entries never change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Entry id, ``ent_...``.")
    org_id: str = Field(description="The organisation that made the request (the idempotency key's scope).")
    key: str = Field(description="The idempotency key the entry was posted with.")
    kind: str = Field(
        description="What happened: 'deposit', 'order', 'hold', 'capture', 'payout', 'reversal', ..."
    )
    memo: str = Field(default="", description="Free text for people reading the ledger.")
    postings: tuple[Posting, ...] = Field(description="The postings, as posted (account ids resolved).")
    reversal_of: str | None = Field(default=None, description="The entry this one reverses, if any.")
    settles: str | None = Field(
        default=None,
        description="The hold or payout entry this one resolves (capture, release, paid, failed).",
    )
    info: dict[str, Any] = Field(
        default_factory=dict, description="Structured detail (payout destination, ...)."
    )
    created_by: str = Field(
        default="system", description="Who posted it: a user or key id, or a system name."
    )
    created_at: datetime = Field(description="When it was posted (UTC).")
    replayed: bool = Field(
        default=False, description="True when this is the stored result of an earlier call with the same key."
    )

    def total(self, account_id: str) -> int:
        """Net minor units this entry posts to ``account_id``."""
        return sum(p.amount for p in self.postings if p.account_id == account_id)


__all__ = [
    "CURRENCIES",
    "MAX_MINOR",
    "Account",
    "AccountKind",
    "Entry",
    "Money",
    "Posting",
    "check_account_name",
    "check_currency",
    "check_entry_kind",
    "check_minor",
    "format_minor",
    "to_minor",
]

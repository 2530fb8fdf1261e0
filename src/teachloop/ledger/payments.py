"""Payouts through a payment-provider interface, and a deterministic test provider.

A payout moves money out of the platform to a party's bank or wallet in three steps:

1. ``Payouts.request`` posts, in its own committed transaction, the entry ``payout``
   (Dr the party's payable / Cr ``payout_in_transit:<CUR>``) under the caller's
   idempotency key. The key the provider sees (``<org_id>:<key>``) is stored on that
   entry *before* the provider is called, so a retry after a crash reuses it.
2. It calls ``PaymentProvider.payout`` outside any database transaction.
3. The provider's answer settles the payout with exactly one entry (``settles`` = the
   payout, unique): ``payout.paid`` (Dr ``payout_in_transit`` / Cr ``psp_clearing``) or
   ``payout.failed`` (the money goes back to the payable). ``pending`` settles
   nothing: the provider's webhook does, later (``Payouts.webhook``, idempotent by the
   payout it names). A timeout leaves the payout in transit; calling ``request`` again
   with the same key asks the provider again with the same provider key.

The status of a payout (``in_transit``, ``paid``, ``failed``) is derived from the
ledger, never stored. ``TestProvider`` is deterministic, remembers every key it has
seen (a key pays at most once), and has the failure modes tests need, chosen per
destination: ``declined``, ``timeout`` (the provider paid but the answer was lost),
``late`` (``pending`` now, a ``paid`` webhook later) and ``late_declined``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.errors import InvalidInput, NotFound, ServiceUnavailable
from teachloop.core.money import AccountKind, Entry, Money, Posting, format_minor
from teachloop.ledger.book import Ledger, check_key
from teachloop.store.db import Database


class ProviderTimeout(ServiceUnavailable):
    """The payment provider did not answer in time; whether it paid is unknown until it answers a retry."""

    code = "provider_timeout"


class ProviderOutcome(StrEnum):
    """What a provider says about a payout."""

    PAID = "paid"
    PENDING = "pending"
    DECLINED = "declined"


class ProviderReply(BaseModel):
    """A provider's answer to one payout call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: ProviderOutcome = Field(description="paid, pending (a webhook follows) or declined.")
    reference: str = Field(default="", description="The provider's id for the payout (e.g. 'po_...').")
    message: str = Field(default="", description="Why, for a decline.")


class PayoutEvent(BaseModel):
    """A provider webhook: the final outcome of a payout it answered ``pending``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(description="The provider's unique id for this event.")
    provider_key: str = Field(description="The idempotency key the payout was sent with.")
    outcome: ProviderOutcome = Field(description="paid or declined.")
    reference: str = Field(default="", description="The provider's id for the payout.")
    message: str = Field(default="", description="Why, for a decline.")


@runtime_checkable
class PaymentProvider(Protocol):
    """What the ledger needs from a payment provider (Stripe Connect, Wise, the test provider)."""

    name: str

    def payout(self, key: str, amount: Money, destination: str) -> ProviderReply:
        """Send ``amount`` to ``destination`` once per ``key`` (a repeated key returns the first answer).

        Raises ``ProviderTimeout`` when the provider does not answer.
        """
        ...


class PayoutStatus(StrEnum):
    """Where a payout stands, derived from the ledger."""

    IN_TRANSIT = "in_transit"
    PAID = "paid"
    FAILED = "failed"


class Payout(BaseModel):
    """A payout and its derived status."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_id: str = Field(description="The ``payout`` entry that moved the money into transit.")
    org_id: str = Field(description="The organisation that requested it.")
    key: str = Field(description="The caller's idempotency key.")
    account_id: str = Field(description="The payable account the money came from.")
    amount: Money = Field(description="How much.")
    destination: str = Field(description="The provider's destination (a connected account, a wallet).")
    provider: str = Field(description="The provider's name.")
    provider_key: str = Field(description="The idempotency key the provider sees: '<org_id>:<key>'.")
    status: PayoutStatus = Field(description="in_transit, paid or failed.")
    settlement_id: str | None = Field(default=None, description="The entry that settled it, once settled.")
    message: str = Field(
        default="", description="The provider's reason for a failure, or why it is still in transit."
    )


class Payouts:
    """Payouts of one database through one provider (each step its own transaction; see the module)."""

    def __init__(self, db: Database, provider: PaymentProvider) -> None:
        self.db = db
        self.provider = provider

    def request(
        self, org_id: str, key: str, account: str, amount: Money, destination: str, *, actor: str = "system"
    ) -> Payout:
        """Pay ``amount`` out of liability account ``account`` to ``destination`` (see the module)."""
        check_key(key)
        if not isinstance(destination, str) or not 1 <= len(destination) <= 200:
            raise InvalidInput("destination must be 1-200 characters", param="destination")
        with self.db.session() as session:
            ledger = Ledger(session)
            source = ledger.accounts.get(org_id, account)
            if source.kind is not AccountKind.LIABILITY:
                raise InvalidInput(
                    f"payouts come from liability accounts (a party's payable); {source.name!r} "
                    f"is {source.kind.value}",
                    param="account",
                )
            if not isinstance(amount, Money) or amount.amount <= 0:
                raise InvalidInput("amount must be a positive Money", param="amount")
            transit = ledger.accounts.system_account(org_id, "payout_in_transit", amount.currency)
            entry = ledger.post(
                org_id,
                key,
                [(source.id, amount.amount, amount.currency), (transit.id, -amount.amount, amount.currency)],
                kind="payout",
                memo=f"payout to {destination}",
                actor=actor,
                info={
                    "provider": self.provider.name,
                    "destination": destination,
                    "provider_key": f"{org_id}:{key}",
                    "source": source.id,
                },
            )
            payout = self._payout(ledger, entry)
        if payout.status is not PayoutStatus.IN_TRANSIT:
            return payout
        try:
            reply = self.provider.payout(payout.provider_key, payout.amount, destination)
        except ProviderTimeout as err:
            return payout.model_copy(
                update={"message": f"{err}; retry with the same key or wait for the webhook"}
            )
        return self._apply(org_id, payout.entry_id, reply.outcome, reply.reference, reply.message)

    def webhook(self, event: PayoutEvent) -> Payout:
        """Apply a provider event: settle the payout it names (once; a repeated event changes nothing)."""
        org_id, sep, key = event.provider_key.partition(":")
        if not sep:
            raise InvalidInput(f"event {event.event_id} names no payout we sent", param="provider_key")
        if event.outcome is ProviderOutcome.PENDING:
            raise InvalidInput("a webhook carries a final outcome: paid or declined", param="outcome")
        with self.db.session(write=False) as session:
            entry = Ledger(session).by_key(org_id, key)
        if entry is None or entry.kind != "payout":
            raise NotFound(f"no payout was sent with key {event.provider_key!r}", param="provider_key")
        return self._apply(org_id, entry.id, event.outcome, event.reference, event.message)

    def get(self, org_id: str, entry_id: str) -> Payout:
        """The payout whose ``payout`` entry is ``entry_id``, with its derived status."""
        with self.db.session(write=False) as session:
            ledger = Ledger(session)
            entry = ledger.entry(org_id, entry_id)
            if entry.kind != "payout":
                raise NotFound(f"entry {entry_id} is not a payout", param="payout")
            return self._payout(ledger, entry)

    def _apply(
        self, org_id: str, entry_id: str, outcome: ProviderOutcome, reference: str, message: str
    ) -> Payout:
        with self.db.session() as session:
            ledger = Ledger(session)
            entry = ledger.entry(org_id, entry_id)
            if outcome is not ProviderOutcome.PENDING:
                amount = -next(p.amount for p in entry.postings if p.amount < 0)
                currency = entry.postings[0].currency
                transit = next(p.account_id for p in entry.postings if p.amount < 0)
                if outcome is ProviderOutcome.PAID:
                    clearing = ledger.accounts.system_account(org_id, "psp_clearing", currency)
                    to, kind = clearing.id, "payout.paid"
                else:
                    to, kind = entry.info["source"], "payout.failed"
                ledger.settle(
                    org_id,
                    entry.id,
                    [
                        Posting(account_id=transit, amount=amount, currency=currency),
                        Posting(account_id=to, amount=-amount, currency=currency),
                    ],
                    kind=kind,
                    memo=message or reference,
                    info={"reference": reference, "message": message},
                )
            payout = self._payout(ledger, entry)
        if payout.status is PayoutStatus.IN_TRANSIT:
            return payout.model_copy(
                update={"message": "the provider has not settled it yet; its webhook will"}
            )
        return payout

    @staticmethod
    def _payout(ledger: Ledger, entry: Entry) -> Payout:
        credit = next(p for p in entry.postings if p.amount < 0)
        settled = ledger.settlement(entry.id)
        status = PayoutStatus.IN_TRANSIT
        message = ""
        if settled is not None:
            status = PayoutStatus.PAID if settled.kind == "payout.paid" else PayoutStatus.FAILED
            message = str((settled.info or {}).get("message", ""))
        return Payout(
            entry_id=entry.id,
            org_id=entry.org_id,
            key=entry.key,
            account_id=entry.info["source"],
            amount=Money(amount=-credit.amount, currency=credit.currency),
            destination=entry.info["destination"],
            provider=entry.info["provider"],
            provider_key=entry.info["provider_key"],
            status=status,
            settlement_id=None if settled is None else settled.id,
            message=message,
        )


class TestProvider:
    """A deterministic in-memory provider; ``outcomes`` maps a destination to its behaviour.

    Behaviours (default ``paid``): ``paid``; ``declined``; ``timeout`` (the first call for a
    key pays but raises ``ProviderTimeout``; later calls with that key answer ``paid``);
    ``late`` / ``late_declined`` (answer ``pending`` and queue a webhook event, fetched
    with ``take_events``). Every key pays at most once (``paid`` holds the sums paid).
    """

    __test__ = False  # not a pytest test class
    name = "test"
    BEHAVIOURS = ("paid", "declined", "timeout", "late", "late_declined")

    def __init__(self, outcomes: dict[str, str] | None = None) -> None:
        self.outcomes = dict(outcomes or {})
        for destination, behaviour in self.outcomes.items():
            if behaviour not in self.BEHAVIOURS:
                raise InvalidInput(
                    f"unknown test-provider behaviour {behaviour!r} for {destination!r}; "
                    f"use one of {', '.join(self.BEHAVIOURS)}",
                    param="outcomes",
                )
        self.replies: dict[str, ProviderReply] = {}
        self.paid: dict[str, Money] = {}
        self.calls: list[str] = []
        self._events: list[PayoutEvent] = []

    def payout(self, key: str, amount: Money, destination: str) -> ProviderReply:
        """Answer per ``outcomes[destination]``; a repeated key gets its first answer (see the class)."""
        self.calls.append(key)
        if key in self.replies:
            return self.replies[key]
        behaviour = self.outcomes.get(destination, "paid")
        reference = f"po_{len(self.replies) + 1:06d}"
        if behaviour in ("paid", "timeout"):
            self.paid[key] = amount
            self.replies[key] = ProviderReply(outcome=ProviderOutcome.PAID, reference=reference)
            if behaviour == "timeout":
                raise ProviderTimeout(
                    f"test provider timed out paying {format_minor(amount.amount, amount.currency)}"
                )
        elif behaviour == "declined":
            self.replies[key] = ProviderReply(
                outcome=ProviderOutcome.DECLINED,
                reference=reference,
                message=f"destination {destination!r} declined the payout",
            )
        else:
            self.replies[key] = ProviderReply(outcome=ProviderOutcome.PENDING, reference=reference)
            final = ProviderOutcome.PAID if behaviour == "late" else ProviderOutcome.DECLINED
            if final is ProviderOutcome.PAID:
                self.paid[key] = amount
            self._events.append(
                PayoutEvent(
                    event_id=f"evt_{len(self._events) + 1:06d}",
                    provider_key=key,
                    outcome=final,
                    reference=reference,
                    message=""
                    if final is ProviderOutcome.PAID
                    else f"destination {destination!r} declined the payout",
                )
            )
        return self.replies[key]

    def take_events(self) -> list[PayoutEvent]:
        """The webhook events not yet taken, oldest first."""
        events, self._events = self._events, []
        return events


__all__ = [
    "PaymentProvider",
    "Payout",
    "PayoutEvent",
    "PayoutStatus",
    "Payouts",
    "ProviderOutcome",
    "ProviderReply",
    "ProviderTimeout",
    "TestProvider",
]

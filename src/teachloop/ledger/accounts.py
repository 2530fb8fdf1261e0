"""Ledger accounts: open, find and list an organisation's accounts.

``Accounts(session)`` works inside a caller-owned session and never commits. An
account belongs to one organisation, holds one currency and has one
``AccountKind``; its name is unique within the organisation. ``open`` is
idempotent: opening a name that exists with the same kind, currency and flag
returns it, with anything else is a ``Conflict`` (also under concurrent opens).
An account is referred to by its id (``acct_...``) or by its name within the
caller's organisation; another organisation's account is ``NotFound`` exactly like
a missing one. Reads return frozen ``core.money.Account`` snapshots, never ORM rows.

``system_account`` opens (or finds) the accounts the ledger itself moves money
through, one per organisation and currency: ``holds:<CUR>`` (money held for a
pending hold), ``payout_in_transit:<CUR>`` (payouts sent to the provider, not yet
settled) -- both non-negative liabilities -- and ``psp_clearing:<CUR>`` (an asset:
what the payment provider holds for the platform).
"""

from __future__ import annotations

import builtins

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.core.ids import is_id
from teachloop.core.money import Account, AccountKind, check_account_name, check_currency
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.ledger import LedgerAccount

#: The ledger's own accounts: name prefix -> (kind, non_negative). The full name is ``<prefix>:<CUR>``.
SYSTEM_ACCOUNTS: dict[str, tuple[AccountKind, bool]] = {
    "holds": (AccountKind.LIABILITY, True),
    "payout_in_transit": (AccountKind.LIABILITY, True),
    "psp_clearing": (AccountKind.ASSET, False),
}


def snapshot(row: LedgerAccount) -> Account:
    """The frozen ``Account`` of a row."""
    return Account(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        kind=AccountKind(row.kind),
        currency=row.currency,
        non_negative=bool(row.non_negative),
        balance=int(row.balance),
        created_at=row.created_at,
    )


class Accounts:
    """An organisation's ledger accounts, within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def open(
        self,
        org_id: str,
        name: str,
        *,
        kind: AccountKind | str,
        currency: str,
        non_negative: bool = False,
        actor: str = "system",
    ) -> Account:
        """The account ``name`` of the organisation, opened now unless it exists with the same settings.

        ``Conflict`` if it exists with another kind, currency or non-negative flag.
        """
        check_account_name(name)
        try:
            kind = AccountKind(kind)
        except ValueError:
            raise InvalidInput(
                f"unknown account kind {kind!r}: use one of {', '.join(k.value for k in AccountKind)}",
                param="kind",
            ) from None
        check_currency(currency)
        if not isinstance(non_negative, bool):
            raise InvalidInput("non_negative must be true or false", param="non_negative")
        row = self._by_name(org_id, name)
        if row is None:
            new = LedgerAccount(
                org_id=org_id,
                name=name,
                kind=kind.value,
                currency=currency,
                non_negative=non_negative,
                balance=0,
                created_by=actor,
            )
            try:
                with self.session.begin_nested():
                    self.session.add(new)
                    self.session.flush()
            except IntegrityError:  # opened concurrently by another transaction: compare with that one
                row = self._by_name(org_id, name)
                if row is None:  # pragma: no cover - the unique constraint is the only one that can fail
                    raise
            else:
                AuditLog(self.session).record(
                    org_id,
                    actor,
                    "ledger.account.open",
                    new.id,
                    {
                        "name": name,
                        "kind": kind.value,
                        "currency": currency,
                        "non_negative": non_negative,
                    },
                )
                return snapshot(new)
        if (row.kind, row.currency, bool(row.non_negative)) != (kind.value, currency, non_negative):
            raise Conflict(
                f"account {name!r} exists as a {row.kind} account in {row.currency} "
                f"(non_negative={bool(row.non_negative)}), not a {kind.value} one in {currency} "
                f"(non_negative={non_negative})",
                param="name",
            )
        return snapshot(row)

    def system_account(self, org_id: str, prefix: str, currency: str) -> Account:
        """The ledger's own account ``<prefix>:<currency>`` of the organisation (see ``SYSTEM_ACCOUNTS``)."""
        kind, non_negative = SYSTEM_ACCOUNTS[prefix]
        return self.open(
            org_id, f"{prefix}:{currency}", kind=kind, currency=currency, non_negative=non_negative
        )

    def get(self, org_id: str, ref: str, *, param: str = "account") -> Account:
        """The account ``ref`` (id or name) of the organisation; ``NotFound`` otherwise."""
        return snapshot(self.row(org_id, ref, param=param))

    def row(self, org_id: str, ref: str, *, param: str = "account") -> LedgerAccount:
        """The ORM row of account ``ref`` (id or name) of the organisation; ``NotFound`` otherwise."""
        row = self.find(ref, org_ids=(org_id,))
        if row is None:
            raise NotFound(f"ledger account {ref!r} not found", param=param)
        return row

    def find(self, ref: str, *, org_ids: tuple[str, ...]) -> LedgerAccount | None:
        """The row of ``ref``: an id owned by one of ``org_ids`` or a name in ``org_ids[0]``; else None."""
        if not isinstance(ref, str) or not ref:
            return None
        if is_id(ref, "acct"):
            row = self.session.get(LedgerAccount, ref)
            return row if row is not None and row.org_id in org_ids else None
        return self._by_name(org_ids[0], ref)

    def list(self, org_id: str, *, currency: str | None = None) -> builtins.list[Account]:
        """The organisation's accounts by name (optionally one currency only)."""
        query = select(LedgerAccount).where(LedgerAccount.org_id == org_id)
        if currency is not None:
            query = query.where(LedgerAccount.currency == check_currency(currency))
        return [snapshot(r) for r in self.session.scalars(query.order_by(LedgerAccount.name))]

    def _by_name(self, org_id: str, name: str) -> LedgerAccount | None:
        return self.session.scalars(
            select(LedgerAccount).where(LedgerAccount.org_id == org_id, LedgerAccount.name == name)
        ).first()


__all__ = ["SYSTEM_ACCOUNTS", "Accounts", "snapshot"]

"""Ledger tables: accounts, journal entries and their postings (double entry, integer minor units).

- ``LedgerAccount``: one account of an organisation, unique by ``(org_id, name)``, in one
  currency, of one ``core.money.AccountKind``; ``non_negative`` accounts may never hold
  less than zero. ``balance`` caches the sum of the account's postings (debits positive);
  it changes only in the transaction that inserts those postings, under a row lock.
- ``LedgerEntry``: one journal entry, unique by ``(org_id, idem_key)``, with the hash of
  the request that made it. ``reversal_of`` (the entry it reverses) and ``settles`` (the
  hold or payout entry it resolves) are unique, so an entry is reversed or settled at most once.
- ``LedgerPosting``: line ``line`` (0, 1, ...) of an entry; ``amount`` is never zero (a CHECK).

Entries and postings are append-only: the ORM refuses to update or delete them
(corrections are reversing entries). This module knows nothing of the rules that
keep entries balanced; ``teachloop.ledger`` enforces them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Index, Integer, String, UniqueConstraint, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, id_column, ref_column, utc_now

ACCOUNT_KINDS = ("asset", "liability", "revenue", "expense", "equity")


class LedgerAccount(OrgOwned, Base):
    """An account: kind, currency, the non-negative flag and the cached balance."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (
        UniqueConstraint("org_id", "name"),
        CheckConstraint("kind IN ('asset', 'liability', 'revenue', 'expense', 'equity')", name="kind"),
    )

    id: Mapped[str] = id_column("acct")
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    non_negative: Mapped[bool] = mapped_column(Boolean, default=False)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_by: Mapped[str] = mapped_column(String(200), default="system")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class LedgerEntry(OrgOwned, Base):
    """A journal entry (append-only); its postings sum to zero per currency."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("org_id", "idem_key"),
        UniqueConstraint("reversal_of"),
        UniqueConstraint("settles"),
        Index("ix_ledger_entries_org_created", "org_id", "created_at"),
    )

    id: Mapped[str] = id_column("ent")
    idem_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(71))
    kind: Mapped[str] = mapped_column(String(40))
    memo: Mapped[str] = mapped_column(String(500), default="")
    reversal_of: Mapped[str | None] = ref_column("ledger_entries.id", nullable=True, index=False)
    settles: Mapped[str | None] = ref_column("ledger_entries.id", nullable=True, index=False)
    info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(String(200), default="system")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class LedgerPosting(OrgOwned, Base):
    """One posting (append-only): ``amount`` minor units of ``currency`` to one account; debits positive."""

    __tablename__ = "ledger_postings"
    __table_args__ = (CheckConstraint("amount <> 0", name="nonzero"),)

    id: Mapped[str] = id_column("pst")
    entry_id: Mapped[str] = ref_column("ledger_entries.id")
    line: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[str] = ref_column("ledger_accounts.id")
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)


def _refuse(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    raise PermissionError(
        f"ledger entries and postings are append-only; refusing to change {target.id} (post a reversal)"
    )


for _table in (LedgerEntry, LedgerPosting):
    event.listen(_table, "before_update", _refuse)
    event.listen(_table, "before_delete", _refuse)


__all__ = ["ACCOUNT_KINDS", "LedgerAccount", "LedgerEntry", "LedgerPosting"]

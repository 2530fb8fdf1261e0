"""The book: post balanced entries, reverse them, hold and capture, derive balances, check invariants.

``Ledger(session)`` works inside a caller-owned session and never commits, so a
caller can post in the same transaction as the order or payout it records (the
entry is the commit point). The rules, each enforced on every call:

- **Double entry.** An entry has at least two postings of non-zero integer minor
  units in known ISO 4217 currencies, each in its account's currency, summing to
  zero per currency. Bad input is ``InvalidInput`` naming the posting; nothing is written.
- **Append-only.** Entries and postings are never updated or deleted; ``reverse``
  posts the negated postings with ``reversal_of`` (at most once per entry).
- **Non-negative accounts** never hold less than zero. ``post`` locks the accounts it
  touches in id order (PostgreSQL ``SELECT ... FOR UPDATE``; SQLite write sessions
  are serialised by ``BEGIN IMMEDIATE``), reads their cached balances, refuses with
  ``InsufficientFunds`` when one would go below zero, and updates the cached balances
  in the same transaction as the postings. Concurrent orders cannot overdraw.
- **Idempotency.** Every money-moving call takes a key, unique per organisation
  (1-255 printable ASCII characters; ``ledger:`` is reserved). The same key with the
  same request returns the stored entry (``replayed=True``) and posts nothing; the
  same key with a different request is ``IdempotencyConflict`` (409). A refused
  request stores nothing, so its key may be used again.
- **Holds** (``hold`` / ``capture`` / ``release``) move money from a liability account
  (a party's balance) to the organisation's ``holds:<CUR>`` account; one later entry
  (``settles`` = the hold, unique) captures part or all of it and returns the rest.

Postings may touch accounts of other organisations (a sale credits the seller's
payable) only when the caller lists those organisations in ``counterparties``.
``trial_balance`` and ``check`` derive everything from the postings; ``check``
returns a ``LedgerReport`` naming each broken invariant.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, IdempotencyConflict, InsufficientFunds, InvalidInput, NotFound
from teachloop.core.money import (
    AccountKind,
    Entry,
    Money,
    Posting,
    check_currency,
    check_entry_kind,
    check_minor,
    format_minor,
)
from teachloop.ledger.accounts import Accounts
from teachloop.store.schema.ledger import LedgerAccount, LedgerEntry, LedgerPosting

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
#: Keys the ledger derives for its own entries (settlements) start with this; callers may not use it.
RESERVED_KEY_PREFIX = "ledger:"
MAX_MEMO = 500
#: Entries ``reverse`` refuses, and why.
_NOT_REVERSIBLE = {
    "hold": "a hold is resolved by capture or release, not reversed",
    "release": "a released hold is final",
    "payout": "a payout is settled by its payment provider (paid or failed), not reversed",
    "payout.paid": "a settled payout is final",
    "payout.failed": "a failed payout is final",
}

PostingLike = Posting | tuple[str, int, str]


def check_key(key: object, param: str = "key") -> str:
    """``key`` if it is 1-255 printable ASCII characters, no spaces, not reserved; else ``InvalidInput``."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidInput(
            f"idempotency {param} must be 1-255 printable ASCII characters without spaces, got {key!r}",
            param=param,
        )
    if key.startswith(RESERVED_KEY_PREFIX):
        raise InvalidInput(
            f"idempotency keys starting with {RESERVED_KEY_PREFIX!r} are reserved", param=param
        )
    return key


def request_hash(request: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of a request (sorted keys)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class LedgerReport(BaseModel):
    """What ``Ledger.check`` found: ``ok`` when every invariant holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    org_id: str | None = Field(description="The organisation checked (None: the whole ledger).")
    trial_balance: dict[str, int] = Field(description="Sum of all postings per currency; zero when balanced.")
    accounts: int = Field(description="Accounts checked.")
    entries: int = Field(description="Entries checked.")
    postings: int = Field(description="Postings checked.")
    problems: tuple[str, ...] = Field(description="One line per broken invariant; empty when ok.")

    @property
    def ok(self) -> bool:
        """Whether every invariant holds."""
        return not self.problems


class Ledger:
    """Double-entry postings within a caller-owned session (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.accounts = Accounts(session)

    # -- posting --------------------------------------------------------------------------

    def post(
        self,
        org_id: str,
        key: str,
        postings: Sequence[PostingLike],
        *,
        kind: str,
        memo: str = "",
        info: dict[str, Any] | None = None,
        counterparties: Iterable[str] = (),
        actor: str = "system",
    ) -> Entry:
        """Post one balanced entry (each posting a ``Posting`` or ``(account, amount, currency)``)."""
        check_key(key)
        lines = _check_postings(postings)
        check_entry_kind(kind)
        memo = _check_memo(memo)
        info = dict(info or {})
        others = tuple(sorted({str(o) for o in counterparties} - {org_id}))
        digest = request_hash(
            {
                "op": "post",
                "kind": kind,
                "memo": memo,
                "info": info,
                "counterparties": others,
                "postings": sorted([p.account_id, p.amount, p.currency] for p in lines),
            }
        )
        return self._write(
            org_id,
            key,
            digest,
            lines,
            kind=kind,
            memo=memo,
            info=info,
            org_ids=(org_id, *others),
            actor=actor,
        )

    def transfer(
        self,
        org_id: str,
        key: str,
        *,
        debit: str,
        credit: str,
        amount: Money,
        kind: str,
        memo: str = "",
        counterparties: Iterable[str] = (),
        actor: str = "system",
    ) -> Entry:
        """Post ``amount`` (positive) as a debit to account ``debit`` and a credit to account ``credit``."""
        money = _positive(amount)
        return self.post(
            org_id,
            key,
            [(debit, money.amount, money.currency), (credit, -money.amount, money.currency)],
            kind=kind,
            memo=memo,
            counterparties=counterparties,
            actor=actor,
        )

    def reverse(
        self,
        org_id: str,
        entry_id: str,
        key: str,
        *,
        kind: str = "reversal",
        memo: str = "",
        actor: str = "system",
    ) -> Entry:
        """Post the negated postings of entry ``entry_id`` with ``reversal_of`` set (at most once per entry).

        Reversing a capture refunds: the payees' credits go back to the hold's source
        account (the hold itself stays resolved).

        ``InsufficientFunds`` when the money has moved on (e.g. a refund after the
        seller was paid out); ``Conflict`` when the entry was already reversed.
        """
        check_key(key)
        check_entry_kind(kind)
        memo = _check_memo(memo)
        original = self._entry_row(org_id, entry_id, param="entry")
        digest = request_hash({"op": "reverse", "entry": entry_id, "kind": kind, "memo": memo})
        replay = self._replay(org_id, key, digest)
        if replay is not None:
            return replay
        if original.kind in _NOT_REVERSIBLE:
            raise Conflict(
                f"entry {entry_id} ({original.kind}) cannot be reversed: {_NOT_REVERSIBLE[original.kind]}",
                param="entry",
            )
        lines = [
            Posting(account_id=p.account_id, amount=-p.amount, currency=p.currency)
            for p in self._posting_rows(original.id)
        ]
        hold = self.session.get(LedgerEntry, original.settles) if original.settles else None
        if hold is not None and hold.kind == "hold":  # a capture: refund from the payees to the hold's source
            lines = _refund_lines(
                lines,
                holds_account=next(p.account_id for p in self._posting_rows(hold.id) if p.amount < 0),
                source=hold.info["source"],
            )
        org_ids = (
            org_id,
            *sorted(
                {
                    self.session.get(LedgerAccount, p.account_id).org_id  # type: ignore[union-attr]
                    for p in lines
                }
                - {org_id}
            ),
        )
        return self._write(
            org_id,
            key,
            digest,
            lines,
            kind=kind,
            memo=memo,
            info={},
            org_ids=org_ids,
            actor=actor,
            reversal_of=original.id,
        )

    # -- holds ----------------------------------------------------------------------------

    def hold(
        self, org_id: str, key: str, account: str, amount: Money, *, memo: str = "", actor: str = "system"
    ) -> Entry:
        """Hold ``amount`` of liability account ``account`` (a party's balance) until capture or release."""
        check_key(key)
        money = _positive(amount)
        memo = _check_memo(memo)
        source = self.accounts.get(org_id, account)
        if source.kind is not AccountKind.LIABILITY:
            raise InvalidInput(
                f"holds apply to liability accounts (a party's balance); {source.name!r} is "
                f"{source.kind.value}",
                param="account",
            )
        holds = self.accounts.system_account(org_id, "holds", check_currency(money.currency))
        lines = [
            Posting(account_id=source.id, amount=money.amount, currency=money.currency),
            Posting(account_id=holds.id, amount=-money.amount, currency=money.currency),
        ]
        digest = request_hash(
            {
                "op": "hold",
                "account": account,
                "amount": money.amount,
                "currency": money.currency,
                "memo": memo,
            }
        )
        return self._write(
            org_id,
            key,
            digest,
            lines,
            kind="hold",
            memo=memo,
            info={"source": source.id},
            org_ids=(org_id,),
            actor=actor,
        )

    def capture(
        self,
        org_id: str,
        hold_id: str,
        key: str,
        credits: Sequence[tuple[str, int]],
        *,
        kind: str = "capture",
        memo: str = "",
        counterparties: Iterable[str] = (),
        actor: str = "system",
    ) -> Entry:
        """Resolve hold ``hold_id``: credit each ``(account, minor units)`` and return the rest to its source.

        The credits sum to at most the held amount; ``release`` is a capture of nothing.
        A hold is resolved at most once (``Conflict`` afterwards).
        """
        check_key(key)
        check_entry_kind(kind)
        memo = _check_memo(memo)
        held = self._entry_row(org_id, hold_id, param="hold")
        if held.kind != "hold":
            raise InvalidInput(f"entry {hold_id} is a {held.kind}, not a hold", param="hold")
        rows = self._posting_rows(held.id)
        holds_line = next(p for p in rows if p.amount < 0)
        amount, currency = -holds_line.amount, holds_line.currency
        others = tuple(sorted({str(o) for o in counterparties} - {org_id}))
        lines = [Posting(account_id=holds_line.account_id, amount=amount, currency=currency)]
        for i, item in enumerate(credits):
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise InvalidInput(f"credits[{i}] must be (account, minor units)", param=f"credits[{i}]")
            ref, minor = item
            check_minor(minor, f"credits[{i}].amount", positive=True)
            lines.append(Posting(account_id=str(ref), amount=-minor, currency=currency))
        captured = -sum(p.amount for p in lines[1:])
        if captured > amount:
            raise InvalidInput(
                f"the credits ({format_minor(captured, currency)}) exceed the hold "
                f"({format_minor(amount, currency)})",
                param="credits",
            )
        if captured < amount:
            lines.append(Posting(account_id=held.info["source"], amount=captured - amount, currency=currency))
        if captured == 0:
            kind = "release"
        digest = request_hash(
            {
                "op": "capture",
                "hold": hold_id,
                "kind": kind,
                "memo": memo,
                "counterparties": others,
                "credits": [[str(r), m] for r, m in credits],
            }
        )
        return self._write(
            org_id,
            key,
            digest,
            lines,
            kind=kind,
            memo=memo,
            info={},
            org_ids=(org_id, *others),
            actor=actor,
            settles=held.id,
        )

    def release(self, org_id: str, hold_id: str, key: str, *, memo: str = "", actor: str = "system") -> Entry:
        """Return all of hold ``hold_id`` to its source account (a capture of nothing)."""
        return self.capture(org_id, hold_id, key, [], memo=memo, actor=actor)

    def hold_status(self, org_id: str, hold_id: str) -> str:
        """``pending``, ``captured`` or ``released``: derived from the entry that settles the hold, if any."""
        held = self._entry_row(org_id, hold_id, param="hold")
        if held.kind != "hold":
            raise InvalidInput(f"entry {hold_id} is a {held.kind}, not a hold", param="hold")
        settled = self.settlement(held.id)
        if settled is None:
            return "pending"
        return "released" if settled.kind == "release" else "captured"

    def settle(
        self,
        org_id: str,
        entry_id: str,
        postings: Sequence[Posting],
        *,
        kind: str,
        memo: str = "",
        info: dict[str, Any] | None = None,
        actor: str = "system",
    ) -> Entry:
        """Post the one entry that resolves ``entry_id`` (a payout's paid or failed; for ``payments``).

        Its key is derived from ``entry_id``; settling again with the same kind returns the
        first settlement, with another kind is a ``Conflict``.
        """
        check_entry_kind(kind)
        target = self._entry_row(org_id, entry_id, param="entry")
        existing = self.settlement(target.id)
        if existing is not None:
            if existing.kind != kind:
                raise Conflict(
                    f"entry {entry_id} was already settled as {existing.kind} by {existing.id}", param="entry"
                )
            return self._snapshot(existing, replayed=True)
        lines = _check_postings(postings)
        key = f"{RESERVED_KEY_PREFIX}settle:{target.id}"
        digest = request_hash({"op": "settle", "entry": entry_id, "kind": kind})
        return self._write(
            org_id,
            key,
            digest,
            lines,
            kind=kind,
            memo=_check_memo(memo),
            info=dict(info or {}),
            org_ids=(org_id,),
            actor=actor,
            settles=target.id,
        )

    # -- reads ----------------------------------------------------------------------------

    def entry(self, org_id: str, entry_id: str) -> Entry:
        """The entry with this id in the organisation; ``NotFound`` otherwise."""
        return self._snapshot(self._entry_row(org_id, entry_id, param="entry"))

    def by_key(self, org_id: str, key: str) -> Entry | None:
        """The entry the organisation posted with idempotency key ``key``, if any."""
        row = self._row_by_key(org_id, key)
        return None if row is None else self._snapshot(row, replayed=True)

    def settlement(self, entry_id: str) -> LedgerEntry | None:
        """The entry that settles ``entry_id`` (a hold's capture or release, a payout's paid or failed)."""
        return self.session.scalars(select(LedgerEntry).where(LedgerEntry.settles == entry_id)).first()

    def reversal(self, entry_id: str) -> LedgerEntry | None:
        """The entry that reverses ``entry_id``, if any."""
        return self.session.scalars(select(LedgerEntry).where(LedgerEntry.reversal_of == entry_id)).first()

    def entries(self, org_id: str, *, account: str | None = None, limit: int = 100) -> builtins.list[Entry]:
        """The organisation's entries, newest first (optionally only those touching ``account``)."""
        if not 1 <= limit <= 10_000:
            raise InvalidInput(f"limit must be 1..10000, got {limit}", param="limit")
        query = select(LedgerEntry).where(LedgerEntry.org_id == org_id)
        if account is not None:
            acc = self.accounts.row(org_id, account)
            query = query.where(
                LedgerEntry.id.in_(select(LedgerPosting.entry_id).where(LedgerPosting.account_id == acc.id))
            )
        query = query.order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc()).limit(limit)
        return [self._snapshot(row) for row in self.session.scalars(query)]

    def balance(self, org_id: str, account: str) -> int:
        """The cached balance of ``account`` (sum of its postings, debits positive) in minor units."""
        return int(self.accounts.row(org_id, account).balance)

    def derived_balance(self, org_id: str, account: str) -> int:
        """The balance of ``account`` summed from its postings now (what ``balance`` must equal)."""
        row = self.accounts.row(org_id, account)
        total = self.session.scalar(
            select(func.coalesce(func.sum(LedgerPosting.amount), 0)).where(LedgerPosting.account_id == row.id)
        )
        return int(total or 0)

    def trial_balance(self, org_id: str | None = None) -> dict[str, int]:
        """Sum of the postings per currency (of the organisation's entries, or of all); every value is 0."""
        query = select(LedgerPosting.currency, func.sum(LedgerPosting.amount)).group_by(
            LedgerPosting.currency
        )
        if org_id is not None:
            query = query.where(LedgerPosting.org_id == org_id)
        return {currency: int(total) for currency, total in self.session.execute(query).all()}

    def check(self, org_id: str | None = None) -> LedgerReport:
        """Check every invariant, from the postings (of the organisation, or of the whole ledger)."""
        problems: list[str] = []
        trial = self.trial_balance(org_id)
        problems += [
            f"trial balance of {cur} is {format_minor(total, cur)}, not zero"
            for cur, total in sorted(trial.items())
            if total != 0
        ]

        def scoped(query: Any, column: Any) -> Any:
            return query if org_id is None else query.where(column == org_id)

        unbalanced = self.session.execute(
            scoped(
                select(LedgerPosting.entry_id, LedgerPosting.currency, func.sum(LedgerPosting.amount))
                .group_by(LedgerPosting.entry_id, LedgerPosting.currency)
                .having(func.sum(LedgerPosting.amount) != 0),
                LedgerPosting.org_id,
            )
        ).all()
        problems += [
            f"entry {e} does not balance in {cur}: its postings sum to {format_minor(int(t), cur)}"
            for e, cur, t in unbalanced
        ]
        short = self.session.execute(
            scoped(
                select(LedgerEntry.id, func.count(LedgerPosting.id))
                .outerjoin(LedgerPosting, LedgerPosting.entry_id == LedgerEntry.id)
                .group_by(LedgerEntry.id)
                .having(func.count(LedgerPosting.id) < 2),
                LedgerEntry.org_id,
            )
        ).all()
        problems += [f"entry {e} has {n} posting(s); an entry needs at least two" for e, n in short]
        mismatched = self.session.execute(
            scoped(
                select(LedgerPosting.id, LedgerPosting.currency, LedgerAccount.name, LedgerAccount.currency)
                .join(LedgerAccount, LedgerAccount.id == LedgerPosting.account_id)
                .where(LedgerPosting.currency != LedgerAccount.currency),
                LedgerPosting.org_id,
            )
        ).all()
        problems += [f"posting {p} is in {c} but account {n!r} holds {ac}" for p, c, n, ac in mismatched]
        derived = (
            select(LedgerPosting.account_id, func.sum(LedgerPosting.amount).label("total"))
            .group_by(LedgerPosting.account_id)
            .subquery()
        )
        accounts = self.session.execute(
            scoped(
                select(LedgerAccount, func.coalesce(derived.c.total, 0)).outerjoin(
                    derived, derived.c.account_id == LedgerAccount.id
                ),
                LedgerAccount.org_id,
            )
        ).all()
        for acc, total in accounts:
            total = int(total)
            if int(acc.balance) != total:
                problems.append(
                    f"account {acc.name!r} ({acc.id}) caches balance "
                    f"{format_minor(int(acc.balance), acc.currency)} but its postings sum to "
                    f"{format_minor(total, acc.currency)}"
                )
            held = AccountKind(acc.kind).normal_sign * total
            if acc.non_negative and held < 0:
                problems.append(
                    f"non-negative account {acc.name!r} ({acc.id}) holds {format_minor(held, acc.currency)}"
                )
        n_entries = self.session.scalar(scoped(select(func.count(LedgerEntry.id)), LedgerEntry.org_id))
        n_postings = self.session.scalar(scoped(select(func.count(LedgerPosting.id)), LedgerPosting.org_id))
        return LedgerReport(
            org_id=org_id,
            trial_balance=trial,
            accounts=len(accounts),
            entries=int(n_entries or 0),
            postings=int(n_postings or 0),
            problems=tuple(problems),
        )

    # -- internals ------------------------------------------------------------------------

    def _write(
        self,
        org_id: str,
        key: str,
        digest: str,
        lines: Sequence[Posting],
        *,
        kind: str,
        memo: str,
        info: dict[str, Any],
        org_ids: tuple[str, ...],
        actor: str,
        reversal_of: str | None = None,
        settles: str | None = None,
    ) -> Entry:
        replay = self._replay(org_id, key, digest)
        if replay is not None:
            return replay
        # resolve names and ownership first (no locks yet), then lock every account in id order
        ids: list[str] = []
        for i, line in enumerate(lines):
            row = self.accounts.find(line.account_id, org_ids=org_ids)
            if row is None:
                raise NotFound(
                    f"ledger account {line.account_id!r} not found", param=f"postings[{i}].account_id"
                )
            ids.append(row.id)
        locked = {
            row.id: row
            for row in self.session.scalars(
                select(LedgerAccount)
                .where(LedgerAccount.id.in_(set(ids)))
                .order_by(LedgerAccount.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        }
        replay = self._replay(
            org_id, key, digest
        )  # a concurrent call with this key may have committed meanwhile
        if replay is not None:
            return replay
        if reversal_of is not None and (done := self.reversal(reversal_of)) is not None:
            raise Conflict(f"entry {reversal_of} was already reversed by {done.id}", param="entry")
        if settles is not None and (done := self.settlement(settles)) is not None:
            raise Conflict(f"entry {settles} was already settled by {done.id} ({done.kind})", param="entry")
        delta: dict[str, int] = defaultdict(int)
        for i, (line, account_id) in enumerate(zip(lines, ids, strict=True)):
            row = locked[account_id]
            if line.currency != row.currency:
                raise InvalidInput(
                    f"postings[{i}] is in {line.currency} but account {row.name!r} holds {row.currency}",
                    param=f"postings[{i}].currency",
                )
            delta[account_id] += line.amount
        for account_id, change in delta.items():
            row = locked[account_id]
            sign = AccountKind(row.kind).normal_sign
            after = sign * (int(row.balance) + change)
            if row.non_negative and after < 0 and sign * change < 0:
                raise InsufficientFunds(
                    f"insufficient funds: account {row.name!r} holds "
                    f"{format_minor(sign * int(row.balance), row.currency)} and this {kind} takes "
                    f"{format_minor(-sign * change, row.currency)} from it; nothing was posted",
                    param="postings",
                )
        entry = LedgerEntry(
            org_id=org_id,
            idem_key=key,
            request_hash=digest,
            kind=kind,
            memo=memo,
            info=info,
            reversal_of=reversal_of,
            settles=settles,
            created_by=actor,
        )
        try:
            with self.session.begin_nested():
                self.session.add(entry)
                self.session.flush()
                self.session.add_all(
                    [
                        LedgerPosting(
                            org_id=org_id,
                            entry_id=entry.id,
                            line=i,
                            account_id=account_id,
                            currency=line.currency,
                            amount=line.amount,
                        )
                        for i, (line, account_id) in enumerate(zip(lines, ids, strict=True))
                    ]
                )
                for account_id, change in delta.items():
                    locked[account_id].balance = int(locked[account_id].balance) + change
                self.session.flush()
        except IntegrityError:  # a concurrent transaction took the key, the reversal or the settlement first
            replay = self._replay(org_id, key, digest)
            if replay is not None:
                return replay
            raise Conflict(
                f"a concurrent request already posted this {kind}; nothing was posted", param="key"
            ) from None
        return Entry(
            id=entry.id,
            org_id=org_id,
            key=key,
            kind=kind,
            memo=memo,
            reversal_of=reversal_of,
            settles=settles,
            postings=tuple(
                Posting(account_id=a, amount=line.amount, currency=line.currency)
                for line, a in zip(lines, ids, strict=True)
            ),
            info=dict(info),
            created_by=actor,
            created_at=entry.created_at,
        )

    def _replay(self, org_id: str, key: str, digest: str) -> Entry | None:
        row = self._row_by_key(org_id, key)
        if row is None:
            return None
        if row.request_hash != digest:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was already used for a different request (entry {row.id}, "
                f"a {row.kind}); nothing was posted: use a new key for a new request",
                param="key",
            )
        return self._snapshot(row, replayed=True)

    def _row_by_key(self, org_id: str, key: str) -> LedgerEntry | None:
        return self.session.scalars(
            select(LedgerEntry).where(LedgerEntry.org_id == org_id, LedgerEntry.idem_key == key)
        ).first()

    def _entry_row(self, org_id: str, entry_id: str, *, param: str) -> LedgerEntry:
        row = self.session.get(LedgerEntry, entry_id) if isinstance(entry_id, str) else None
        if row is None or row.org_id != org_id:
            raise NotFound(f"ledger entry {entry_id!r} not found", param=param)
        return row

    def _posting_rows(self, entry_id: str) -> builtins.list[LedgerPosting]:
        return list(
            self.session.scalars(
                select(LedgerPosting).where(LedgerPosting.entry_id == entry_id).order_by(LedgerPosting.line)
            )
        )

    def _snapshot(self, row: LedgerEntry, *, replayed: bool = False) -> Entry:
        return Entry(
            id=row.id,
            org_id=row.org_id,
            key=row.idem_key,
            kind=row.kind,
            memo=row.memo,
            postings=tuple(
                Posting(account_id=p.account_id, amount=int(p.amount), currency=p.currency)
                for p in self._posting_rows(row.id)
            ),
            reversal_of=row.reversal_of,
            settles=row.settles,
            info=dict(row.info or {}),
            created_by=row.created_by,
            created_at=row.created_at,
            replayed=replayed,
        )


def _check_postings(postings: Sequence[PostingLike]) -> builtins.list[Posting]:
    """The postings as ``Posting``s, checked: >= 2, non-zero ints, known currencies, zero sum per currency."""
    if isinstance(postings, str | bytes) or not isinstance(postings, Sequence):
        raise InvalidInput("postings must be a list of postings", param="postings")
    if len(postings) < 2:
        raise InvalidInput(f"an entry needs at least two postings, got {len(postings)}", param="postings")
    lines: list[Posting] = []
    for i, item in enumerate(postings):
        if isinstance(item, Posting):
            account, amount, currency = item.account_id, item.amount, item.currency
        elif isinstance(item, tuple | list) and len(item) == 3:
            account, amount, currency = item
        else:
            raise InvalidInput(
                f"postings[{i}] must be a Posting or (account, amount, currency)", param=f"postings[{i}]"
            )
        if not isinstance(account, str) or not account:
            raise InvalidInput(f"postings[{i}] names no account", param=f"postings[{i}].account_id")
        check_minor(amount, f"postings[{i}].amount")
        if amount == 0:
            raise InvalidInput(
                f"postings[{i}] is zero; a posting of zero moves nothing", param=f"postings[{i}].amount"
            )
        check_currency(currency, f"postings[{i}].currency")
        lines.append(Posting(account_id=account, amount=amount, currency=currency))
    sums: dict[str, int] = defaultdict(int)
    for line in lines:
        sums[line.currency] += line.amount
    for currency, total in sorted(sums.items()):
        if total != 0:
            raise InvalidInput(
                f"the postings in {currency} sum to {format_minor(total, currency)}; "
                "debits and credits must sum to zero per currency",
                param="postings",
            )
    return lines


def _refund_lines(
    lines: builtins.list[Posting], *, holds_account: str, source: str
) -> builtins.list[Posting]:
    """A capture's negated postings, the holds account's line moved to the hold's source, netted."""
    net: dict[str, int] = {}
    currency = lines[0].currency
    for line in lines:
        account = source if line.account_id == holds_account else line.account_id
        net[account] = net.get(account, 0) + line.amount
    return [Posting(account_id=a, amount=n, currency=currency) for a, n in net.items() if n != 0]


def _positive(amount: object) -> Money:
    if not isinstance(amount, Money):
        raise InvalidInput("amount must be a Money (integer minor units and a currency)", param="amount")
    check_minor(amount.amount, "amount", positive=True)
    return amount


def _check_memo(memo: object) -> str:
    if not isinstance(memo, str) or len(memo) > MAX_MEMO:
        raise InvalidInput(f"memo must be text of at most {MAX_MEMO} characters", param="memo")
    return memo


__all__ = ["RESERVED_KEY_PREFIX", "Ledger", "LedgerReport", "PostingLike", "check_key", "request_hash"]

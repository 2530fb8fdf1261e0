"""Money for the whole platform: a double-entry ledger in integer minor units.

- ``Accounts`` (``accounts.py``): an organisation's accounts (kind, currency, non-negative flag).
- ``Ledger`` (``book.py``): balanced, append-only, idempotent entries; reversals; holds
  (hold / capture / release); cached and derived balances; the trial balance and ``check``.
- ``Payouts`` (``payments.py``): payouts through a ``PaymentProvider``; ``TestProvider``
  is deterministic, with declined, timeout and late-webhook failure modes.

The domain types (``Money``, ``Posting``, ``Entry``, ``Account``, ``AccountKind``) live in
``teachloop.core.money``; the errors (``InsufficientFunds``, ``IdempotencyConflict``) in
``teachloop.core.errors``. ``docs/ledger.md`` describes the rules.
"""

from teachloop.ledger.accounts import SYSTEM_ACCOUNTS, Accounts
from teachloop.ledger.book import (
    RESERVED_KEY_PREFIX,
    Ledger,
    LedgerReport,
    PostingLike,
    check_key,
    request_hash,
)
from teachloop.ledger.payments import (
    PaymentProvider,
    Payout,
    PayoutEvent,
    Payouts,
    PayoutStatus,
    ProviderOutcome,
    ProviderReply,
    ProviderTimeout,
    TestProvider,
)

__all__ = [
    "RESERVED_KEY_PREFIX",
    "SYSTEM_ACCOUNTS",
    "Accounts",
    "Ledger",
    "LedgerReport",
    "PaymentProvider",
    "Payout",
    "PayoutEvent",
    "PayoutStatus",
    "Payouts",
    "PostingLike",
    "ProviderOutcome",
    "ProviderReply",
    "ProviderTimeout",
    "TestProvider",
    "check_key",
    "request_hash",
]

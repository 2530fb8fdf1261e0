"""Billing: prices, the usage meter over traces/runs/evaluations, idempotent invoices through the ledger."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from teachloop.core.billing import Meter, line_amount, price_to_micro
from teachloop.core.errors import Conflict, InvalidInput
from teachloop.ledger import Ledger
from teachloop.market.billing import RECEIVABLE, Billing
from teachloop.store import Database, Tenancy
from teachloop.store.schema import BillingInvoice, EnvironmentEval, LedgerEntry, RunMetric, Trace, TrainingRun

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
LATER = datetime(2026, 12, 5, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path / "billing.db"))
    yield database
    database.close()


def _org(db: Database, name: str) -> str:
    with db.session() as s:
        return Tenancy(s).create_org(name).id


def _trace(org: str, prompt: int, completion: int, at: datetime, base: str = "smol") -> Trace:
    return Trace(org_id=org, model=base, base_model=base, messages=[], choices=[], params={}, finish_reason="stop",
                 prompt_tokens=prompt, completion_tokens=completion, latency_ms=1.0, created_at=at)


def _usage_world(db: Database, org: str) -> None:
    with db.session() as s:
        s.add_all([_trace(org, 1500, 500, NOV), _trace(org, 500, 500, NOV + timedelta(days=1)),
                   _trace(org, 10_000, 10_000, LATER)])  # December: not November's
        run = TrainingRun(org_id=org, name="r", algorithm="grpo", status="completed", base_model="smol", config={},
                          total_steps=3, started_at=NOV, finished_at=NOV + timedelta(seconds=90))
        s.add(run)
        s.flush()
        s.add_all([RunMetric(org_id=org, run_id=run.id, step=i, phase="train", values={}, created_at=NOV)
                   for i in (1, 2, 3)])
        s.add(RunMetric(org_id=org, run_id=run.id, step=0, phase="eval", values={}, created_at=NOV))
        s.add(EnvironmentEval(org_id=org, env_name="arithmetic", env_digest="sha256:x", model="smol", n_tasks=4,
                              n_episodes=8, mean=0.5, report={}, created_by="t", created_at=NOV))


def _prices(db: Database) -> None:
    with db.session() as s:
        b = Billing(s)
        b.set_price("prompt_tokens", "*", "0.10", "USD")          # 10 cents per 1k prompt tokens
        b.set_price("completion_tokens", "base_model:smol", "0.25", "USD")
        b.set_price("training_step", "*", "0.5", "USD")
        b.set_price("compute_second", "*", "0.001", "USD")
        b.set_price("env_run", "*", "0.02", "USD")


def test_price_strings_are_exact_and_lines_round_half_up() -> None:
    assert price_to_micro("0.0015", "USD") == 150_000  # 0.15 cents
    assert line_amount(1000, 150_000, Meter.PROMPT_TOKENS) == 0  # 0.15 cents -> 0
    assert line_amount(3334, 150_000, Meter.PROMPT_TOKENS) == 1  # 0.5001 cents -> 1
    assert line_amount(3, 500_000, Meter.TRAINING_STEP) == 2  # 1.5 cents -> 2 (half up)
    with pytest.raises(InvalidInput) as err:
        price_to_micro("0.000000001", "USD")
    assert err.value.param == "price"


def test_usage_meters_traces_runs_and_evaluations_per_period(db: Database) -> None:
    org = _org(db, "acme")
    _usage_world(db, org)
    _prices(db)
    with db.session(write=False) as s:
        usage = Billing(s).usage(org, "2026-11", now=LATER)
    by = {(line.meter.value, line.subject): line for line in usage.lines}
    assert by[("prompt_tokens", "smol")].quantity == 2000 and by[("prompt_tokens", "smol")].amount == 20
    completion = by[("completion_tokens", "smol")]
    assert (completion.quantity, completion.scope, completion.amount) == (1000, "base_model:smol", 25)
    steps = next(line for line in usage.lines if line.meter is Meter.TRAINING_STEP)
    assert (steps.quantity, steps.amount) == (3, 150)  # the eval row is not a step
    seconds = next(line for line in usage.lines if line.meter is Meter.COMPUTE_SECOND)
    assert (seconds.quantity, seconds.amount) == (90, 9)
    assert (by[("env_run", "arithmetic")].quantity, by[("env_run", "arithmetic")].amount) == (8, 16)
    assert usage.total == 20 + 25 + 150 + 9 + 16
    assert usage.currency == "USD"


def test_invoice_posts_once_and_the_books_balance(db: Database) -> None:
    org = _org(db, "acme")
    _usage_world(db, org)
    _prices(db)
    with db.session() as s:
        first = Billing(s).invoice(org, "2026-11", now=LATER)
    with db.session() as s:
        again = Billing(s).invoice(org, "2026-11", now=LATER + timedelta(days=3))
    assert first.total == 220 and first.entry_id is not None and not first.replayed
    assert again.replayed and again.id == first.id and again.entry_id == first.entry_id
    with db.session(write=False) as s:
        assert s.query(LedgerEntry).filter_by(org_id=org).count() == 1
        assert s.query(BillingInvoice).count() == 1
        ledger = Ledger(s)
        assert ledger.check().ok, ledger.check().problems
        receivable = ledger.accounts.get(org, RECEIVABLE)
        assert receivable.held == 220


def test_an_open_period_is_refused_and_nothing_is_stored(db: Database) -> None:
    org = _org(db, "acme")
    _prices(db)
    with db.session() as s, pytest.raises(InvalidInput) as err:
        Billing(s).invoice(org, "2026-11", now=NOV)
    assert err.value.param == "period"
    with db.session() as s, pytest.raises(InvalidInput) as err:
        Billing(s).invoice(org, "2026-13", now=LATER)
    assert err.value.param == "period"
    with db.session(write=False) as s:
        assert s.query(BillingInvoice).count() == 0 and s.query(LedgerEntry).count() == 0


def test_nothing_due_stores_an_invoice_without_an_entry(db: Database) -> None:
    org = _org(db, "acme")
    with db.session() as s:
        inv = Billing(s).invoice(org, "2026-10", now=LATER)
    assert inv.total == 0 and inv.entry_id is None and inv.currency is None


def test_prices_share_one_currency_and_bad_input_names_the_field(db: Database) -> None:
    _prices(db)
    with db.session() as s, pytest.raises(Conflict) as err:
        Billing(s).set_price("env_run", "*", "1", "EUR")
    assert err.value.param == "currency"
    for args, param in ((("tokens", "*", "1", "USD"), "meter"), (("env_run", "model:x", "1", "USD"), "scope"),
                        (("env_run", "*", "-1", "USD"), "price")):
        with db.session() as s, pytest.raises(InvalidInput) as bad:
            Billing(s).set_price(*args)
        assert bad.value.param == param
    with db.session(write=False) as s:
        prices = {(p.meter.value, p.scope): p.price for p in Billing(s).prices()}
    assert prices[("env_run", "*")] == "0.02" and len(prices) == 5

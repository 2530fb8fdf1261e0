"""``teachloop market balance [--check]`` against a real SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.ledger import Ledger
from teachloop.store import Database
from tests.unit.ledger.conftest import make_org, open_book


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_sqlite: Callable[[Path], str]) -> Path:
    path = tmp_path / "cli.db"
    url = migrated_sqlite(path)
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", url)
    db = Database(url)
    org = make_org(db, "acme")
    book = open_book(db, org)
    with db.session() as s:
        Ledger(s).post(org, "o1", [(book.buyer, 250, "USD"), (book.seller, -250, "USD")], kind="order")
    db.close()
    return path


def test_balance_lists_accounts_and_check_passes(store: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["market", "balance", "--org", "acme"])
    assert shown.exit_code == 0, shown.output
    assert "buyer:prepaid" in shown.output and "97.50 USD" in shown.output and "2.50 USD" in shown.output
    checked = runner.invoke(app, ["market", "balance", "--check"])
    assert checked.exit_code == 0, checked.output
    assert "ok" in checked.output and "trial balance zero (USD)" in checked.output


def test_check_fails_and_names_the_account(store: Path) -> None:
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE ledger_accounts SET balance = balance - 1 WHERE name = 'seller:payable'")
    result = CliRunner().invoke(app, ["market", "balance", "--check"])
    assert result.exit_code == 1
    assert "seller:payable" in result.output and "caches balance" in result.output


def test_unknown_org_is_a_one_line_error(store: Path) -> None:
    result = CliRunner().invoke(app, ["market", "balance", "--org", "nope"])
    assert result.exit_code == 2 and "organisation 'nope' not found" in result.output


def test_help() -> None:
    result = CliRunner().invoke(app, ["market", "balance", "--help"])
    assert result.exit_code == 0 and "--check" in result.output

"""The marketplace in a real browser: a buyer finds a dataset, buys it, downloads it; the books add up.

Debian's headless ``/usr/bin/chromium`` driven by Playwright (never Playwright's own browser
download) against a real uvicorn server over the seeded world of ``conftest.py`` plus
``market_world.seed_market``: globex's member signs in, searches the catalogue, opens the listing
(preview and licence), buys through the confirmation page, asks for a download link and downloads
the file (its rows are checked). Then the store: each contributor's pending royalty balance changed
by exactly its share (acme 4.50, initech 2.70, the expert 1.80 USD of 10.00), the buyer's prepaid
balance by the price, one order, and ``Ledger.check()`` is clean. Screenshots of every page go to
``$TEACHLOOP_TEST_ARTIFACTS/console`` (default ``.pytest-artifacts/console``). The tests skip,
saying why, only when the browser is missing -- except in CI, where that fails them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from teachloop.ledger import Ledger
from teachloop.serve import Serving
from teachloop.store import BlobStore, Database
from teachloop.store.schema.market import MarketOrder
from tests.web.browser import LAPTOP, artifacts, chromium, console_url, needs_chromium
from tests.web.conftest import PASSWORD, World
from tests.web.market_world import DEPOSIT, FIRST_ROW, PRICE, royalty_balances, seed_market

# In CI (CI=true) a missing browser is a failure, never a silent skip: `make test` must have installed it.
pytestmark = needs_chromium


@pytest.fixture
def live_url(database: Database, blobs: BlobStore, serving: Serving, settings: Any) -> Iterator[str]:
    with console_url(database, blobs, serving, settings) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= LAPTOP["width"], f"{page.url} is {width}px wide at a laptop's width"


def test_buyer_finds_buys_and_downloads_a_dataset(browser: Any, live_url: str, world: World,
                                                  database: Database, tmp_path: Path) -> None:
    url = live_url
    market = seed_market(database, world)
    acme = world.acme.id
    before = royalty_balances(database, market, acme)
    context = browser.new_context(viewport=LAPTOP, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)

    page.goto(f"{url}/signin")
    page.get_by_label("E-mail").fill(world.globex.member)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Market").click()
    page.wait_for_url(f"{url}/market")
    page.get_by_role("textbox", name="Search").fill("tutoring")
    page.get_by_label("Kind").select_option("dataset")
    page.get_by_label("Licence allows").select_option("commercial")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/market?q=tutoring*")
    rows = page.locator("main table tbody tr")
    assert rows.count() == 1
    _shot(page, "market-catalog")

    page.get_by_role("link", name="Arithmetic tutoring chats").click()
    page.wait_for_url(f"{url}/market/listings/{market.listing}")
    assert page.get_by_text(FIRST_ROW).is_visible()
    assert "commercial" in page.locator("#licence-h + p").inner_text()
    _shot(page, "market-listing")

    page.get_by_role("link", name="Buy… the commercial licence").click()
    page.wait_for_url(f"{url}/market/checkout/{market.offer}")
    assert "10.00 USD" in page.locator("main").inner_text()
    _shot(page, "market-checkout")
    page.get_by_role("button", name="Confirm: buy for 10.00 USD").click()
    page.wait_for_url("**/market/purchases?done=ord_*")
    assert page.get_by_role("status").is_visible()
    _shot(page, "market-purchases")

    page.get_by_role("button", name="Get a download link").click()
    page.wait_for_url(f"{url}/market/entitlements/*/link")
    _shot(page, "market-download-link")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download (openai)").click()
    saved = tmp_path / "download.jsonl"
    info.value.save_as(saved)
    lines = [json.loads(x) for x in saved.read_text().splitlines()]
    assert len(lines) == 20 and lines[0]["messages"][0]["content"] == FIRST_ROW
    assert info.value.suggested_filename == "acme-market-v1.openai.jsonl"
    assert dialogs == []  # no script ran anywhere
    context.close()

    # the books: one order, each contributor paid its exact share, the buyer charged the price, all balanced
    after = royalty_balances(database, market, acme)
    assert {k: after[k] - before[k] for k in after} == market.expected(acme)
    with database.session(write=False) as s:
        orders = list(s.scalars(select(MarketOrder).where(MarketOrder.org_id == world.globex.id)))
        assert [o.amount for o in orders] == [PRICE]
        ledger = Ledger(s)
        report = ledger.check()
        assert report.ok, report
        held = {a.name: a.held for a in ledger.accounts.list(world.globex.id)}
        assert held["buyer:prepaid:USD"] == DEPOSIT - PRICE

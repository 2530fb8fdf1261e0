"""The marketplace pages in process: catalogue filters, listing, checkout, downloads, requests, selling.

Over the seeded world of ``conftest.py`` plus ``market_world.seed_market`` (acme sells, globex
buys, initech and an expert contributed rows). Each test checks what the store holds afterwards:
a double-submitted checkout makes one order, the contributors' pending balances move by the exact
split and the ledger checks clean; refused posts (no CSRF token, a viewer, the seller buying its
own listing) change nothing; another organisation's draft listing, entitlement or private request
is the same 404 as a missing one; and the stored-XSS probe in a listing's title and description and
in a request's text shows as text on every market page.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import func, select

from teachloop.ledger import Ledger
from teachloop.market import listings
from teachloop.store import Database
from teachloop.store.schema.ledger import LedgerEntry
from teachloop.store.schema.market import MarketOrder
from teachloop.store.schema.requests import DataRequest
from tests.web.conftest import XSS, World, csrf_of, post_form, sign_in
from tests.web.market_world import DEPOSIT, FIRST_ROW, PRICE, Market, royalty_balances, seed_market

ESCAPED = str(escape(XSS))  # as Jinja2 autoescape writes it
_KEY = re.compile(r'name="key" value="([^"]+)"')
_LINK = re.compile(r'href="(/market/downloads/[^"]+)"')


def _counts(database: Database) -> tuple[int, int, int]:
    with database.session(write=False) as s:
        return tuple(int(s.scalar(select(func.count()).select_from(t)) or 0)  # type: ignore[return-value]
                     for t in (MarketOrder, LedgerEntry, DataRequest))


def _buy(client: Any, market: Market) -> Any:
    shown = client.get(f"/market/checkout/{market.offer}")
    assert shown.status_code == 200, shown.text
    key = _KEY.search(shown.text)
    assert key, "the checkout form carries no idempotency key"
    return client.post(f"/market/checkout/{market.offer}", data={"key": key.group(1), "csrf_token": csrf_of(shown.text)})


def test_catalog_search_filters_and_the_listing_page(client: Any, world: World, database: Database) -> None:
    market = seed_market(database, world)
    sign_in(client, world.globex.member)
    everything = client.get("/market").text
    assert "Arithmetic tutoring chats" in everything and ESCAPED in everything
    found = client.get("/market", params={"q": "Tutoring arithmetic", "kind": "dataset", "use": "commercial"}).text
    assert f"/market/listings/{market.listing}" in found and market.xss_listing not in found
    for params in ({"q": "poetry"}, {"kind": "adapter"}, {"q": "tutoring", "kind": "environment"}):
        assert f"/market/listings/{market.listing}" not in client.get("/market", params=params).text, params
    assert client.get("/market", params={"use": "everything"}).status_code == 400
    assert client.get("/market", params={"kind": "song"}).status_code == 400

    page = client.get(f"/market/listings/{market.listing}")
    assert page.status_code == 200
    text = page.text
    assert html.escape(FIRST_ROW) in text and "Twenty graded arithmetic tutoring conversations." in text
    assert "20 rows" in text and "3 (each is paid" in text and "CC-BY-4.0 20" in text  # size, contributors, licences
    assert "Allows <strong>commercial</strong>" in text and "10.00 USD" in text
    assert f'href="/market/checkout/{market.offer}"' in text
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as viewer:
        sign_in(viewer, world.globex.viewer)
        assert "/market/checkout/" not in viewer.get(f"/market/listings/{market.listing}").text  # no Buy for a viewer


def test_checkout_double_submit_makes_one_order_and_pays_each_contributor(client: Any, world: World,
                                                                         database: Database) -> None:
    market = seed_market(database, world)
    acme = world.acme.id
    before_balances = royalty_balances(database, market, acme)
    sign_in(client, world.globex.member)
    shown = client.get(f"/market/checkout/{market.offer}")
    assert shown.status_code == 200 and "10.00 USD" in shown.text and "50.00 USD" in shown.text
    key = _KEY.search(shown.text)
    assert key and key.group(1) != _KEY.search(client.get(f"/market/checkout/{market.offer}").text).group(1)  # type: ignore[union-attr]
    before = _counts(database)
    assert client.post(f"/market/checkout/{market.offer}", data={"key": key.group(1)}).status_code == 403  # no CSRF
    assert _counts(database) == before

    form = {"key": key.group(1), "csrf_token": csrf_of(shown.text)}
    first = client.post(f"/market/checkout/{market.offer}", data=form)
    second = client.post(f"/market/checkout/{market.offer}", data=form)  # the double submit
    assert first.status_code == second.status_code == 303, first.text
    assert first.headers["location"] == second.headers["location"]
    with database.session(write=False) as s:
        bought = list(s.scalars(select(MarketOrder).where(MarketOrder.org_id == world.globex.id)))
        assert [o.amount for o in bought] == [PRICE] and first.headers["location"].endswith(bought[0].id)
        ledger = Ledger(s)
        assert ledger.check().ok
        assert {a.name: a.held for a in ledger.accounts.list(world.globex.id)}["buyer:prepaid:USD"] == DEPOSIT - PRICE
    after = royalty_balances(database, market, acme)
    assert {k: after[k] - before_balances[k] for k in after} == market.expected(acme)
    assert "Bought: order" in client.get(first.headers["location"]).text

    # refused: a viewer, the seller buying its own listing, a form without its key -- nothing changes
    before = _counts(database)
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as viewer:
        sign_in(viewer, world.globex.viewer)
        assert viewer.get(f"/market/checkout/{market.offer}").status_code == 403
        assert post_form(viewer, "/market", f"/market/checkout/{market.offer}", {"key": "v-1"}).status_code == 403
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as seller:
        sign_in(seller, world.acme.member)
        assert seller.get(f"/market/checkout/{market.offer}").status_code == 400
        assert post_form(seller, "/market", f"/market/checkout/{market.offer}", {"key": "s-1"}).status_code == 400
    assert post_form(client, "/market", f"/market/checkout/{market.offer}", {"key": ""}).status_code == 400
    assert client.get("/market/checkout/off_nothing").status_code == 404
    assert _counts(database) == before


def test_download_through_a_signed_link(client: Any, world: World, database: Database, app: Any) -> None:
    market = seed_market(database, world)
    sign_in(client, world.globex.member)
    assert _buy(client, market).status_code == 303
    purchases = client.get("/market/purchases").text
    assert "Arithmetic tutoring chats" in purchases and "40.00 USD" in purchases
    action = re.search(r'action="(/market/entitlements/(etl_[^/"]+)/link)"', purchases)
    assert action, purchases
    shown = post_form(client, "/market/purchases", action.group(1), {"format": "openai"})
    assert shown.status_code == 200, shown.text
    link = _LINK.search(shown.text)
    assert link
    url = html.unescape(link.group(1))
    got = client.get(url)
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/jsonl")
    assert "attachment" in got.headers["content-disposition"]
    lines = [json.loads(x) for x in got.text.splitlines()]
    assert len(lines) == 20 and lines[0]["messages"][0]["content"] == FIRST_ROW
    assert client.get(url[:-2] + ("AA" if not url.endswith("AA") else "BB")).status_code == 403  # tampered
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as other:
        sign_in(other, world.acme.member)
        assert other.get(url).status_code == 403  # another organisation's link
        # another organisation's entitlement: the same 404 as a missing one
        theirs = post_form(other, "/market", action.group(1), {"format": "openai"})
        missing = post_form(other, "/market", "/market/entitlements/etl_nothing/link", {"format": "openai"})
        assert theirs.status_code == missing.status_code == 404
        assert theirs.text.replace(action.group(2), "etl_nothing") == missing.text
    assert post_form(client, "/market/purchases", action.group(1), {"format": "csv"}).status_code == 400


def test_another_orgs_draft_listing_is_not_found(client: Any, world: World, database: Database) -> None:
    seed_market(database, world)
    with database.session() as s:
        draft = listings.create_listing(s, world.globex.id, kind="dataset", ref="globex-sft@1", title="Draft").id
    sign_in(client, world.acme.member)
    theirs, missing = client.get(f"/market/listings/{draft}"), client.get("/market/listings/lst_nothing")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.text.replace(draft, "lst_nothing") == missing.text
    assert "Draft" not in client.get("/market").text


def test_requests_proposals_and_accept(client: Any, world: World, database: Database, app: Any) -> None:
    market = seed_market(database, world)
    sign_in(client, world.globex.member)
    before = _counts(database)
    assert client.post("/market/requests", data={"title": "x", "description": "y"}).status_code == 403  # no CSRF
    assert post_form(client, "/market/requests", "/market/requests",
                     {"title": "t", "description": "d", "size": "many"}).status_code == 400
    assert post_form(client, "/market/requests", "/market/requests",
                     {"title": "t", "description": "d", "currency": "US"}).status_code == 400
    assert _counts(database) == before
    posted = post_form(client, "/market/requests", "/market/requests",
                       {"title": XSS, "description": f"Tutoring chats. {XSS}", "size": "20", "budget": "2000",
                        "licences": "commercial", "currency": "USD", "visibility": "marketplace"})
    assert posted.status_code == 303, posted.text
    request_path = posted.headers["location"]
    private = post_form(client, "/market/requests", "/market/requests",
                        {"title": "Private ask", "description": "secret", "visibility": "private"})
    private_path = private.headers["location"]
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as seller:
        sign_in(seller, world.acme.member)
        listed = seller.get("/market/requests").text
        assert request_path in listed and private_path not in listed
        theirs, missing = seller.get(private_path), seller.get("/market/requests/req_nothing")
        assert theirs.status_code == missing.status_code == 404
        assert theirs.text.replace(private_path.rsplit("/", 1)[1], "req_nothing") == missing.text
        proposed = post_form(seller, request_path, f"{request_path}/proposals",
                             {"listing": market.listing, "price": "1000", "note": XSS})
        assert proposed.status_code == 303, proposed.text
        assert "/accept" not in seller.get(request_path).text  # only the buyer accepts
    page = client.get(request_path).text
    accept = re.search(r'href="(/market/requests/[^"]+/proposals/[^"]+/accept)"', page)
    assert accept and "Arithmetic tutoring chats" in page
    confirm = client.get(accept.group(1))
    assert confirm.status_code == 200 and "Confirm: accept" in confirm.text
    with database.session(write=False) as s:
        assert s.scalar(select(DataRequest.status).where(DataRequest.id == request_path.rsplit("/", 1)[1])) == "open"
    done = client.post(accept.group(1), data={"csrf_token": csrf_of(confirm.text)})
    assert done.status_code == 303
    with database.session(write=False) as s:
        assert s.scalar(select(DataRequest.status).where(DataRequest.id == request_path.rsplit("/", 1)[1])) == \
            "matched"


def test_selling_earnings_and_payouts(client: Any, world: World, database: Database, app: Any) -> None:
    market = seed_market(database, world)
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as buyer:
        sign_in(buyer, world.globex.member)
        assert _buy(buyer, market).status_code == 303
    sign_in(client, world.acme.member)
    page = client.get("/market/selling").text
    assert "Arithmetic tutoring chats" in page and "10.00 USD" in page
    assert "Pending (refund window open): 6.30 USD" in page  # acme 4.50 + the expert 1.80, in acme's books
    assert "expert:exp-ada" in page and 'action="/market/payouts"' not in page
    before = _counts(database)
    assert post_form(client, "/market/selling", "/market/payouts", {"batch": "b1"}).status_code == 403
    assert _counts(database) == before
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as admin:
        sign_in(admin, world.acme.admin)
        assert 'action="/market/payouts"' in admin.get("/market/selling").text
        paid = post_form(admin, "/market/selling", "/market/payouts", {"batch": "b1"})
        assert paid.status_code == 303 and paid.headers["location"] == "/market/selling?done=released-0-paid-0"
    assert _counts(database) == before  # nothing matured yet: nothing released or paid


def test_stored_xss_is_escaped_on_the_market_pages(client: Any, world: World, database: Database,
                                                   app: Any) -> None:
    market = seed_market(database, world)
    sign_in(client, world.globex.member)
    posted = post_form(client, "/market/requests", "/market/requests", {"title": XSS, "description": XSS})
    request_path = posted.headers["location"]
    shown = client.get(f"/market/checkout/{market.xss_offer}")
    key = _KEY.search(shown.text)
    assert key
    assert client.post(f"/market/checkout/{market.xss_offer}",
                       data={"key": key.group(1), "csrf_token": csrf_of(shown.text)}).status_code == 303
    pages = ["/market", f"/market/listings/{market.xss_listing}", f"/market/checkout/{market.xss_offer}",
             "/market/purchases", "/market/requests", request_path]
    for path in pages:
        text = client.get(path).text
        assert "<script>alert" not in text and "<img src=x" not in text and XSS not in text, path
        assert ESCAPED in text, path
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as seller:
        sign_in(seller, world.acme.member)
        for path in ("/market/selling", request_path):
            text = seller.get(path).text
            assert "<script>alert" not in text and XSS not in text and ESCAPED in text, path

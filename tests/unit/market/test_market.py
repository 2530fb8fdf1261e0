"""Market services end to end on SQLite: listings, licences, offers, orders, entitlements, royalties, downloads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from teachloop.catalog.licences import SPDX, LicenceTerms, Use, classify, effective, exceeds, meet
from teachloop.core.errors import (
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
)
from teachloop.core.money import Money
from teachloop.ledger import Ledger, Payouts, TestProvider
from teachloop.market import downloads, entitlements, listings, offers, orders, royalties
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.store.repos.datasets import Datasets, NewRow, encode_snapshot, expert_label
from teachloop.store.schema.ledger import LedgerEntry, LedgerPosting
from teachloop.store.schema.market import MarketOrder

# ------------------------------------------------------------------------------------ pure rules


@given(st.integers(0, 10**12), st.dictionaries(st.text("abcdef", min_size=1, max_size=3),
                                               st.integers(0, 1000), min_size=1, max_size=8))
def test_largest_remainder_sums_exactly(total: int, weights: dict[str, int]) -> None:
    if sum(weights.values()) == 0:
        weights = {**weights, "z": 1}
    parts = royalties.allocate(total, weights)
    assert sum(parts.values()) == total
    whole = sum(weights.values())
    for k, w in weights.items():
        assert parts[k] >= 0
        assert abs(parts[k] - Fraction(w, whole) * total) < 1


TERMS = st.builds(LicenceTerms, use=st.sampled_from(list(Use)), derivatives=st.booleans(),
                  attribution=st.booleans(), share_alike=st.booleans())


@given(st.lists(st.sampled_from(sorted(SPDX)), min_size=1, max_size=6), TERMS)
def test_licences_never_widen(ids: list[str], grant: LicenceTerms) -> None:
    eff = effective(ids)
    for lic in ids:  # the whole never allows more than any of its parts
        assert not exceeds(eff, classify(lic))
    if not exceeds(grant, eff):  # a grant within the whole is within every part
        assert all(not exceeds(grant, classify(lic)) for lic in ids)
    assert meet(eff, classify(ids[0])) == eff


def test_licence_classes() -> None:
    assert classify("CC-BY-NC-4.0").use is Use.NON_COMMERCIAL
    assert not classify("CC-BY-ND-4.0").derivatives
    assert classify("MIT OR CC-BY-NC-4.0").use is Use.COMMERCIAL
    assert classify("CC-BY-4.0 AND CC-BY-SA-4.0").share_alike
    with pytest.raises(InvalidInput, match="not classified"):
        classify("WTFPL-9")


# ------------------------------------------------------------------------------------ world


def _org(db: Database, name: str) -> str:
    with db.session() as s:
        return Tenancy(s).create_org(name).id


def _chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


@pytest.fixture
def world(tmp_path: Path, migrated_sqlite: Callable[[Path], str]):  # type: ignore[no-untyped-def]
    db = Database(migrated_sqlite(tmp_path / "m.db"))
    blobs = BlobStore(str(tmp_path / "blobs"))
    seller, buyer, other = _org(db, "seller"), _org(db, "buyer"), _org(db, "other")
    # 3 rows by expert ann (CC-BY-4.0), 1 row by expert bob (CC-BY-NC-4.0)
    rows = [expert_label(_chat(i), "ann", license="CC-BY-4.0") for i in range(3)]
    rows.append(expert_label(_chat(9), "bob", license="CC-BY-NC-4.0"))
    commercial = [NewRow(content=_chat(i), split="train", source_kind="import", license="CC-BY-4.0") for i in range(2)]
    with db.session() as s:
        for name, rs, origin in (("mixed", rows, "labels"), ("clean", commercial, "import")):
            data, digest = encode_snapshot("chat", rs)
            key = blobs.put_content(data)
            Datasets(s).create(seller, name=name, kind="chat", rows=rs, blob_key=key, origin=origin)
        data, _ = encode_snapshot("chat", commercial)
        Datasets(s).create(other, name="theirs", kind="chat", rows=commercial, blob_key=blobs.put_content(data),
                           origin="import")
    yield db, seller, buyer, other
    db.close()


def _publish(db: Database, seller: str, ref: str) -> str:
    with db.session() as s:
        lst = listings.create_listing(s, seller, kind="dataset", ref=ref, title=f"{ref} data", description="d")
        return listings.publish_listing(s, seller, lst.id).id


def _counts(db: Database) -> tuple[int, int, int]:
    with db.session(write=False) as s:
        return (int(s.scalar(select(func.count()).select_from(LedgerEntry)) or 0),
                int(s.scalar(select(func.count()).select_from(LedgerPosting)) or 0),
                int(s.scalar(select(func.count()).select_from(MarketOrder)) or 0))


def _held(db: Database, org: str, name: str) -> int:
    with db.session(write=False) as s:
        acc = Ledger(s).accounts.get(org, name)
        return acc.held


# ------------------------------------------------------------------------------------ end to end


def test_end_to_end_two_contributors_two_licences(world) -> None:  # type: ignore[no-untyped-def]
    db, seller, buyer, _ = world
    lst = _publish(db, seller, "mixed@1")
    with db.session(write=False) as s:
        row = listings.get_listing_row(s, lst, org_id=seller)
        assert row.digest and row.licence["sources"] == {"CC-BY-4.0": 3, "CC-BY-NC-4.0": 1}
        assert row.licence["terms"]["use"] == Use.NON_COMMERCIAL
        assert row.card["lineage"]["contributors"] == 2 and len(row.card["preview"]) == 3
        assert row.croissant and row.croissant["distribution"][0]["sha256"] == row.digest.removeprefix("sha256:")
    with db.session() as s:  # commercial use of a non-commercial row is refused, naming the source
        with pytest.raises(InvalidInput, match=r"CC-BY-NC-4\.0 \(1 row\)") as err:
            offers.create_offer(s, seller, lst, pricing="licence", amount=1000, currency="USD", use="commercial")
        assert err.value.param == "use"
        offer = offers.create_offer(s, seller, lst, pricing="licence", amount=1001, currency="USD",
                                    use="non-commercial")
    assert orders.deposit(db, orders.TestCharges(), buyer, "dep-1", Money(amount=5000, currency="USD"),
                          "card_ok") == "paid"
    with db.session() as s:
        order = orders.buy(s, buyer, offer.id, "buy-1")
    assert order.amount == 1001 and sum(p.amount for p in order.shares) == 1001
    parts = {p.party: p.amount for p in order.shares}
    # 10 % fee = 100.1 -> 100; ann 3/4 of 900.9 = 675.675 -> 676; bob 225.225 -> 225  (sum 1001)
    assert parts == {"platform": 100, "expert:ann": 676, "expert:bob": 225}
    assert _held(db, seller, "royalty:pending:expert:ann:USD") == 676
    assert _held(db, seller, "royalty:pending:expert:bob:USD") == 225
    assert _held(db, buyer, "buyer:prepaid:USD") == 5000 - 1001
    with db.session() as s:  # replay returns the same order; another body is a conflict
        assert orders.buy(s, buyer, offer.id, "buy-1").replayed
        link = downloads.sign_link(s, buyer, order.entitlement_id, "openai")
    body, media, name = downloads.open_link(db, buyer, link)
    lines = [json.loads(x) for x in body.decode().splitlines()]
    assert media == "application/jsonl" and len(lines) == 4 and lines[0] == _chat(0)
    with db.session() as s:  # the catalog grant lets the buyer's loops/training read it
        ds, grant = Datasets(s).resolve_usable(buyer, "seller/mixed@1")
        assert grant is not None
        ent = entitlements.list_entitlements(s, buyer)[0]
        assert ent.uses == 1
        assert Ledger(s).check().ok
    # refund window closes -> payable -> payout batch -> refund refused, nothing posted
    with db.session() as s:
        assert royalties.settle_due(s, now=order.refundable_until + timedelta(seconds=1)) == [order.id]
    assert _held(db, seller, "royalty:payable:expert:ann:USD") == 676
    paid = royalties.payout_batch(db, Payouts(db, TestProvider()), "2026-12")
    assert sorted(p.amount.amount for p in paid) == [225, 676]
    before = _counts(db)
    with db.session() as s, pytest.raises(Conflict, match="refund window closed"):
        orders.refund(s, buyer, order.id, "refund-1")
    assert _counts(db) == before
    with db.session(write=False) as s:
        assert Ledger(s).check().ok


def test_refund_while_pending_reverses_and_revokes(world) -> None:  # type: ignore[no-untyped-def]
    db, seller, buyer, _ = world
    lst = _publish(db, seller, "clean@1")
    with db.session() as s:
        offer = offers.create_offer(s, seller, lst, pricing="row", amount=250, currency="USD", use="commercial")
    orders.deposit(db, orders.TestCharges(), buyer, "dep", Money(amount=1000, currency="USD"), "card")
    with db.session() as s:
        order = orders.buy(s, buyer, offer.id, "b")
        assert order.amount == 500
    with db.session() as s:
        assert orders.refund(s, buyer, order.id, "r").status == "refunded"
    assert _held(db, buyer, "buyer:prepaid:USD") == 1000
    assert _held(db, seller, f"royalty:pending:org:{seller}:USD") == 0
    with db.session() as s, pytest.raises(Forbidden, match="revoked"):
        entitlements.require(s, buyer, order.entitlement_id and listings.get_listing_row(s, lst, org_id=seller)
                             .resource_id, "download")
    with db.session(write=False) as s:
        assert Ledger(s).check().ok


def test_usage_priced_offer_is_billed_from_the_meter(world) -> None:  # type: ignore[no-untyped-def]
    db, seller, buyer, _ = world
    lst = _publish(db, seller, "clean@1")
    with db.session() as s:
        offer = offers.create_offer(s, seller, lst, pricing="training_use", amount=30, currency="USD")
    orders.deposit(db, orders.TestCharges(), buyer, "dep", Money(amount=1000, currency="USD"), "card")
    with db.session() as s:
        order = orders.buy(s, buyer, offer.id, "b")
        assert order.amount == 0 and order.entry_id is None
        rid = listings.get_listing_row(s, lst, org_id=seller).resource_id
        for _ in range(3):
            entitlements.require(s, buyer, rid, "train")
        entry, units = entitlements.bill_usage(s, buyer, order.entitlement_id)
        assert units == 3 and entry is not None
        assert entitlements.bill_usage(s, buyer, order.entitlement_id) == (None, 0)
    assert _held(db, buyer, "buyer:prepaid:USD") == 910


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("amount", "currency", "param"), [(-5, "USD", "amount"), (0, "USD", "amount"),
                                                           (1.5, "USD", "amount"), (100, "XYZ", "currency")])
def test_bad_prices_refused(world, amount, currency, param) -> None:  # type: ignore[no-untyped-def]
    db, seller, _, _ = world
    lst = _publish(db, seller, "clean@1")
    with db.session() as s, pytest.raises(InvalidInput) as err:
        offers.create_offer(s, seller, lst, pricing="licence", amount=amount, currency=currency)
    assert err.value.param == param


def test_listing_of_another_orgs_data_refused(world) -> None:  # type: ignore[no-untyped-def]
    db, seller, _, other = world
    with db.session(write=False) as s:
        theirs = Datasets(s).resolve(other, "theirs@1").id
    for ref in ("theirs@1", theirs):
        with db.session() as s, pytest.raises(NotFound):
            listings.create_listing(s, seller, kind="dataset", ref=ref, title="stolen")
    with db.session(write=False) as s:
        assert listings.listing_count(s) == 0


def test_buying_refusals_post_nothing(world) -> None:  # type: ignore[no-untyped-def]
    db, seller, buyer, _ = world
    lst = _publish(db, seller, "clean@1")
    with db.session() as s:
        offer = offers.create_offer(s, seller, lst, pricing="licence", amount=700, currency="USD")
    before = _counts(db)
    with db.session() as s, pytest.raises(InsufficientFunds):
        orders.buy(s, buyer, offer.id, "k1")
    with pytest.raises(orders.PaymentDeclined, match="declined"):
        orders.deposit(db, orders.TestCharges({"bad": "declined"}), buyer, "d1", Money(amount=900, currency="USD"),
                       "bad")
    charges = orders.TestCharges({"slow": "timeout", "late": "late"})
    with pytest.raises(orders.ProviderTimeout):
        orders.deposit(db, charges, buyer, "d2", Money(amount=900, currency="USD"), "slow")
    assert orders.deposit(db, charges, buyer, "d3", Money(amount=900, currency="USD"), "late") == "pending"
    assert _counts(db) == before
    # the timed-out charge retried with its key is paid once; the late one posts on its webhook
    assert orders.deposit(db, charges, buyer, "d2", Money(amount=900, currency="USD"), "slow") == "paid"
    orders.charge_webhook(db, buyer, "d3", Money(amount=900, currency="USD"), charges.events[0][1])
    assert _held(db, buyer, "buyer:prepaid:USD") == 1800
    with db.session() as s:
        orders.buy(s, buyer, offer.id, "k1")
    before = _counts(db)
    with db.session() as s:
        other = offers.create_offer(s, seller, lst, pricing="licence", amount=5, currency="USD")
    with db.session() as s, pytest.raises(IdempotencyConflict):
        orders.buy(s, buyer, other.id, "k1")
    assert _counts(db) == before


def test_download_refusals(world) -> None:  # type: ignore[no-untyped-def]
    db, seller, buyer, other = world
    lst = _publish(db, seller, "clean@1")
    with db.session() as s:
        offer = offers.create_offer(s, seller, lst, pricing="licence", amount=100, currency="USD")
        rid = listings.get_listing_row(s, lst, org_id=seller).resource_id
        with pytest.raises(Forbidden, match="no entitlement"):
            entitlements.require(s, other, rid, "download")
    orders.deposit(db, orders.TestCharges(), buyer, "d", Money(amount=100, currency="USD"), "c")
    with db.session() as s:
        order = orders.buy(s, buyer, offer.id, "k")
        link = downloads.sign_link(s, buyer, order.entitlement_id, "parquet")
    body, media, _ = downloads.open_link(db, buyer, link)
    assert body[:4] == b"PAR1"
    with pytest.raises(Forbidden, match="signature"):
        downloads.open_link(db, buyer, link[:-2] + ("A" if link[-2] != "A" else "B") + link[-1])
    with pytest.raises(Forbidden, match="another organisation"):
        downloads.open_link(db, other, link)
    time.sleep(1.1)
    with pytest.raises(downloads.LinkExpired):
        downloads.open_link(db, buyer, link, max_age=0)


def test_an_order_for_a_brokered_proposal_pays_the_broker_its_commission(world) -> None:  # type: ignore[no-untyped-def]
    """Request -> broker proposal -> accept -> order: the broker earns commission_bps of the price, exactly."""
    from teachloop.core.requests import ProposalCreate, RequestCreate
    from teachloop.core.tenancy import Principal, Role
    from teachloop.market.requests import DataRequests, accepted_match, order_for_proposal

    db, seller, buyer, _ = world
    broker = _org(db, "broker")
    lst, lst2 = _publish(db, seller, "clean@1"), _publish(db, seller, "mixed@1")
    with db.session() as s:
        offer = offers.create_offer(s, seller, lst, pricing="licence", amount=2000, currency="USD", use="commercial")
        other = offers.create_offer(s, seller, lst2, pricing="licence", amount=10, currency="USD",
                                    use="non-commercial")
    orders.deposit(db, orders.TestCharges(), buyer, "dep", Money(amount=5000, currency="USD"), "card")
    with db.session() as s:
        requests = DataRequests(s)
        req = requests.post(buyer, RequestCreate(title="clean chats", description="chat pairs for support",
                                                 licences=["commercial"], budget=3000, currency="USD"))
        prop = requests.propose(Principal(broker, None, "k", Role.BROKER), req.id,
                                ProposalCreate(listing_id=lst, commission_bps=500))
    with db.session() as s:  # not accepted yet: nothing to order
        with pytest.raises(Conflict, match="accept it"):
            order_for_proposal(s, buyer, req.id, prop.id, offer.id, "o-1")
        DataRequests(s).accept(buyer, req.id, prop.id)
    before = _counts(db)
    with db.session() as s, pytest.raises(InvalidInput) as err:  # an offer of another listing
        order_for_proposal(s, buyer, req.id, prop.id, other.id, "o-1")
    assert err.value.param == "offer" and _counts(db) == before
    with db.session() as s:
        order = order_for_proposal(s, buyer, req.id, prop.id, offer.id, "o-1")
    parts = {p.party: p.amount for p in order.shares}
    assert parts[f"broker:{broker}"] == 100 and parts["platform"] == 200 and sum(parts.values()) == 2000
    assert _held(db, broker, f"royalty:pending:broker:{broker}:USD") == 100
    with db.session() as s:
        assert order_for_proposal(s, buyer, req.id, prop.id, offer.id, "o-1").replayed  # a retry: the same order
        match = accepted_match(s, order.id)
        assert match is not None and (match.broker_org_id, match.commission_bps) == (broker, 500)
        assert Ledger(s).check().ok


def test_every_download_format_loads_with_its_reader(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What a buyer downloads opens with the standard readers: the HF archive with ``datasets.load_from_disk``,
    parquet with pyarrow, the OpenAI JSONL line by line; each holds every row of the version sold."""
    import io
    import tarfile

    import datasets as hf
    import pyarrow.parquet as pq

    db, seller, buyer, _ = world
    lst = _publish(db, seller, "clean@1")
    with db.session() as s:
        offer = offers.create_offer(s, seller, lst, pricing="licence", amount=100, currency="USD")
        rows = listings.get_listing_row(s, lst, org_id=seller).card["size"]["rows"]
    orders.deposit(db, orders.TestCharges(), buyer, "d", Money(amount=100, currency="USD"), "c")
    with db.session() as s:
        order = orders.buy(s, buyer, offer.id, "k")
        links = {f: downloads.sign_link(s, buyer, order.entitlement_id, f) for f in ("hf", "parquet", "openai")}
    body, media, name = downloads.open_link(db, buyer, links["hf"])
    assert media == "application/gzip" and name.endswith(".hf.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(tmp_path / "hf", filter="data")
    loaded = hf.load_from_disk(str(next((tmp_path / "hf").iterdir())))
    total = sum(len(split) for split in loaded.values()) if isinstance(loaded, hf.DatasetDict) else len(loaded)
    assert total == rows
    body, _, _ = downloads.open_link(db, buyer, links["parquet"])
    assert pq.read_table(io.BytesIO(body)).num_rows == rows
    body, _, _ = downloads.open_link(db, buyer, links["openai"])
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    assert len(lines) == rows and all("messages" in line for line in lines)

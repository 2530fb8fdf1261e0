"""Where projects' items come from (traces, dataset versions, environments, a data request's spec), and where their
results go: a dataset version whose sale on the marketplace pays royalties to the experts who labelled it, and a
payout of an expert's payable balance."""

from __future__ import annotations

from datetime import timedelta

import pytest

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.ids import new_id
from teachloop.core.money import Money
from teachloop.core.work import ProjectCreate, ReviewBody, SubmitBody
from teachloop.ledger import Ledger, Payouts, TestProvider
from teachloop.store import BlobStore, Database
from teachloop.store.repos.datasets import Datasets, NewRow, encode_snapshot
from teachloop.store.repos.traces import Traces
from teachloop.store.schema import Trace
from teachloop.store.schema.base import utc_now
from teachloop.work import pay, projects, results, review, tasks
from tests.unit.work.conftest import PROMPT, T0, Org, make_project


def _create(db: Database, org: str, **body: object):  # type: ignore[no-untyped-def]
    with db.session() as s:
        p = projects.create_project(s, org, ProjectCreate.model_validate(body))
        return projects.project_out(s, p)


def _trace(db: Database, org: str, text: str, model: str = "calc") -> str:
    row = Trace(id=new_id("tr"), org_id=org, key_id=None, model=model, deployment_id=None, deployment_revision=None,
                arm=None, adapter_version_id=None, base_model="b", messages=[{"role": "user", "content": text}],
                tools=None, choices=[{"index": 0, "message": {"role": "assistant", "content": f"re: {text}"}}],
                params={}, finish_reason="stop", prompt_tokens=1, completion_tokens=1, latency_ms=1.0, ttft_ms=None,
                stream=False, user=None, request_metadata={}, created_at=utc_now())
    with db.session() as s:
        Traces(s).add_many([row])
    return row.id


def test_items_from_traces_datasets_environments_and_requests(db: Database, blobs: BlobStore, org: Org) -> None:
    bad = _trace(db, org.id, "q1")
    _trace(db, org.id, "q2")
    _trace(db, org.other_org, "globex's")
    with db.session() as s:
        Traces(s).add_feedback(org.id, bad, score=0.0)
    out = _create(db, org.id, name="fix", task_type="correction",
                  source={"kind": "traces", "filter": {"model": "calc", "max_score": 0.5}})
    assert out.items == 1
    with db.session(write=False) as s:
        item = projects.list_items(s, org.id, "fix")[0]
    assert item.source_trace_id == bad and item.payload["reply"] == "re: q1"
    with pytest.raises(InvalidInput) as err:
        _create(db, org.id, name="fix2", task_type="correction", source={"kind": "traces", "filter": {"colour": 1}})
    assert err.value.param == "source.filter"

    rows = [NewRow(content={"prompt": PROMPT, "chosen": {"role": "assistant", "content": "4"},
                            "rejected": {"role": "assistant", "content": "5"}}, split="train", source_kind="import")]
    data, _ = encode_snapshot("pairs", rows)
    with db.session() as s:
        Datasets(s).create(org.id, name="prefs", kind="pairs", rows=rows, blob_key=blobs.put_content(data),
                           origin="import")
    out = _create(db, org.id, name="cmp", task_type="pairwise", source={"kind": "dataset", "ref": "prefs@1"})
    with db.session(write=False) as s:
        cands = projects.list_items(s, org.id, "cmp")[0].payload["candidates"]
    assert sorted(c["id"] for c in cands) == ["chosen", "rejected"]
    with pytest.raises(NotFound):
        _create(db, org.id, name="cmp2", task_type="pairwise", source={"kind": "dataset", "ref": "nothing@1"})

    out = _create(db, org.id, name="demo", task_type="demonstration",
                  source={"kind": "environment", "ref": "arithmetic", "tasks": 3})
    assert out.items == 3
    out = _create(db, org.id, name="req", task_type="authoring", source={
        "kind": "request", "fulfils": "dreq_123", "spec": {"title": "Tax law Q&A", "description": "<i>hard</i> cases",
                                                           "size": 100}})
    assert out.fulfils == "dreq_123"
    with db.session(write=False) as s:
        spec = projects.spec_of(projects.template_of(s, projects.get_project(s, org.id, "req")))
    assert "Tax law Q&A" in spec.instructions and "<i>hard</i> cases" in spec.instructions


def test_a_sale_of_the_labels_pays_royalties_to_the_experts_and_pay_is_paid_out(db: Database, blobs: BlobStore,
                                                                                org: Org) -> None:
    from teachloop.market import listings, offers, orders, royalties

    p = make_project(db, org.id, "demonstration", items=[{"prompt": PROMPT}], quorum=2, rate=300,
                     review_window_s=0, license="CC-BY-4.0")
    for e in org.experts[:2]:
        with db.session() as s:
            lease = tasks.next_task(s, org.id, e, p, now=T0)
            assert lease is not None
            a = tasks.submit(s, org.id, e, lease.id, SubmitBody(value={"reply": f"4 ({e[-4:]})"}), now=T0)
            review.review(s, org.id, a.id, org.reviewer, ReviewBody(decision="accept"), member=True, now=T0)
    ds = results.build_dataset(db, blobs, org.id, p).dataset
    assert ds is not None
    with db.session() as s:
        lst = listings.create_listing(s, org.id, kind="dataset", ref=ds, title="labels")
        listings.publish_listing(s, org.id, lst.id)
        offer = offers.create_offer(s, org.id, lst.id, pricing="licence", amount=1000, currency="USD",
                                    use="research")
    orders.deposit(db, orders.TestCharges(), org.other_org, "dep-1", Money(amount=5000, currency="USD"), "card")
    with db.session() as s:
        orders.buy(s, org.other_org, offer.id, "buy-1")
    with db.session(write=False) as s:
        mid = [pay.earnings(s, org.id, e) for e in org.experts[:2]]
    assert [m.royalties_pending for m in mid] == [450, 450]  # 1000 less the 10 % fee, split by rows (1 each)
    with db.session() as s:
        royalties.settle_due(s, now=utc_now() + timedelta(days=30))
        pay.release_due(s, org.id, now=utc_now())
    with db.session(write=False) as s:
        after = pay.earnings(s, org.id, org.experts[0])
    assert (after.royalties_available, after.pending, after.available) == (450, 0, 450 + 300)
    payouts = Payouts(db, TestProvider())
    paid = pay.payout(db, payouts, org.id, org.experts[0], "expert-payout-1")
    assert paid is not None and paid.amount.amount == 300 and paid.status == "paid"
    with db.session(write=False) as s:
        assert pay.earnings(s, org.id, org.experts[0]).available == 450  # the royalties are paid by the market run
        assert Ledger(s).check(org.id).ok
    assert pay.payout(db, payouts, org.id, org.experts[0], "expert-payout-2") is None

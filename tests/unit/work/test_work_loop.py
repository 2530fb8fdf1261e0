"""The loop's ``experts`` source: negative-feedback traffic goes to a workforce project within a daily budget, and the
project's aggregated labels come back as training candidates once confident -- loop/ and work/ meeting only through
store/ and catalog/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from teachloop.core.errors import InvalidInput
from teachloop.core.tenancy import Role
from teachloop.core.work import ExpertCreate, ProjectCreate, ReviewBody, SubmitBody
from teachloop.loop.config import check_references, validate_loop_config
from teachloop.loop.sources import collect, send_to_experts
from teachloop.store import Tenancy
from teachloop.store.repos.traces import Traces
from teachloop.work import projects, results, review, tasks, workforce
from tests.unit.loop.conftest import Store, add_trace, sft_config, store  # noqa: F401

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _project(st: Store, name: str, task_type: str) -> None:
    body = ProjectCreate.model_validate({"name": name, "task_type": task_type,
                                         "settings": {"quorum": 1, "gold_share": 0, "min_confidence": 0.5}})
    with st.db.session() as s:
        projects.create_project(s, st.org_id, body)


def _cfg(project: str, **src: object):  # type: ignore[no-untyped-def]
    return validate_loop_config(sft_config(sources=[{"kind": "experts", "project": project, **src}],
                                           gate={"metric": "likelihood"}, promotion={"signals": ["feedback"]}))


def test_unsure_traffic_goes_to_the_experts_and_their_labels_come_back(store: Store) -> None:  # noqa: F811
    _project(store, "fixes", "demonstration")
    bad = [add_trace(store, f"question {i}", "wrong") for i in range(3)]
    good = add_trace(store, "question ok", "right")
    with store.db.session() as s:
        for t in bad:
            Traces(s).add_feedback(store.org_id, t, score=0.0)
        Traces(s).add_feedback(store.org_id, good, score=1.0)
    cfg = _cfg("fixes", daily_budget=2)
    with store.db.session(write=False) as s:
        refs = check_references(cfg, s, blobs=store.blobs, org_id=store.org_id, cache=store.cache)
    sent = []
    for when in (NOW, NOW + timedelta(hours=1), NOW + timedelta(days=1), NOW + timedelta(days=2)):
        with store.db.session() as s:
            sent.append(send_to_experts(s, cfg, refs, org_id=store.org_id, loop_id="loop_x", now=when))
    assert sent == [2, 0, 1, 0]  # the daily budget, then each trace once
    with store.db.session() as s:
        t = Tenancy(s)
        user = t.create_user("ann@acme.test")
        t.add_member(store.org_id, user.id, Role.EXPERT)
        reviewer = t.create_user("rev@acme.test")
        t.add_member(store.org_id, reviewer.id, Role.MEMBER)
        workforce.add_expert(s, store.org_id, ExpertCreate(user_id=user.id))
        items = projects.list_items(s, store.org_id, "fixes")
        assert sorted(i.source_trace_id or "" for i in items) == sorted(bad)
        assert {i.origin for i in items} == {"loop"}
    with store.db.session(write=False) as s:
        assert [c for c in collect(s, cfg, refs, org_id=store.org_id, loop_id="loop_x")] == []
    for _ in bad:
        with store.db.session() as s:
            lease = tasks.next_task(s, store.org_id, user.id, "fixes", now=NOW)
            assert lease is not None
            answer = tasks.submit(s, store.org_id, user.id, lease.id, SubmitBody(value={"reply": "right"}), now=NOW)
            review.review(s, store.org_id, answer.id, reviewer.id, ReviewBody(decision="accept"), member=True, now=NOW)
    out = results.build_dataset(store.db, store.blobs, store.org_id, "fixes")
    assert out.rows == 3 and out.kind == "chat"
    with store.db.session(write=False) as s:
        cands = collect(s, cfg, refs, org_id=store.org_id, loop_id="loop_x")
    assert len(cands) == 3 and {c.source_kind for c in cands} == {"expert"}
    assert {c.lineage["expert_id"] for c in cands} == {user.id}
    assert {c.lineage["source_trace_id"] for c in cands} == set(bad)
    assert all(c.content["messages"][-1] == {"role": "assistant", "content": "right"} for c in cands)
    # above the rows' confidence, nothing is trained on
    with store.db.session(write=False) as s:
        high = _cfg("fixes", min_confidence=1.0)
        assert len(collect(s, high, refs, org_id=store.org_id, loop_id="loop_x")) == 3  # reviewed rows: 1.0


@pytest.mark.parametrize(("project", "message"), [("nope", "not found"), ("pairs", "pairwise project")])
def test_an_experts_source_must_name_a_project_that_takes_traces(store: Store, project: str,  # noqa: F811
                                                                  message: str) -> None:
    _project(store, "pairs", "pairwise")
    cfg = _cfg(project)
    with store.db.session(write=False) as s, pytest.raises(InvalidInput, match=message) as err:
        check_references(cfg, s, blobs=store.blobs, org_id=store.org_id, cache=store.cache)
    assert err.value.param == "sources.0.project"
    with pytest.raises(InvalidInput, match="experts"):
        validate_loop_config(sft_config(sources=[{"kind": "exprts", "project": "x"}], gate={"metric": "likelihood"}, promotion={"signals": ["feedback"]}))

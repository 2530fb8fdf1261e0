"""The workforce's services end to end on a real (SQLite) store and ledger: leases, quorum, gold, review, pay,
exams, disputes, agreement, aggregation into dataset versions whose lineage pays the experts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from teachloop.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from teachloop.core.work import (
    AttemptBody,
    DisputeResolve,
    ExamCreate,
    ItemIn,
    ReviewBody,
    SubmitBody,
)
from teachloop.ledger import Ledger
from teachloop.store import Database
from teachloop.store.repos.datasets import Datasets
from teachloop.store.schema import LedgerEntry, WorkAnswer, WorkAssignment
from teachloop.work import pay, projects, results, review, tasks, workforce
from tests.unit.work.conftest import PROMPT, T0, Org, make_project, pair_item


def _lease(db: Database, org: str, user: str, project: str, now=T0):  # type: ignore[no-untyped-def]
    with db.session() as s:
        lease = tasks.next_task(s, org, user, project, now=now)
        return None if lease is None else (lease.id, lease.item_id)


def _submit(db: Database, org: str, user: str, lease: str, value: dict, now=T0, active: int = 0) -> str:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return tasks.submit(s, org, user, lease, SubmitBody(value=value, active_seconds=active), now=now).id


def _review(db: Database, org: Org, answer: str, decision: str, now=T0, **kw) -> None:  # type: ignore[no-untyped-def]
    with db.session() as s:
        review.review(s, org.id, answer, org.reviewer, ReviewBody.model_validate({"decision": decision, **kw}),
                      member=True, now=now)


def _count(db: Database, table) -> int:  # type: ignore[no-untyped-def]
    with db.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_leases_quorum_expiry_and_ownership(db: Database, org: Org) -> None:
    p = make_project(db, org.id, "pairwise", items=[pair_item(), pair_item()], quorum=2, lease_seconds=60)
    e0, e1, e2, e3 = org.experts[:4]
    a0, item1 = _lease(db, org.id, e0, p)
    assert _lease(db, org.id, e0, p) == (a0, item1)  # one task at a time: the same lease back
    a1, i = _lease(db, org.id, e1, p)
    assert i == item1  # the item closest to its quorum first
    a2, item2 = _lease(db, org.id, e2, p)
    assert item2 != item1  # item1 is fully held
    with pytest.raises(Forbidden, match="another expert"):
        _submit(db, org.id, e3, a0, {"choice": "a"})
    _submit(db, org.id, e0, a0, {"choice": "a"})
    with pytest.raises(Conflict, match="submitted"):
        _submit(db, org.id, e0, a0, {"choice": "b"})
    later = T0 + timedelta(seconds=61)
    with pytest.raises(Conflict, match="expired"):
        _submit(db, org.id, e2, a2, {"choice": "a"}, now=later)
    assert _count(db, WorkAnswer) == 1  # refusals wrote nothing
    a3, i3 = _lease(db, org.id, e3, p, now=later)  # e1's and e2's leases expired: item1 is closest to quorum
    assert i3 == item1
    a4, i4 = _lease(db, org.id, e2, p, now=later)  # e2 may take item2 again after its lease expired
    assert i4 == item2 and a4 != a2
    with db.session(write=False) as s:
        statuses = dict(s.execute(select(WorkAssignment.id, WorkAssignment.status)).all())
    assert statuses[a1] == statuses[a2] == "expired"
    # another organisation's expert cannot reach the project
    with pytest.raises(NotFound):
        _lease(db, org.other_org, org.outsider, p)


def test_expert_never_sees_gold_or_suggestions_unless_shown(db: Database, org: Org) -> None:
    p = make_project(db, org.id, "pairwise", gold_share=0.5,
                     items=[pair_item(), pair_item(gold_answer={"choice": "a"}, suggestion={"choice": "b"})])
    first, _ = _lease(db, org.id, org.experts[0], p)
    _submit(db, org.id, org.experts[0], first, {"choice": "a"})
    a, gold = _lease(db, org.id, org.experts[0], p)  # the 2nd task: floor(0.5 * 2) = 1 gold answer is due
    assert _is_gold_item(db, gold)
    with db.session(write=False) as s:
        task = tasks.task_out(s, tasks.get_lease(s, org.id, org.experts[0], a))
    dumped = task.model_dump_json()
    assert "gold" not in dumped and "suggestion" not in dumped
    with db.session() as s:
        projects.update_settings(s, org.id, p, projects.settings_of(projects.get_project(s, org.id, p))
                                 .model_copy(update={"show_suggestions": True}))
    with db.session(write=False) as s:
        task = tasks.task_out(s, tasks.get_lease(s, org.id, org.experts[0], a))
    assert task.payload["suggestion"] == {"choice": "b"} and "gold_answer" not in task.model_dump_json()


@pytest.mark.parametrize(("task_type", "item", "value", "param"), [
    ("demonstration", {"prompt": PROMPT}, {"reply": "   "}, "value.reply"),
    ("demonstration", {"prompt": PROMPT}, {"reply": "ok", "extra": 1}, "value.extra"),
    ("correction", {"prompt": PROMPT, "reply": "5"}, {"reply": "5"}, "value.reply"),
    ("rubric", {"prompt": PROMPT, "reply": "4"}, {"scores": {"correct": 6, "clear": 2}}, "value.scores.correct"),
    ("rubric", {"prompt": PROMPT, "reply": "4"}, {"scores": {"correct": 5}}, "value.scores.clear"),
    ("pairwise", pair_item(), {"choice": "c"}, "value.choice"),
    ("ranked", pair_item(), {"order": ["a", "a"]}, "value.order"),
    ("authoring", {}, {"prompt": "p", "answer": ""}, "value.answer"),
])
def test_bad_answers_are_refused_and_change_nothing(db: Database, org: Org, task_type: str, item: dict,
                                                    value: dict, param: str) -> None:
    p = make_project(db, org.id, task_type, items=[item], rate=100)
    a, _ = _lease(db, org.id, org.experts[0], p)
    with pytest.raises(InvalidInput) as err:
        _submit(db, org.id, org.experts[0], a, value)
    assert err.value.param == param
    assert _count(db, WorkAnswer) == 0 and _count(db, LedgerEntry) == 0
    with db.session(write=False) as s:
        assert s.get(WorkAssignment, a).status == "leased"  # the lease is still usable


def test_html_is_stored_as_given(db: Database, org: Org) -> None:
    p = make_project(db, org.id, "demonstration", items=[{"prompt": PROMPT}])
    a, _ = _lease(db, org.id, org.experts[0], p)
    text = "<script>alert(1)</script><b>4</b>"
    answer = _submit(db, org.id, org.experts[0], a, {"reply": text})
    with db.session(write=False) as s:
        assert s.get(WorkAnswer, answer).value == {"reply": text}


def test_review_pays_through_the_ledger_after_the_window(db: Database, org: Org) -> None:
    p = make_project(db, org.id, "demonstration", items=[{"prompt": PROMPT}, {"prompt": PROMPT}], quorum=1,
                     rate=250, review_window_s=3600)
    e0 = org.experts[0]
    a, _ = _lease(db, org.id, e0, p)
    good = _submit(db, org.id, e0, a, {"reply": "4"})
    a, _ = _lease(db, org.id, e0, p)
    bad = _submit(db, org.id, e0, a, {"reply": "five"})
    with pytest.raises(InvalidInput, match="reason"):
        _review(db, org, bad, "reject")
    with db.session() as s, pytest.raises(Forbidden):  # an expert who is not a named reviewer
        review.review(s, org.id, good, org.experts[1], ReviewBody(decision="accept"), member=False)
    _review(db, org, good, "accept")
    _review(db, org, bad, "reject", reason="wrong: 2+2 is 4")
    with pytest.raises(Conflict):
        _review(db, org, good, "accept")
    with db.session(write=False) as s:
        e = pay.earnings(s, org.id, e0)
        assert (e.pending, e.available, e.accepted_tasks) == (250, 0, 1)
        mine = {m.id: m for m in tasks.my_answers(s, org.id, e0)}
        assert mine[bad].reason == "wrong: 2+2 is 4" and mine[bad].status == "rejected"
    with db.session() as s:
        assert pay.release_due(s, org.id, now=T0 + timedelta(seconds=3599)) == []
        assert pay.release_due(s, org.id, now=T0 + timedelta(seconds=3600)) == [good]
        assert pay.release_due(s, org.id, now=T0 + timedelta(days=9)) == []  # once
    with db.session(write=False) as s:
        e = pay.earnings(s, org.id, e0)
        assert (e.pending, e.available) == (0, 250)
        assert Ledger(s).check(org.id).ok


def test_minimum_hourly_rate_is_topped_up_at_period_close(db: Database, org: Org) -> None:
    p = make_project(db, org.id, "demonstration", items=[{"prompt": PROMPT}] * 2, quorum=1, pay_mode="minute",
                     rate=10, min_hourly=1200)
    e0 = org.experts[0]
    for _ in range(2):
        a, _ = _lease(db, org.id, e0, p)
        ans = _submit(db, org.id, e0, a, {"reply": "4"}, now=T0 + timedelta(minutes=10), active=600)
        _review(db, org, ans, "accept", now=T0 + timedelta(minutes=11))
    with db.session() as s:
        project = projects.get_project(s, org.id, p)
        project.created_at = T0 - timedelta(hours=1)
        row = pay.close_period(s, org.id, project, "2026-12-01", until=T0 + timedelta(hours=1),
                               now=T0 + timedelta(hours=2))
    # 20 active minutes at 10/min earned 200; the floor is 1200/h * 1200 s = 400: topped up by 200
    assert row.topups == {e0: 200}
    with db.session() as s, pytest.raises(Conflict):
        pay.close_period(s, org.id, projects.get_project(s, org.id, p), "2026-12-01",
                         until=T0 + timedelta(hours=1), now=T0 + timedelta(hours=2))
    with db.session(write=False) as s:
        e = pay.earnings(s, org.id, e0)
        assert (e.pending, e.available) == (200, 200)


def test_gold_pauses_an_expert_and_an_upheld_dispute_resumes_them(db: Database, org: Org) -> None:
    gold = [pair_item(gold_answer={"choice": "a"}) for _ in range(3)]
    p = make_project(db, org.id, "pairwise", items=[*gold, pair_item(), pair_item(), pair_item()], gold_share=0.5, quorum=1,
                     min_gold=2, pause_below=0.05, rate=10)
    e0 = org.experts[0]
    answers = []
    for _ in range(4):
        a, _ = _lease(db, org.id, e0, p)
        answers.append(_submit(db, org.id, e0, a, {"choice": "b"}))
    with db.session(write=False) as s:
        q = review.quality(s, org.id, e0, p)
        assert (q.gold_answers, q.gold_correct, q.status) == (2, 0, "paused")
        assert "accuracy on hidden gold items" in (q.pause_reason or "")
    with pytest.raises(Forbidden, match="paused"):
        _lease(db, org.id, e0, p)
    gold_answers = [a for a in answers if _is_gold(db, a)]
    with db.session() as s:
        with pytest.raises(Forbidden):
            review.open_dispute(s, org.id, org.experts[1], gold_answers[0], "not mine")
        d = review.open_dispute(s, org.id, e0, gold_answers[0], "B is right: the prompt asks for the wrong sum")
        dispute = d.id
    with db.session() as s:
        review.resolve_dispute(s, org.id, dispute, DisputeResolve(decision="uphold", gold_answer={"choice": "b"}))
    with db.session(write=False) as s:
        q = review.quality(s, org.id, e0, p)
        assert (q.gold_answers, q.gold_correct, q.status) == (2, 1, "active")
    assert _lease(db, org.id, e0, p) is not None


def _is_gold_item(db: Database, item: str) -> bool:
    from teachloop.store.schema import WorkItem

    with db.session(write=False) as s:
        return bool(s.get(WorkItem, item).is_gold)


def _is_gold(db: Database, answer: str) -> bool:
    with db.session(write=False) as s:
        return bool(s.get(WorkAnswer, answer).is_gold)


def test_exam_gates_the_project_with_a_retake_cooldown(db: Database, org: Org) -> None:
    p = make_project(db, org.id, "pairwise", items=[pair_item()], skill="math")
    e0 = org.experts[0]
    exam = ExamCreate.model_validate({"questions": [
        {"id": "q1", "prompt": "2+2?", "options": ["3", "4"], "answer": "4"},
        {"id": "q2", "prompt": "3*3?", "options": ["9", "6"], "answer": "9"}], "pass_score": 1.0, "cooldown_s": 600})
    with db.session() as s:
        workforce.put_exam(s, org.id, "math", exam)
    with db.session(write=False) as s:
        assert "answer" not in workforce.exam_for(s, org.id, "math").model_dump_json()
    with pytest.raises(Forbidden, match="qualification"):
        _lease(db, org.id, e0, p)
    with db.session() as s:
        failed = workforce.attempt(s, org.id, e0, "math", AttemptBody(answers={"q1": "4", "q2": "6"}).answers, now=T0)
        assert (failed.score, failed.passed) == (0.5, False)
    with db.session() as s, pytest.raises(Conflict, match="retake"):
        workforce.attempt(s, org.id, e0, "math", {"q1": "4", "q2": "9"}, now=T0 + timedelta(seconds=599))
    with db.session() as s:
        assert workforce.attempt(s, org.id, e0, "math", {"q1": "4", "q2": "9"}, now=T0 + timedelta(seconds=600)).passed
    assert _lease(db, org.id, e0, p) is not None


def test_pairwise_results_become_a_dpo_dataset_whose_lineage_pays_each_expert(db: Database, blobs, org: Org) -> None:  # type: ignore[no-untyped-def]
    from teachloop.market.royalties import lineage_parties

    p = make_project(db, org.id, "pairwise", items=[pair_item(), pair_item()], quorum=3, rate=5, min_confidence=0.55)
    votes = {0: ["a", "a", "b"], 1: ["b", "b", "b"]}
    for k, e in enumerate(org.experts[:3]):
        for _ in range(2):
            a, item = _lease(db, org.id, e, p)
            idx = 0 if item == _first_item(db, p) else 1
            ans = _submit(db, org.id, e, a, {"choice": votes[idx][k]})
            _review(db, org, ans, "accept")
    with db.session(write=False) as s:
        agreement = results.agreement(s, org.id, p)
    assert agreement.alpha is not None and len(agreement.items) == 2 and agreement.kappas
    out = results.build_dataset(db, blobs, org.id, p)
    assert out.kind == "pairs" and out.dataset == "pairwise-proj-labels@1"
    with db.session(write=False) as s:
        ds = Datasets(s).resolve(org.id, out.dataset)
        rows = Datasets(s).rows(org.id, ds.id)
        assert ds.origin == "labels" and ds.source["project"] == p
        assert all(r.expert_id in org.experts and r.content["chosen"]["content"] in ("4", "5") for r in rows)
        parties = lineage_parties(s, ds)
    # the dissenting vote on item 0 is no row; every agreeing expert is paid for theirs
    assert sum(parties.values()) == out.rows == 5
    assert parties == {f"expert:{org.experts[0]}": 2, f"expert:{org.experts[1]}": 2, f"expert:{org.experts[2]}": 1}
    # Bradley-Terry: a 2-1 split is P = 0.6, a 3-0 one 0.8; above 0.6 only the unanimous item is trained on
    with db.session() as s:
        settings = projects.settings_of(projects.get_project(s, org.id, p))
        projects.update_settings(s, org.id, p, settings.model_copy(update={"min_confidence": 0.7}))
    strict = results.build_dataset(db, blobs, org.id, p)
    assert (strict.rows, strict.skipped_low_confidence, strict.dataset) == (3, 1, "pairwise-proj-labels@2")


def _first_item(db: Database, project: str) -> str:
    with db.session(write=False) as s:
        return _items(s, project)[0]


def _items(s, project):  # type: ignore[no-untyped-def]
    from teachloop.store.schema import WorkItem

    return [i.id for i in s.scalars(select(WorkItem).where(WorkItem.project_id == project)
                                    .order_by(WorkItem.created_at, WorkItem.id))]


@pytest.mark.parametrize(("task_type", "item", "value", "kind"), [
    ("demonstration", {"prompt": PROMPT}, {"reply": "4"}, "chat"),
    ("correction", {"prompt": PROMPT, "reply": "5"}, {"reply": "4"}, "chat"),
    ("ranked", {"prompt": PROMPT, "candidates": [{"id": "a", "text": "4"}, {"id": "b", "text": "5"},
                                                 {"id": "c", "text": "6"}]}, {"order": ["a", "b", "c"]}, "pairs"),
    ("rubric", {"prompt": PROMPT, "reply": "4"}, {"scores": {"correct": 5, "clear": 3}}, "chat"),
    ("authoring", {}, {"prompt": "What is 3+3?", "answer": "6", "rubric": ["exact number"]}, "prompts"),
])
def test_every_task_type_becomes_rows_of_its_kind(db: Database, blobs, org: Org, task_type: str, item: dict,  # type: ignore[no-untyped-def]
                                                  value: dict, kind: str) -> None:
    p = make_project(db, org.id, task_type, items=[item], quorum=2, min_confidence=0.5)
    for e in org.experts[:2]:
        a, _ = _lease(db, org.id, e, p)
        ans = _submit(db, org.id, e, a, value)
        _review(db, org, ans, "accept")
    if task_type == "correction":
        with db.session(write=False) as s:
            assert "-5" in (s.get(WorkAnswer, ans).diff or "") and "+4" in (s.get(WorkAnswer, ans).diff or "")
    out = results.build_dataset(db, blobs, org.id, p)
    assert (out.kind, out.rows) == (kind, 2), out
    with db.session(write=False) as s:
        rows = Datasets(s).rows(org.id, Datasets(s).resolve(org.id, out.dataset or "").id)
    assert {r.expert_id for r in rows} == set(org.experts[:2])
    if kind == "prompts":
        assert rows[0].content["answer"] == "6"


def test_items_are_validated_before_any_is_written(db: Database, org: Org) -> None:
    p = make_project(db, org.id, "pairwise")
    with db.session() as s, pytest.raises(InvalidInput) as err:
        projects.add_items(s, org.id, p, [ItemIn.model_validate(pair_item()),
                                          ItemIn.model_validate({"prompt": PROMPT, "candidates": []})])
    assert err.value.param == "items.1.candidates"
    d = make_project(db, org.id, "demonstration")
    with db.session() as s, pytest.raises(InvalidInput, match="scorable"):
        projects.add_items(s, org.id, d, [ItemIn(prompt=PROMPT, gold_answer={"reply": "4"})])
    with db.session(write=False) as s:
        assert projects.list_items(s, org.id, p) == []

"""Properties of the queue and the pay that must hold for any sequence of leases, submissions, expiries and reviews:
an item is never held or answered beyond its quorum, never twice by one expert, and the money posted to the experts'
balances is exactly the rate times the accepted answers, with the ledger balanced."""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from teachloop.core.errors import Conflict, InvalidInput
from teachloop.core.tenancy import Role
from teachloop.core.work import ExpertCreate, ItemIn, ProjectCreate, ReviewBody, SubmitBody
from teachloop.ledger import Ledger
from teachloop.store import Database, Tenancy
from teachloop.store.schema import LedgerAccount, WorkAnswer, WorkAssignment
from teachloop.work import pay, projects, review, tasks, workforce
from tests.unit.work.conftest import T0, pair_item

QUORUM, RATE, LEASE = 2, 7, 60
OPS = st.lists(st.tuples(st.sampled_from(["lease", "submit", "wait", "accept", "reject"]), st.integers(0, 3),
                         st.sampled_from(["a", "b"])), min_size=1, max_size=40)


def _world(migrated_sqlite: Callable[[Path], str], folder: Path) -> tuple[Database, str, str, list[str], str]:
    db = Database(migrated_sqlite(folder / "t.db"))
    with db.session() as s:
        t = Tenancy(s)
        org = t.create_org("acme").id
        reviewer = t.create_user("r@acme.test").id
        t.add_member(org, reviewer, Role.MEMBER)
        experts = []
        for i in range(4):
            u = t.create_user(f"e{i}@acme.test").id
            t.add_member(org, u, Role.EXPERT)
            workforce.add_expert(s, org, ExpertCreate(user_id=u))
            experts.append(u)
        body = ProjectCreate.model_validate({"name": "p", "task_type": "pairwise", "settings": {
            "quorum": QUORUM, "rate": RATE, "lease_seconds": LEASE, "gold_share": 0, "review_window_s": 0}})
        p = projects.create_project(s, org, body).id
        projects.add_items(s, org, p, [ItemIn.model_validate(pair_item()) for _ in range(3)])
    return db, org, reviewer, experts, p


def _invariants(db: Database, now) -> None:  # type: ignore[no-untyped-def]
    with db.session(write=False) as s:
        answers = list(s.scalars(select(WorkAnswer)))
        leases = [a for a in s.scalars(select(WorkAssignment)) if a.status == "leased" and a.expires_at > now]
    counted = Counter(a.item_id for a in answers if a.status != "rejected")
    held = Counter(a.item_id for a in leases)
    for item in set(counted) | set(held):
        assert counted[item] + held[item] <= QUORUM, (item, counted[item], held[item])
    assert max(Counter((a.item_id, a.expert_id) for a in answers).values(), default=0) <= 1
    assert max(Counter((a.item_id, a.expert_id) for a in leases).values(), default=0) <= 1


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_sequence_keeps_the_quorum_and_pays_exactly(migrated_sqlite: Callable[[Path], str], ops: list[tuple[str, int, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db, org, reviewer, experts, p = _world(migrated_sqlite, Path(tmp))
        now = T0
        try:
            for op, who, choice in ops:
                user = experts[who]
                with db.session() as s:
                    if op == "lease":
                        tasks.next_task(s, org, user, p, now=now)
                    elif op == "wait":
                        now += timedelta(seconds=LEASE // 2 + 1)
                    elif op == "submit":
                        lease = s.scalars(select(WorkAssignment).where(WorkAssignment.expert_id == user,
                                                                       WorkAssignment.status == "leased")).first()
                        if lease is not None:
                            with contextlib.suppress(Conflict):  # the lease expired: refused, nothing written
                                tasks.submit(s, org, user, lease.id, SubmitBody(value={"choice": choice}), now=now)
                    else:
                        pending = s.scalars(select(WorkAnswer).where(WorkAnswer.status == "submitted")
                                            .order_by(WorkAnswer.created_at, WorkAnswer.id)).first()
                        if pending is not None:
                            body = ReviewBody(decision="accept") if op == "accept" else ReviewBody(
                                decision="reject", reason="no")
                            review.review(s, org, pending.id, reviewer, body, member=True, now=now)
                _invariants(db, now)
            with db.session() as s:
                pay.release_due(s, org, now=now + timedelta(days=1))
            with db.session(write=False) as s:
                accepted = [a for a in s.scalars(select(WorkAnswer)) if a.status == "accepted"]
                paid = sum(-a.balance for a in s.scalars(select(LedgerAccount).where(
                    LedgerAccount.name.like("work:payable:expert:%"))))
                pending = sum(-a.balance for a in s.scalars(select(LedgerAccount).where(
                    LedgerAccount.name.like("work:pending:expert:%"))))
                assert Ledger(s).check(org).ok
            assert paid == RATE * len(accepted) and pending == 0
            assert Counter(a.item_id for a in accepted).most_common(1)[0][1] <= QUORUM if accepted else True
        finally:
            db.close()


def test_a_refused_submission_changes_nothing(migrated_sqlite: Callable[[Path], str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db, org, _, experts, p = _world(migrated_sqlite, Path(tmp))
        try:
            with db.session() as s:
                lease = tasks.next_task(s, org, experts[0], p, now=T0)
                assert lease is not None
                lease_id = lease.id
            for value in ({"choice": "z"}, {}, {"choice": "a", "x": 1}):
                with db.session() as s:
                    try:
                        tasks.submit(s, org, experts[0], lease_id, SubmitBody(value=value), now=T0)
                        raise AssertionError("accepted a bad value")
                    except InvalidInput:
                        pass
            with db.session(write=False) as s:
                assert s.scalars(select(WorkAnswer)).first() is None
                assert s.get(WorkAssignment, lease_id).status == "leased"
        finally:
            db.close()

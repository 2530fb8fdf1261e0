"""The expert's queue: lease the next task, submit an answer, skip; and the expert's own answers.

``next_task(session, org, user, project)`` leases one item to the expert for the project's
``lease_seconds`` and returns the assignment (None when nothing is waiting). The rules:

- a paused expert gets nothing (``Forbidden`` with the pause reason); a project with a ``skill``
  needs that exam passed (``Forbidden``); another organisation's project is ``NotFound``;
- leases past their expiry are marked ``expired`` first, which returns their items to the queue;
- an expert holding a live lease in the project gets that one back (one task at a time);
- an item is offered only while its answers that count (submitted, accepted, fixed) plus its live
  leases are fewer than the quorum, and never to an expert who answered it or holds it -- so no
  item is held by two experts beyond its quorum and none gets more than ``quorum`` answers;
- gold items are hidden among the rest: the expert's ``n``-th task is gold when
  ``floor(gold_share * n)`` exceeds the gold answers they gave; otherwise the item closest to its
  quorum comes first (then the oldest).

``submit`` checks the lease (someone else's: ``Forbidden``; expired or already used:
``Conflict``; nothing is written on a refusal), validates the value for the task type
(``values.check_value``), caps the tracked active time at the lease's age, prices the answer,
and records it. A gold item's answer is scored against the gold answer, accepted automatically
(and paid), and the expert's quality re-checked (``review.check_quality``: the pause rule). The
expert never sees a gold answer nor another expert's answer (``task_out``). Functions work in a
caller-owned session and never commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, Forbidden, NotFound
from teachloop.core.work import AnswerStatus, MyAnswerOut, SubmitBody, TaskOut, TaskType
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.work import WorkAnswer, WorkAssignment, WorkExpert, WorkItem, WorkProject
from teachloop.work import pay
from teachloop.work.projects import COUNTED, get_project, settings_of, spec_of, template_of
from teachloop.work.review import check_quality
from teachloop.work.values import check_value, gold_matches
from teachloop.work.workforce import get_expert, qualified


def _active_expert(session: Session, org_id: str, user_id: str | None) -> WorkExpert:
    expert = get_expert(session, org_id, user_id)
    if expert.status == "paused":
        raise Forbidden(f"you are paused and get no work: {expert.pause_reason or 'ask the project owner'}",
                        param="expert")
    return expert


def expire_leases(session: Session, project_id: str, now: datetime) -> int:
    """Mark the project's leases past their expiry ``expired`` (their items return to the queue)."""
    rows = list(session.scalars(select(WorkAssignment).where(
        WorkAssignment.project_id == project_id, WorkAssignment.status == "leased", WorkAssignment.expires_at <= now)))
    for a in rows:
        a.status, a.ended_at = "expired", now
    session.flush()
    return len(rows)


def next_task(session: Session, org_id: str, user_id: str | None, project_ref: str, *,
              now: datetime | None = None) -> WorkAssignment | None:
    """Lease the next task of the project to the expert (see the module docstring); None when none waits."""
    now = now or utc_now()
    project = get_project(session, org_id, project_ref)
    session.refresh(project, with_for_update=True)  # one leaser per project at a time (PostgreSQL row lock)
    expert = _active_expert(session, org_id, user_id)
    settings = settings_of(project)
    if project.status != "open":
        raise Conflict(f"project {project.name!r} is {project.status}", param="project")
    if settings.skill and settings.skill not in qualified(session, org_id, expert.user_id):
        raise Forbidden(f"project {project.name!r} needs the {settings.skill} qualification: pass its exam first",
                        param="project")
    expire_leases(session, project.id, now)
    held = session.scalars(select(WorkAssignment).where(
        WorkAssignment.project_id == project.id, WorkAssignment.expert_id == expert.user_id,
        WorkAssignment.status == "leased")).first()
    if held is not None:
        return held
    item = _pick(session, project, expert.user_id, settings.quorum, settings.gold_share)
    if item is None:
        return None
    lease = WorkAssignment(org_id=org_id, project_id=project.id, item_id=item.id, expert_id=expert.user_id,
                           status="leased", leased_at=now, expires_at=now + timedelta(seconds=settings.lease_seconds))
    session.add(lease)
    session.flush()
    return lease


def _pick(session: Session, project: WorkProject, user_id: str, quorum: int, gold_share: float) -> WorkItem | None:
    mine = set(session.scalars(select(WorkAnswer.item_id).where(WorkAnswer.project_id == project.id,
                                                                WorkAnswer.expert_id == user_id)))
    answered = len(mine)
    gold_done = int(session.scalar(select(func.count()).select_from(WorkAnswer).where(
        WorkAnswer.project_id == project.id, WorkAnswer.expert_id == user_id, WorkAnswer.is_gold.is_(True))) or 0)
    counts = dict(session.execute(select(WorkAnswer.item_id, func.count()).where(
        WorkAnswer.project_id == project.id, WorkAnswer.status.in_(COUNTED)).group_by(WorkAnswer.item_id))
        .all())
    leases = dict(session.execute(select(WorkAssignment.item_id, func.count()).where(
        WorkAssignment.project_id == project.id, WorkAssignment.status == "leased").group_by(WorkAssignment.item_id))
        .all())
    items = list(session.scalars(select(WorkItem).where(WorkItem.project_id == project.id)
                                 .order_by(WorkItem.created_at, WorkItem.id)))
    gold = [i for i in items if i.is_gold and i.id not in mine]
    if gold and int(gold_share * (answered + 1)) > gold_done:
        return gold[0]
    open_items = [i for i in items if not i.is_gold and i.id not in mine
                  and counts.get(i.id, 0) + leases.get(i.id, 0) < quorum]
    if not open_items:
        return None
    open_items.sort(key=lambda i: -(counts.get(i.id, 0) + leases.get(i.id, 0)))  # stable: oldest first within
    return open_items[0]


def task_out(session: Session, lease: WorkAssignment) -> TaskOut:
    """The task as the expert sees it: the item (suggestion only when shown), never a gold or other answer."""
    project = session.get(WorkProject, lease.project_id)
    item = session.get(WorkItem, lease.item_id)
    assert project is not None and item is not None
    payload = dict(item.payload)
    if not settings_of(project).show_suggestions:
        payload.pop("suggestion", None)
    tpl = template_of(session, project)
    return TaskOut(assignment_id=lease.id, project_id=project.id, project=project.name,
                   task_type=TaskType(project.task_type), item_id=item.id, template_version=tpl.version,
                   template=spec_of(tpl), payload=payload, expires_at=lease.expires_at)


def get_lease(session: Session, org_id: str, user_id: str | None, assignment_id: str) -> WorkAssignment:
    """The expert's own lease; another expert's is ``Forbidden``, another organisation's ``NotFound``."""
    lease = session.get(WorkAssignment, assignment_id) if isinstance(assignment_id, str) else None
    if lease is None or lease.org_id != org_id:
        raise NotFound(f"task {assignment_id!r} not found", param="assignment_id")
    if lease.expert_id != user_id:
        raise Forbidden(f"task {assignment_id} belongs to another expert", param="assignment_id")
    return lease


def _live(lease: WorkAssignment, now: datetime) -> None:
    if lease.status != "leased":
        raise Conflict(f"task {lease.id} is {lease.status}; take the next task", param="assignment_id")
    if lease.expires_at <= now:
        raise Conflict(f"the lease on task {lease.id} expired at {lease.expires_at.isoformat(timespec='seconds')}; "
                       "take the next task", param="assignment_id")


def submit(session: Session, org_id: str, user_id: str | None, assignment_id: str, body: SubmitBody, *,
           now: datetime | None = None) -> WorkAnswer:
    """Record the expert's answer to a leased task (see the module docstring)."""
    now = now or utc_now()
    lease = get_lease(session, org_id, user_id, assignment_id)
    expert = _active_expert(session, org_id, user_id)
    _live(lease, now)
    project = session.get(WorkProject, lease.project_id)
    item = session.get(WorkItem, lease.item_id)
    assert project is not None and item is not None
    settings = settings_of(project)
    tpl = template_of(session, project)
    task_type = TaskType(project.task_type)
    value, diff = check_value(task_type, spec_of(tpl), item.payload, body.value)
    active = min(body.active_seconds, max(0, int((now - lease.leased_at).total_seconds())))
    answer = WorkAnswer(org_id=org_id, project_id=project.id, item_id=item.id, assignment_id=lease.id,
                        expert_id=expert.user_id, template_version=tpl.version, value=value, diff=diff,
                        is_gold=item.is_gold, active_seconds=active, status=AnswerStatus.SUBMITTED.value,
                        amount=pay.amount_for(settings, active), currency=settings.currency, created_at=now)
    lease.status, lease.ended_at = "submitted", now
    session.add(answer)
    session.flush()
    if item.is_gold and item.gold_answer is not None:
        answer.gold_correct = gold_matches(task_type, item.gold_answer, value)
        answer.status, answer.reviewed_by, answer.reviewed_at = AnswerStatus.ACCEPTED.value, "system", now
        answer.reason = "gold item: scored automatically"
        pay.earn(session, answer, settings, now=now)
        check_quality(session, project, expert)
    AuditLog(session).record(org_id, expert.user_id, "work.answer.submit", answer.id,
                             {"item": item.id, "project": project.id})
    return answer


def release(session: Session, org_id: str, user_id: str | None, assignment_id: str, *,
            now: datetime | None = None) -> WorkAssignment:
    """Give a leased task back unanswered (skip): it returns to the queue, for other experts."""
    now = now or utc_now()
    lease = get_lease(session, org_id, user_id, assignment_id)
    _live(lease, now)
    lease.status, lease.ended_at = "released", now
    session.flush()
    return lease


def my_answers(session: Session, org_id: str, user_id: str | None, *, limit: int = 200,
               project_ref: str | None = None) -> list[MyAnswerOut]:
    """The expert's own answers (in one project), newest first, with their reviews (never a gold answer)."""
    get_expert(session, org_id, user_id)
    query = select(WorkAnswer).where(WorkAnswer.org_id == org_id, WorkAnswer.expert_id == user_id)
    if project_ref is not None:
        query = query.where(WorkAnswer.project_id == get_project(session, org_id, project_ref).id)
    rows = session.scalars(query.order_by(WorkAnswer.created_at.desc(), WorkAnswer.id.desc()).limit(limit))
    return [MyAnswerOut(id=a.id, project_id=a.project_id, item_id=a.item_id, status=AnswerStatus(a.status),
                        reason=a.reason, gold_scored=a.is_gold, gold_correct=a.gold_correct, amount=a.amount,
                        currency=a.currency, created_at=a.created_at) for a in rows]


__all__ = ["expire_leases", "get_lease", "my_answers", "next_task", "release", "submit", "task_out"]

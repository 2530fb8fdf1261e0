"""Review, quality and gold disputes.

**Review.** Members of the organisation, and the experts a project names in ``reviewers``, review
submitted answers (``review_queue``, ``review``): ``accept``, ``fix`` (with ``fixed_value``,
validated like an answer; the fix is what aggregation uses) or ``reject`` (a ``reason`` is
required). Nobody reviews their own answer (``Forbidden``); a reviewed answer is not reviewed
again (``Conflict``). Accepting or fixing pays the answer (``pay.earn``); rejecting pays nothing
and frees the item's slot for another expert. Gold answers are scored automatically, not reviewed.

**Quality.** ``quality`` is an expert's gold accuracy with its Wilson lower bound
(``work.quality.wilson_lower_bound``) and their accept / reject counts. ``check_quality`` is the
pause rule, run after every gold answer and re-score: once an expert has ``min_gold`` gold
answers in a project, a Wilson lower bound below ``pause_below`` pauses them with the reason
(shown to them); a later re-score that lifts it resumes an expert that project had paused.

**Disputes.** An expert disputes a gold item they were scored wrong on (``open_dispute``); the
owner resolves it (``resolve_dispute``): ``uphold`` replaces the gold answer (or makes the item
non-gold) and re-scores every answer on it, then re-checks each affected expert; ``reject``
keeps the gold. Functions work in a caller-owned session and never commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from teachloop.core.work import (
    SCORABLE,
    AnswerOut,
    AnswerStatus,
    DisputeOut,
    DisputeResolve,
    QualityOut,
    ReviewBody,
    ReviewDecision,
    TaskType,
)
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.work import WorkAnswer, WorkDispute, WorkExpert, WorkItem, WorkProject
from teachloop.work import pay
from teachloop.work.projects import get_project, settings_of, spec_of, template_of
from teachloop.work.quality import wilson_lower_bound
from teachloop.work.values import check_value, gold_matches
from teachloop.work.workforce import get_expert, pause, resume


def answer_out(a: WorkAnswer) -> AnswerOut:
    """An answer as a reviewer or the owner sees it."""
    return AnswerOut(id=a.id, project_id=a.project_id, item_id=a.item_id, expert_id=a.expert_id,
                     template_version=a.template_version, value=dict(a.value), diff=a.diff, is_gold=a.is_gold,
                     gold_correct=a.gold_correct, active_seconds=a.active_seconds, status=AnswerStatus(a.status),
                     fixed_value=a.fixed_value, reason=a.reason, amount=a.amount, currency=a.currency,
                     payable_at=a.payable_at, created_at=a.created_at)


def may_review(project: WorkProject, user_id: str | None, *, member: bool) -> bool:
    """Whether the caller may review the project's answers (a member, or one of its named reviewers)."""
    return member or (user_id is not None and user_id in settings_of(project).reviewers)


def _reviewer(project: WorkProject, user_id: str | None, member: bool) -> None:
    if not may_review(project, user_id, member=member):
        raise Forbidden(f"you are not a reviewer of project {project.name!r}", param="project")


def get_answer(session: Session, org_id: str, answer_id: str) -> WorkAnswer:
    """The organisation's answer; ``NotFound`` otherwise."""
    row = session.get(WorkAnswer, answer_id) if isinstance(answer_id, str) else None
    if row is None or row.org_id != org_id:
        raise NotFound(f"answer {answer_id!r} not found", param="answer_id")
    return row


def review_queue(session: Session, org_id: str, project_ref: str, user_id: str | None, *, member: bool,
                 limit: int = 100) -> list[WorkAnswer]:
    """Submitted answers of the project awaiting review (not the caller's own), oldest first."""
    project = get_project(session, org_id, project_ref)
    _reviewer(project, user_id, member)
    query = select(WorkAnswer).where(WorkAnswer.project_id == project.id,
                                     WorkAnswer.status == AnswerStatus.SUBMITTED.value)
    if user_id is not None:
        query = query.where(WorkAnswer.expert_id != user_id)
    return list(session.scalars(query.order_by(WorkAnswer.created_at, WorkAnswer.id).limit(limit)))


def list_answers(session: Session, org_id: str, project_ref: str, *, status: str | None = None,
                 limit: int = 500) -> list[WorkAnswer]:
    """The owner's view of a project's answers (optionally of one status), oldest first."""
    project = get_project(session, org_id, project_ref)
    query = select(WorkAnswer).where(WorkAnswer.project_id == project.id)
    if status is not None:
        try:
            query = query.where(WorkAnswer.status == AnswerStatus(status).value)
        except ValueError:
            raise InvalidInput(f"status must be one of {[s.value for s in AnswerStatus]}", param="status") from None
    return list(session.scalars(query.order_by(WorkAnswer.created_at, WorkAnswer.id).limit(limit)))


def review(session: Session, org_id: str, answer_id: str, user_id: str | None, body: ReviewBody, *,
           member: bool, actor: str | None = None, now: datetime | None = None) -> WorkAnswer:
    """Accept, fix or reject one submitted answer (see the module docstring)."""
    now = now or utc_now()
    answer = get_answer(session, org_id, answer_id)
    project = session.get(WorkProject, answer.project_id)
    item = session.get(WorkItem, answer.item_id)
    assert project is not None and item is not None
    _reviewer(project, user_id, member)
    if user_id is not None and answer.expert_id == user_id:
        raise Forbidden("you cannot review your own answer", param="answer_id")
    if answer.status != AnswerStatus.SUBMITTED.value:
        raise Conflict(f"answer {answer.id} was reviewed already ({answer.status})", param="answer_id")
    reason = body.reason.strip()
    if body.decision is ReviewDecision.REJECT and not reason:
        raise InvalidInput("a rejection needs a reason the expert will read", param="reason")
    fixed = None
    if body.decision is ReviewDecision.FIX:
        if body.fixed_value is None:
            raise InvalidInput("a fix needs fixed_value", param="fixed_value")
        spec = spec_of(template_of(session, project, answer.template_version))
        fixed, _ = check_value(TaskType(project.task_type), spec, item.payload, body.fixed_value, allow_same=True)
    elif body.fixed_value is not None:
        raise InvalidInput("fixed_value goes with the fix decision only", param="fixed_value")
    status = {ReviewDecision.ACCEPT: AnswerStatus.ACCEPTED, ReviewDecision.FIX: AnswerStatus.FIXED,
              ReviewDecision.REJECT: AnswerStatus.REJECTED}[body.decision]
    answer.status, answer.reason, answer.reviewed_by, answer.reviewed_at = status.value, body.reason, (
        actor or user_id or "system"), now
    if fixed is not None:
        answer.fixed_value = fixed
    session.flush()
    if status is not AnswerStatus.REJECTED:
        pay.earn(session, answer, settings_of(project), now=now)
    AuditLog(session).record(org_id, actor or user_id or "system", "work.answer.review", answer.id,
                             {"decision": body.decision.value})
    return answer


def _gold_counts(session: Session, project_id: str | None, org_id: str, user_id: str) -> tuple[int, int]:
    query = select(func.count(), func.sum(case((WorkAnswer.gold_correct.is_(True), 1), else_=0))).where(
        WorkAnswer.org_id == org_id, WorkAnswer.expert_id == user_id, WorkAnswer.is_gold.is_(True),
        WorkAnswer.gold_correct.is_not(None))
    if project_id is not None:
        query = query.where(WorkAnswer.project_id == project_id)
    trials, correct = session.execute(query).one()
    return int(trials or 0), int(correct or 0)


def check_quality(session: Session, project: WorkProject, expert: WorkExpert) -> bool:
    """Apply the pause rule for ``expert`` in ``project``; returns whether they are paused afterwards."""
    s = settings_of(project)
    trials, correct = _gold_counts(session, project.id, project.org_id, expert.user_id)
    low = wilson_lower_bound(correct, trials) if trials else None
    failing = low is not None and trials >= s.min_gold and low < s.pause_below
    if failing and expert.status != "paused":
        pause(session, expert, f"your accuracy on hidden gold items in project {project.name!r} is {correct}/{trials} "
                               f"(Wilson lower bound {low:.2f}, below the project's {s.pause_below:.2f}); "
                               "ask the owner to review your answers or dispute a gold item",
              project_id=project.id)
    elif not failing and expert.status == "paused" and expert.paused_project_id == project.id:
        resume(session, expert)
    return expert.status == "paused"


def quality(session: Session, org_id: str, user_id: str, project_ref: str | None = None) -> QualityOut:
    """The expert's quality in one project (or across the organisation's projects)."""
    expert = get_expert(session, org_id, user_id)
    project = get_project(session, org_id, project_ref) if project_ref else None
    pid = project.id if project else None
    trials, correct = _gold_counts(session, pid, org_id, user_id)
    counts = {k: 0 for k in ("accepted", "fixed", "rejected")}
    query = select(WorkAnswer.status, func.count()).where(WorkAnswer.org_id == org_id,
                                                          WorkAnswer.expert_id == user_id)
    if pid:
        query = query.where(WorkAnswer.project_id == pid)
    for status, n in session.execute(query.group_by(WorkAnswer.status)):
        counts[status] = int(n)
    return QualityOut(expert_id=user_id, project_id=pid, gold_answers=trials, gold_correct=correct,
                      accuracy=correct / trials if trials else None,
                      wilson_lower=wilson_lower_bound(correct, trials) if trials else None,
                      accepted=counts["accepted"] + counts["fixed"], rejected=counts["rejected"],
                      status="paused" if expert.status == "paused" else "active", pause_reason=expert.pause_reason)


def dispute_out(d: WorkDispute) -> DisputeOut:
    """A dispute as returned by the API."""
    return DisputeOut(id=d.id, project_id=d.project_id, item_id=d.item_id, answer_id=d.answer_id,
                      expert_id=d.expert_id, reason=d.reason, status=d.status,  # type: ignore[arg-type]
                      resolution=d.resolution, created_at=d.created_at)


def open_dispute(session: Session, org_id: str, user_id: str | None, answer_id: str, reason: str) -> WorkDispute:
    """The expert disputes the gold item their answer was scored wrong on."""
    answer = get_answer(session, org_id, answer_id)
    if answer.expert_id != user_id:
        raise Forbidden("you can dispute the scoring of your own answers only", param="answer_id")
    if not answer.is_gold or answer.gold_correct is not False:
        raise InvalidInput("only a gold item you were scored wrong on can be disputed", param="answer_id")
    if not reason.strip():
        raise InvalidInput("a dispute needs a reason", param="reason")
    if session.scalars(select(WorkDispute.id).where(WorkDispute.answer_id == answer.id,
                                                    WorkDispute.status == "open")).first():
        raise Conflict("this answer has an open dispute already", param="answer_id")
    row = WorkDispute(org_id=org_id, project_id=answer.project_id, item_id=answer.item_id, answer_id=answer.id,
                      expert_id=answer.expert_id, reason=reason, status="open")
    session.add(row)
    session.flush()
    AuditLog(session).record(org_id, answer.expert_id, "work.dispute.open", row.id, {"answer": answer.id})
    return row


def list_disputes(session: Session, org_id: str, *, project_ref: str | None = None,
                  status: str | None = None) -> list[WorkDispute]:
    """The organisation's disputes (of one project, of one status), newest first."""
    query = select(WorkDispute).where(WorkDispute.org_id == org_id)
    if project_ref:
        query = query.where(WorkDispute.project_id == get_project(session, org_id, project_ref).id)
    if status is not None:
        if status not in ("open", "upheld", "rejected"):
            raise InvalidInput("status must be open, upheld or rejected", param="status")
        query = query.where(WorkDispute.status == status)
    return list(session.scalars(query.order_by(WorkDispute.created_at.desc(), WorkDispute.id.desc())))


def resolve_dispute(session: Session, org_id: str, dispute_id: str, body: DisputeResolve, *,
                    actor: str = "system", now: datetime | None = None) -> WorkDispute:
    """The owner resolves a dispute; upholding it re-scores every answer on the item (module docstring)."""
    now = now or utc_now()
    row = session.get(WorkDispute, dispute_id) if isinstance(dispute_id, str) else None
    if row is None or row.org_id != org_id:
        raise NotFound(f"dispute {dispute_id!r} not found", param="dispute_id")
    if row.status != "open":
        raise Conflict(f"dispute {row.id} is {row.status} already", param="dispute_id")
    project = session.get(WorkProject, row.project_id)
    item = session.get(WorkItem, row.item_id)
    assert project is not None and item is not None
    task_type = TaskType(project.task_type)
    if body.decision == "uphold":
        if body.gold_answer is not None:
            spec = spec_of(template_of(session, project))
            gold, _ = check_value(task_type, spec, item.payload, body.gold_answer)
            item.gold_answer = gold
        else:
            item.is_gold = False
        experts = set()
        for a in session.scalars(select(WorkAnswer).where(WorkAnswer.item_id == item.id)):
            if item.is_gold and item.gold_answer is not None and task_type in SCORABLE:
                a.gold_correct = gold_matches(task_type, item.gold_answer, a.value)
            else:
                a.is_gold, a.gold_correct = False, None
            experts.add(a.expert_id)
        session.flush()
        for user in sorted(experts):
            check_quality(session, project, get_expert(session, org_id, user))
    row.status = "upheld" if body.decision == "uphold" else "rejected"
    row.resolution, row.resolved_by, row.resolved_at = body.resolution, actor, now
    session.flush()
    AuditLog(session).record(org_id, actor, "work.dispute.resolve", row.id, {"decision": body.decision})
    return row


__all__ = ["answer_out", "check_quality", "dispute_out", "get_answer", "list_answers", "list_disputes",
           "may_review", "open_dispute", "quality", "resolve_dispute", "review", "review_queue"]

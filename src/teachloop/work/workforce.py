"""Experts and qualification exams.

An expert is a user of the organisation (a ``Membership``, typically with the ``expert`` role,
made by an invitation) with a ``WorkExpert`` profile: a handle, skills, and a status --
``active`` or ``paused`` with the reason shown to them (``pause`` / ``resume``; quality control
pauses automatically, see ``work.review``). ``add_expert`` refuses a user who is not a member.

A skill's exam (``put_exam``) is a list of multiple-choice questions with gold answers;
``exam_for`` is what an expert sees (no answers). ``attempt`` scores an attempt against the gold
answers (share correct; ``passed`` at ``pass_score``); after a failed attempt a retake is refused
(``Conflict``, naming the time) until ``cooldown_s`` has passed; a passed exam cannot be retaken.
``qualified`` is the set of skills an expert passed; a project with a ``skill`` only leases its
tasks to experts qualified in it. Functions work in a caller-owned session and never commit.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.core.work import (
    AttemptOut,
    ExamCreate,
    ExamOut,
    ExamSummary,
    ExpertCreate,
    ExpertOut,
    PublicQuestion,
)
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.tenancy import Membership, User
from teachloop.store.schema.work import WorkExam, WorkExamAttempt, WorkExpert

_SKILL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_skill(skill: str, param: str = "skill") -> str:
    """``skill`` if it is 1-100 letters, digits, ``_``, ``.`` or ``-``; ``InvalidInput`` otherwise."""
    if not isinstance(skill, str) or not _SKILL.match(skill):
        raise InvalidInput(f"invalid skill {skill!r}: use 1-100 letters, digits, '_', '.' or '-'", param=param)
    return skill


def add_expert(session: Session, org_id: str, body: ExpertCreate, *, actor: str = "system") -> WorkExpert:
    """The user's expert profile in the organisation (made now, or its skills and handle updated)."""
    member = session.scalars(select(Membership).where(Membership.org_id == org_id,
                                                      Membership.user_id == body.user_id)).first()
    if member is None:
        raise NotFound(f"user {body.user_id!r} is not a member of this organisation; invite them first",
                       param="user_id")
    skills = sorted({check_skill(s, "skills") for s in body.skills})
    row = session.scalars(select(WorkExpert).where(WorkExpert.org_id == org_id,
                                                   WorkExpert.user_id == body.user_id)).first()
    if row is None:
        user = session.get(User, body.user_id)
        handle = body.handle or (user.name if user and user.name else f"expert-{body.user_id[-6:]}")
        row = WorkExpert(org_id=org_id, user_id=body.user_id, handle=handle[:100], skills=skills, status="active")
        session.add(row)
    else:
        row.skills = skills
        if body.handle:
            row.handle = body.handle
    session.flush()
    AuditLog(session).record(org_id, actor, "work.expert.set", row.id, {"user_id": body.user_id, "skills": skills})
    return row


def get_expert(session: Session, org_id: str, user_id: str | None, *, param: str = "expert") -> WorkExpert:
    """The user's expert profile in the organisation; ``NotFound`` when they have none."""
    row = None
    if user_id:
        row = session.scalars(select(WorkExpert).where(WorkExpert.org_id == org_id,
                                                       WorkExpert.user_id == user_id)).first()
    if row is None:
        raise NotFound(f"no expert profile for user {user_id!r} in this organisation", param=param)
    return row


def list_experts(session: Session, org_id: str) -> list[WorkExpert]:
    """The organisation's experts by handle."""
    return list(session.scalars(select(WorkExpert).where(WorkExpert.org_id == org_id)
                                .order_by(WorkExpert.handle, WorkExpert.id)))


def qualified(session: Session, org_id: str, user_id: str) -> set[str]:
    """Skills whose exam the expert passed."""
    rows = session.execute(select(WorkExam.skill).join(WorkExamAttempt, WorkExamAttempt.exam_id == WorkExam.id)
                           .where(WorkExamAttempt.org_id == org_id, WorkExamAttempt.expert_id == user_id,
                                  WorkExamAttempt.passed.is_(True)))
    return {s for (s,) in rows}


def expert_out(session: Session, row: WorkExpert) -> ExpertOut:
    """An expert's profile with the skills they qualified in."""
    return ExpertOut(id=row.id, user_id=row.user_id, handle=row.handle, skills=list(row.skills or []),
                     status="paused" if row.status == "paused" else "active", pause_reason=row.pause_reason,
                     qualified=sorted(qualified(session, row.org_id, row.user_id)))


def pause(session: Session, row: WorkExpert, reason: str, *, project_id: str | None = None,
          actor: str = "system") -> None:
    """Pause the expert with ``reason`` (shown to them); they get no work until resumed."""
    row.status, row.pause_reason, row.paused_project_id = "paused", reason[:1000], project_id
    session.flush()
    AuditLog(session).record(row.org_id, actor, "work.expert.pause", row.id, {"reason": reason[:1000]})


def resume(session: Session, row: WorkExpert, *, actor: str = "system") -> None:
    """Make a paused expert active again."""
    row.status, row.pause_reason, row.paused_project_id = "active", None, None
    session.flush()
    AuditLog(session).record(row.org_id, actor, "work.expert.resume", row.id, {})


def put_exam(session: Session, org_id: str, skill: str, body: ExamCreate, *, actor: str = "system") -> WorkExam:
    """Set the exam of ``skill`` (replacing its questions; past attempts keep their scores)."""
    check_skill(skill)
    ids = [q.id for q in body.questions]
    if len(set(ids)) != len(ids):
        raise InvalidInput("question ids must be unique", param="questions")
    for q in body.questions:
        if q.answer not in q.options:
            raise InvalidInput(f"question {q.id}: the answer must be one of its options", param="questions")
    row = session.scalars(select(WorkExam).where(WorkExam.org_id == org_id, WorkExam.skill == skill)).first()
    questions = [q.model_dump(mode="json") for q in body.questions]
    if row is None:
        row = WorkExam(org_id=org_id, skill=skill, questions=questions, pass_score=body.pass_score,
                       cooldown_s=body.cooldown_s, created_by=actor)
        session.add(row)
    else:
        row.questions, row.pass_score, row.cooldown_s = questions, body.pass_score, body.cooldown_s
    session.flush()
    AuditLog(session).record(org_id, actor, "work.exam.set", row.id, {"skill": skill, "questions": len(questions)})
    return row


def get_exam(session: Session, org_id: str, skill: str) -> WorkExam:
    """The exam of ``skill``; ``NotFound`` otherwise."""
    row = session.scalars(select(WorkExam).where(WorkExam.org_id == org_id, WorkExam.skill == skill)).first()
    if row is None:
        raise NotFound(f"no exam for skill {skill!r}", param="skill")
    return row


def list_exams(session: Session, org_id: str) -> list[ExamSummary]:
    """The organisation's exams by skill (no questions: what the owner's list and the join form show)."""
    rows = session.scalars(select(WorkExam).where(WorkExam.org_id == org_id).order_by(WorkExam.skill))
    return [ExamSummary(id=r.id, skill=r.skill, questions=len(r.questions or []), pass_score=r.pass_score,
                        cooldown_s=r.cooldown_s) for r in rows]


def my_attempts(session: Session, org_id: str, user_id: str | None) -> list[AttemptOut]:
    """The expert's exam attempts, newest first (each with its retake time when failed)."""
    get_expert(session, org_id, user_id)
    rows = session.execute(select(WorkExamAttempt, WorkExam).join(WorkExam, WorkExam.id == WorkExamAttempt.exam_id)
                           .where(WorkExamAttempt.org_id == org_id, WorkExamAttempt.expert_id == user_id)
                           .order_by(WorkExamAttempt.created_at.desc(), WorkExamAttempt.id.desc()))
    return [attempt_out(a, exam) for a, exam in rows]


def exam_for(session: Session, org_id: str, skill: str) -> ExamOut:
    """The exam as an expert sees it: questions and options, never the answers."""
    row = get_exam(session, org_id, skill)
    return ExamOut(id=row.id, skill=row.skill, pass_score=row.pass_score, cooldown_s=row.cooldown_s,
                   questions=[PublicQuestion(id=q["id"], prompt=q["prompt"], options=list(q["options"]))
                              for q in row.questions])


def _retake_after(row: WorkExamAttempt, exam: WorkExam) -> datetime | None:
    return None if row.passed else row.created_at + timedelta(seconds=exam.cooldown_s)


def attempt_out(row: WorkExamAttempt, exam: WorkExam) -> AttemptOut:
    """A scored attempt as returned to the expert."""
    return AttemptOut(id=row.id, skill=exam.skill, score=row.score, passed=row.passed,
                      retake_after=_retake_after(row, exam), created_at=row.created_at)


def attempt(session: Session, org_id: str, user_id: str, skill: str, answers: dict[str, str], *,
            now: datetime | None = None) -> WorkExamAttempt:
    """Score an attempt at the exam of ``skill`` against its gold answers (see the module docstring)."""
    now = now or utc_now()
    get_expert(session, org_id, user_id)
    exam = get_exam(session, org_id, skill)
    known = {q["id"]: q for q in exam.questions}
    unknown = sorted(set(answers) - set(known))
    if unknown:
        raise InvalidInput(f"answers name unknown questions {unknown}", param="answers")
    for qid, choice in answers.items():
        if choice not in known[qid]["options"]:
            raise InvalidInput(f"answer to {qid} must be one of its options", param=f"answers.{qid}")
    last = session.scalars(select(WorkExamAttempt).where(
        WorkExamAttempt.exam_id == exam.id, WorkExamAttempt.expert_id == user_id)
        .order_by(WorkExamAttempt.created_at.desc(), WorkExamAttempt.id.desc())).first()
    if last is not None:
        if last.passed:
            raise Conflict(f"you passed the {skill} exam already", param="skill")
        after = _retake_after(last, exam)
        if after is not None and now < after:
            raise Conflict(f"you may retake the {skill} exam after {after.isoformat(timespec='seconds')}",
                           param="skill")
    correct = sum(1 for qid, q in known.items() if answers.get(qid) == q["answer"])
    score = correct / len(known)
    row = WorkExamAttempt(org_id=org_id, exam_id=exam.id, expert_id=user_id, answers=dict(answers), score=score,
                          passed=score >= exam.pass_score, created_at=now)
    session.add(row)
    session.flush()
    AuditLog(session).record(org_id, user_id, "work.exam.attempt", row.id, {"skill": skill, "score": score})
    return row


__all__ = ["add_expert", "attempt", "attempt_out", "check_skill", "exam_for", "expert_out", "get_exam",
           "get_expert", "list_exams", "list_experts", "my_attempts", "pause", "put_exam", "qualified", "resume"]

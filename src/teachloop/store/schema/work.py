"""Expert-workforce tables: projects, templates, items, assignments, answers, experts, exams, disputes, pay periods.

- ``WorkProject``: a labeling project of one organisation (``name`` unique in it) with one
  ``task_type`` and its ``settings`` (quorum, gold share, lease, pay, quality thresholds;
  ``core.work.ProjectSettings``); ``source`` says what its items came from and which data
  request it ``fulfils`` (a reference only: the app layer joins it to the marketplace).
- ``WorkTemplate``: version ``version`` of the project's task template (instructions, rubric
  criteria with scales, options). A new version never changes an older one; answers pin theirs.
- ``WorkItem``: one unit of work: ``payload`` (prompt messages, the model reply or the
  candidates, an optional model ``suggestion``); ``is_gold`` items carry ``gold_answer``, which
  is never shown to an expert. ``source_trace_id`` is set for items made from a trace (unique per
  project, so the loop never sends one trace twice); ``origin`` is ``owner`` or ``loop``.
- ``WorkAssignment``: a lease of one item to one expert (``expert_id`` is a user id) until
  ``expires_at``; ``status`` is ``leased``, ``submitted``, ``released`` or ``expired``.
- ``WorkAnswer``: an immutable submission (its ``value`` never changes; review adds the
  decision, ``fixed_value`` and ``reason``). ``gold_correct`` is its score on a gold item;
  ``earn_entry_id`` / ``release_entry_id`` are the ledger entries of its pay.
- ``WorkExpert``: an expert's profile in the organisation: skills, ``status`` (active / paused)
  and the ``pause_reason`` shown to them.
- ``WorkExam`` / ``WorkExamAttempt``: a qualification exam per skill (questions with gold
  answers) and each scored attempt.
- ``WorkDispute``: an expert's dispute of a gold item, resolved by the owner.
- ``WorkPayPeriod``: one closed pay period of a project and the top-ups it posted.

This module knows nothing of leases, scoring or money rules (``teachloop.work`` does).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, Timestamps, id_column, ref_column, utc_now


class WorkProject(OrgOwned, Timestamps, Base):
    """A labeling project."""

    __tablename__ = "work_projects"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[str] = id_column("wprj")
    name: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(200))
    task_type: Mapped[str] = mapped_column(String(20))
    template_version: Mapped[int] = mapped_column(Integer, default=1)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    fulfils: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="open")
    created_by: Mapped[str] = mapped_column(String(200))


class WorkTemplate(OrgOwned, Base):
    """One version of a project's task template."""

    __tablename__ = "work_templates"
    __table_args__ = (UniqueConstraint("project_id", "version"),)

    id: Mapped[str] = id_column("wtpl")
    project_id: Mapped[str] = ref_column("work_projects.id")
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class WorkItem(OrgOwned, Base):
    """One item to label (gold items carry their hidden answer)."""

    __tablename__ = "work_items"
    __table_args__ = (UniqueConstraint("project_id", "source_trace_id"),)

    id: Mapped[str] = id_column("witm")
    project_id: Mapped[str] = ref_column("work_projects.id")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_answer: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    source_trace_id: Mapped[str | None] = mapped_column(String(40))
    origin: Mapped[str] = mapped_column(String(20), default="owner")
    created_at: Mapped[datetime] = mapped_column(default=utc_now, index=True)


class WorkAssignment(OrgOwned, Base):
    """A lease of one item to one expert."""

    __tablename__ = "work_assignments"
    __table_args__ = (Index("ix_work_assignments_item_status", "item_id", "status"),)

    id: Mapped[str] = id_column("wasg")
    project_id: Mapped[str] = ref_column("work_projects.id")
    item_id: Mapped[str] = ref_column("work_items.id")
    expert_id: Mapped[str] = ref_column("users.id")
    status: Mapped[str] = mapped_column(String(20), default="leased")
    leased_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class WorkAnswer(OrgOwned, Base):
    """An expert's submission and its review."""

    __tablename__ = "work_answers"

    id: Mapped[str] = id_column("wans")
    project_id: Mapped[str] = ref_column("work_projects.id")
    item_id: Mapped[str] = ref_column("work_items.id")
    assignment_id: Mapped[str] = mapped_column(String(40), unique=True)
    expert_id: Mapped[str] = ref_column("users.id")
    template_version: Mapped[int] = mapped_column(Integer)
    value: Mapped[dict[str, Any]] = mapped_column(JSONType)
    diff: Mapped[str | None] = mapped_column(Text)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_correct: Mapped[bool | None] = mapped_column(Boolean)
    active_seconds: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), default="submitted")
    fixed_value: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    reason: Mapped[str | None] = mapped_column(String(1000))
    reviewed_by: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None]
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    earn_entry_id: Mapped[str | None] = mapped_column(String(40))
    payable_at: Mapped[datetime | None]
    release_entry_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class WorkExpert(OrgOwned, Timestamps, Base):
    """An expert's profile in one organisation."""

    __tablename__ = "work_experts"
    __table_args__ = (UniqueConstraint("org_id", "user_id"),)

    id: Mapped[str] = id_column("wexp")
    user_id: Mapped[str] = ref_column("users.id")
    handle: Mapped[str] = mapped_column(String(100))
    skills: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(String(20), default="active")
    pause_reason: Mapped[str | None] = mapped_column(String(1000))
    paused_project_id: Mapped[str | None] = mapped_column(String(40))


class WorkExam(OrgOwned, Timestamps, Base):
    """The qualification exam of one skill."""

    __tablename__ = "work_exams"
    __table_args__ = (UniqueConstraint("org_id", "skill"),)

    id: Mapped[str] = id_column("wexm")
    skill: Mapped[str] = mapped_column(String(100))
    questions: Mapped[list[Any]] = mapped_column(JSONType)
    pass_score: Mapped[float] = mapped_column(Float)
    cooldown_s: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(200))


class WorkExamAttempt(OrgOwned, Base):
    """One scored attempt at an exam."""

    __tablename__ = "work_exam_attempts"

    id: Mapped[str] = id_column("wexa")
    exam_id: Mapped[str] = ref_column("work_exams.id")
    expert_id: Mapped[str] = ref_column("users.id")
    answers: Mapped[dict[str, Any]] = mapped_column(JSONType)
    score: Mapped[float] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class WorkDispute(OrgOwned, Base):
    """An expert's dispute of a gold item."""

    __tablename__ = "work_disputes"

    id: Mapped[str] = id_column("wdsp")
    project_id: Mapped[str] = ref_column("work_projects.id")
    item_id: Mapped[str] = ref_column("work_items.id")
    answer_id: Mapped[str] = ref_column("work_answers.id")
    expert_id: Mapped[str] = ref_column("users.id")
    reason: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(20), default="open")
    resolution: Mapped[str | None] = mapped_column(String(2000))
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    resolved_at: Mapped[datetime | None]


class WorkPayPeriod(OrgOwned, Base):
    """A closed pay period of a project and its minimum-rate top-ups."""

    __tablename__ = "work_pay_periods"
    __table_args__ = (UniqueConstraint("project_id", "period"),)

    id: Mapped[str] = id_column("wpay")
    project_id: Mapped[str] = ref_column("work_projects.id")
    period: Mapped[str] = mapped_column(String(40))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    topups: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    closed_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


__all__ = ["WorkAnswer", "WorkAssignment", "WorkDispute", "WorkExam", "WorkExamAttempt", "WorkExpert", "WorkItem",
           "WorkPayPeriod", "WorkProject", "WorkTemplate"]

"""Model suggestions on a project's items: which items still need one, and storing the model's replies.

A suggestion is an answer value shown to the expert beside the task when the project's
``show_suggestions`` is on (``tasks.task_out`` hides it otherwise). Filled from a deployment, it is
the model's reply to the item's prompt, so only free-text task types take one: ``demonstration``
and ``correction`` (``{"reply": text}``); any other type is ``InvalidInput``. The app layer asks the
serving runtime (this package never imports ``serve/``): ``pending`` lists the items without a
suggestion, the app calls the deployment for each, and ``store`` validates every reply with
``values.check_value`` (a reply it refuses -- empty, too long -- is counted and left out).
Items that already hold a suggestion, answers, leases and gold items are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput
from teachloop.core.work import TaskType
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.work import WorkItem, WorkProject
from teachloop.work.projects import get_project, spec_of, template_of
from teachloop.work.values import check_value

#: Task types whose suggestion is a model's reply.
SUGGESTIBLE = (TaskType.DEMONSTRATION, TaskType.CORRECTION)


@dataclass(frozen=True)
class Pending:
    """An item without a suggestion: its id and the chat messages to send the model."""

    item_id: str
    messages: list[dict[str, str]]


def _project(session: Session, org_id: str, ref: str) -> WorkProject:
    project = get_project(session, org_id, ref)
    if TaskType(project.task_type) not in SUGGESTIBLE:
        raise InvalidInput(f"project {project.name!r} is a {project.task_type} project; a deployment's reply can be "
                           "the suggestion of demonstration and correction items only", param="project")
    return project


def _unsuggested(project: WorkProject) -> Any:
    return select(WorkItem).where(WorkItem.project_id == project.id, WorkItem.is_gold.is_(False))


def pending(session: Session, org_id: str, project_ref: str, *, limit: int = 50) -> list[Pending]:
    """Up to ``limit`` of the project's items without a suggestion, oldest first."""
    if not 1 <= limit <= 500:
        raise InvalidInput(f"limit must be 1-500, got {limit}", param="limit")
    project = _project(session, org_id, project_ref)
    out = []
    for item in session.scalars(_unsuggested(project).order_by(WorkItem.created_at, WorkItem.id)):
        if item.payload.get("suggestion") is None:
            prompt = [{"role": str(m.get("role")), "content": str(m.get("content") or "")}
                      for m in item.payload.get("prompt") or []]
            out.append(Pending(item.id, prompt))
            if len(out) >= limit:
                break
    return out


def remaining(session: Session, org_id: str, project_ref: str) -> int:
    """How many of the project's items still have no suggestion."""
    project = get_project(session, org_id, project_ref)
    return sum(1 for i in session.scalars(_unsuggested(project)) if i.payload.get("suggestion") is None)


def store(session: Session, org_id: str, project_ref: str, replies: dict[str, str], *, model: str,
          actor: str = "system") -> tuple[int, int]:
    """Store each item's reply as its suggestion; (stored, refused).

    A reply the task type refuses (an empty or too long text) is left out and its item keeps no
    suggestion; an item filled meanwhile, or not of this project, is left alone.
    """
    project = _project(session, org_id, project_ref)
    spec = spec_of(template_of(session, project))
    task_type = TaskType(project.task_type)
    rows = {i.id: i for i in session.scalars(_unsuggested(project).where(WorkItem.id.in_(list(replies))))}
    stored = refused = 0
    for item_id, text in replies.items():
        row = rows.get(item_id)
        if row is None or row.payload.get("suggestion") is not None:
            continue
        try:
            value, _ = check_value(task_type, spec, dict(row.payload), {"reply": text}, allow_same=True)
        except InvalidInput:
            refused += 1
            continue
        context = {**(row.payload.get("context") or {}), "suggested_by": model}
        row.payload = {**row.payload, "suggestion": value, "context": context}
        stored += 1
    session.flush()
    AuditLog(session).record(org_id, actor, "work.items.suggest", project.id,
                             {"items": stored, "refused": refused, "model": model})
    return stored, refused


__all__ = ["SUGGESTIBLE", "Pending", "pending", "remaining", "store"]

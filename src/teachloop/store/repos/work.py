"""The workforce's seam in the store: find a project, add trace items to it, find its result datasets.

``WorkQueue(session)`` works inside a caller-owned session and never commits. It is what both
``teachloop.work`` (the workforce) and ``teachloop.loop`` (the ``experts`` source) use, so the
two packages meet here and never import each other:

- ``project(org, ref)``: a project by id or name; another organisation's is ``NotFound`` like a
  missing one.
- ``add_trace_items(org, project, traces, origin=)``: one item per trace (its prompt and first
  reply); a trace already in the project is skipped, so sending it twice adds nothing.
- ``added_since(org, project, since, origin=)``: how many items of that origin arrived since
  ``since`` (the loop's daily budget).
- ``dataset_name(project)`` / ``result_datasets(org, project)``: where the project's aggregated
  results are recorded (``catalog.datasets.record_snapshot``, origin ``labels``), newest first.

This module knows nothing of leases, quality or pay.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from teachloop.core.errors import NotFound
from teachloop.core.ids import is_id
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.datasets import Dataset
from teachloop.store.schema.traces import Trace
from teachloop.store.schema.work import WorkItem, WorkProject


def _message(raw: dict[str, Any]) -> dict[str, Any]:
    content = raw.get("content")
    if isinstance(content, list):  # content parts: keep the text
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return {"role": str(raw.get("role", "user")), "content": "" if content is None else str(content)}


def trace_payload(trace: Trace) -> dict[str, Any]:
    """An item payload from a trace: its prompt messages and the text of its first reply."""
    reply = None
    if trace.choices:
        reply = _message(trace.choices[0].get("message") or {})["content"]
    return {"prompt": [_message(m) for m in trace.messages or []], "reply": reply, "candidates": [],
            "suggestion": None, "context": {"model": trace.model}}


class WorkQueue:
    """Projects and their items as other packages see them, within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def project(self, org_id: str, ref: str, *, param: str = "project") -> WorkProject:
        """The organisation's project ``ref`` (a ``wprj_...`` id or a name); ``NotFound`` otherwise."""
        row = None
        if isinstance(ref, str) and ref:
            if is_id(ref, "wprj"):
                row = self.session.get(WorkProject, ref)
            else:
                row = self.session.scalars(
                    select(WorkProject).where(WorkProject.org_id == org_id, WorkProject.name == ref)).first()
        if row is None or row.org_id != org_id:
            raise NotFound(f"project {ref!r} not found", param=param)
        return row

    def add_trace_items(self, org_id: str, project: WorkProject, traces: Iterable[Trace], *,
                        origin: str = "owner", now: datetime | None = None) -> list[WorkItem]:
        """One item per trace of the organisation not yet in the project (added at ``now``); the items added."""
        traces = [t for t in traces if t.org_id == org_id]
        if not traces:
            return []
        known = set(self.session.scalars(select(WorkItem.source_trace_id).where(
            WorkItem.project_id == project.id, WorkItem.source_trace_id.in_([t.id for t in traces]))))
        added = []
        for t in traces:
            if t.id in known:
                continue
            known.add(t.id)
            item = WorkItem(org_id=org_id, project_id=project.id, payload=trace_payload(t), is_gold=False,
                            source_trace_id=t.id, origin=origin, created_at=now or utc_now())
            self.session.add(item)
            added.append(item)
        self.session.flush()
        return added

    def traces_in(self, project: WorkProject) -> set[str]:
        """Ids of the traces that already have an item in the project."""
        return {t for t in self.session.scalars(select(WorkItem.source_trace_id).where(
            WorkItem.project_id == project.id, WorkItem.source_trace_id.is_not(None))) if t}

    def added_since(self, org_id: str, project: WorkProject, since: datetime, *, origin: str) -> int:
        """Items of ``origin`` added to the project at or after ``since``."""
        return int(self.session.scalar(select(func.count()).select_from(WorkItem).where(
            WorkItem.org_id == org_id, WorkItem.project_id == project.id, WorkItem.origin == origin,
            WorkItem.created_at >= since)) or 0)

    @staticmethod
    def dataset_name(project: WorkProject) -> str:
        """The name of the dataset the project's aggregated results are recorded under."""
        return str((project.settings or {}).get("dataset") or f"{project.name}-labels")

    def result_datasets(self, org_id: str, project: WorkProject) -> list[Dataset]:
        """The versions of the project's result dataset, newest first."""
        return list(self.session.scalars(select(Dataset).where(
            Dataset.org_id == org_id, Dataset.name == self.dataset_name(project), Dataset.origin == "labels")
            .order_by(Dataset.version.desc())))


__all__ = ["WorkQueue", "trace_payload"]

"""Projects, their versioned templates and their items.

``create_project(session, org, body, actor=)`` makes a project with template version 1 and its
first items from ``body.source``:

- ``traces``: the organisation's traces matching ``filter`` (the trace list's filters: model,
  user, since, until, label, min_score, max_score, has_feedback, has_correction, metadata,
  limit), one item each (prompt and first reply);
- ``dataset``: the rows of a dataset version (``ref``): chat rows give the prompt and the last
  assistant reply, pairs rows two candidates (``chosen`` / ``rejected``, in a stable shuffled
  order), prompts rows the prompt;
- ``environment``: ``tasks`` tasks of a built-in or installed environment (``ref``);
- ``request``: a data request's ``spec`` (title, description, format, size, quality_bar): its text
  becomes the template's instructions and ``fulfils`` records the request's id (the app layer
  joins it with the marketplace; this package never imports it);
- ``manual``: no items; add them with ``add_items``.

``new_template(session, org, project, spec)`` adds the next template version (older versions and
the answers pinned to them never change). ``add_items`` validates every item against the task
type (``values.check_payload``) before writing any. Another organisation's project is
``NotFound`` like a missing one. Functions work in a caller-owned session and never commit.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.work import (
    ItemIn,
    ItemOut,
    ProjectCreate,
    ProjectOut,
    ProjectSettings,
    TaskType,
    TemplateOut,
    TemplateSpec,
)
from teachloop.store.repos.audit import AuditLog
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.deployments import check_name
from teachloop.store.repos.traces import TraceFilter, Traces
from teachloop.store.repos.work import WorkQueue
from teachloop.store.schema.work import WorkAnswer, WorkItem, WorkProject, WorkTemplate
from teachloop.work.values import check_payload

#: Answer states that count towards an item's quorum.
COUNTED = ("submitted", "accepted", "fixed")
_FILTER_KEYS = {"model", "user", "since", "until", "label", "min_score", "max_score", "has_feedback",
                "has_correction", "metadata", "limit"}


def get_project(session: Session, org_id: str, ref: str, *, param: str = "project") -> WorkProject:
    """The organisation's project (id or name); ``NotFound`` otherwise."""
    return WorkQueue(session).project(org_id, ref, param=param)


def settings_of(project: WorkProject) -> ProjectSettings:
    """The project's settings as a model."""
    return ProjectSettings.model_validate(project.settings or {})


def template_of(session: Session, project: WorkProject, version: int | None = None) -> WorkTemplate:
    """Version ``version`` (default: the current one) of the project's template."""
    row = session.scalars(select(WorkTemplate).where(
        WorkTemplate.project_id == project.id,
        WorkTemplate.version == (version or project.template_version))).first()
    if row is None:
        raise NotFound(f"template version {version} of project {project.name!r} not found", param="version")
    return row


def spec_of(row: WorkTemplate) -> TemplateSpec:
    """A template row's spec as a model."""
    return TemplateSpec.model_validate(row.spec)


def _check_template(task_type: TaskType, spec: TemplateSpec) -> None:
    ids = [c.id for c in spec.criteria]
    if len(set(ids)) != len(ids):
        raise InvalidInput("criterion ids must be unique", param="template.criteria")
    for c in spec.criteria:
        if c.low >= c.high:
            raise InvalidInput(f"criterion {c.id}: low ({c.low}) must be below high ({c.high})",
                               param="template.criteria")
    if task_type is TaskType.RUBRIC and not spec.criteria:
        raise InvalidInput("a rubric project needs at least one criterion", param="template.criteria")


def create_project(session: Session, org_id: str, body: ProjectCreate, *, actor: str = "system") -> WorkProject:
    """A new project with template version 1 and the items of ``body.source`` (see the module docstring)."""
    check_name(body.name)
    if session.scalars(select(WorkProject.id).where(WorkProject.org_id == org_id,
                                                    WorkProject.name == body.name)).first():
        raise InvalidInput(f"project {body.name!r} exists; choose another name", param="name")
    _check_template(body.task_type, body.template)
    src = body.source
    template = body.template
    if src.kind == "request":
        template = _request_template(body.template, src.spec)
    project = WorkProject(org_id=org_id, name=body.name, title=body.title or body.name,
                          task_type=body.task_type.value, template_version=1,
                          settings=body.settings.model_dump(mode="json"),
                          source=src.model_dump(mode="json", exclude={"spec"} if not src.spec else set()),
                          fulfils=src.fulfils, status="open", created_by=actor)
    session.add(project)
    session.flush()
    session.add(WorkTemplate(org_id=org_id, project_id=project.id, version=1,
                             spec=template.model_dump(mode="json"), created_by=actor))
    session.flush()
    if src.kind == "traces":
        WorkQueue(session).add_trace_items(org_id, project, Traces(session).list(org_id, _trace_filter(src.filter)))
    elif src.kind == "dataset":
        add_items(session, org_id, project.id, _dataset_items(session, org_id, src.ref, body.task_type), actor=actor)
    elif src.kind == "environment":
        add_items(session, org_id, project.id, _env_items(src.ref, src.tasks), actor=actor)
    AuditLog(session).record(org_id, actor, "work.project.create", project.id,
                             {"name": project.name, "task_type": project.task_type, "source": src.kind})
    return project


def _request_template(spec: TemplateSpec, request: dict[str, Any]) -> TemplateSpec:
    lines = [str(request.get(k)) for k in ("title", "description") if request.get(k)]
    for k in ("format", "size", "quality_bar"):
        if request.get(k) is not None:
            lines.append(f"{k}: {request[k]}")
    if not lines:
        raise InvalidInput("a request source needs the request's spec (title, description, ...)", param="source.spec")
    text = "\n\n".join(lines + ([spec.instructions] if spec.instructions else []))
    return spec.model_copy(update={"instructions": text[:20_000]})


def _trace_filter(raw: dict[str, Any]) -> TraceFilter:
    extra = sorted(set(raw) - _FILTER_KEYS)
    if extra:
        raise InvalidInput(f"source.filter: unknown filters {extra}; use {sorted(_FILTER_KEYS)}",
                           param="source.filter")
    values = dict(raw)
    for key in ("since", "until"):
        if isinstance(values.get(key), str):
            try:
                values[key] = datetime.fromisoformat(values[key])
            except ValueError:
                raise InvalidInput(f"source.filter.{key} must be an ISO 8601 time", param=f"source.filter.{key}") from None
    try:
        filt = TraceFilter(**values)
        filt.validate()
    except (TypeError, InvalidInput) as err:
        raise InvalidInput(f"source.filter: {err}", param="source.filter") from None
    return filt


def _dataset_items(session: Session, org_id: str, ref: str | None, task_type: TaskType) -> list[ItemIn]:
    if not ref:
        raise InvalidInput("a dataset source needs ref (NAME[@N])", param="source.ref")
    repo = Datasets(session)
    try:
        ds = repo.resolve(org_id, ref)
    except NotFound:
        raise NotFound(f"dataset {ref!r} not found", param="source.ref") from None
    items = []
    for row in repo.rows(org_id, ds.id):
        c = dict(row.content)
        if "chosen" in c and "rejected" in c:
            pair = [("chosen", c["chosen"]), ("rejected", c["rejected"])]
            if hashlib.sha256(row.id.encode()).digest()[0] % 2:  # no position bias: a stable shuffle
                pair.reverse()
            cands = [{"id": k, "text": str((v or {}).get("content", ""))} for k, v in pair]
            items.append(ItemIn.model_validate({"prompt": list(c.get("prompt") or []), "candidates": cands,
                                                "source_trace_id": row.source_trace_id}))
            continue
        msgs = list(c.get("messages") or [])
        reply = None
        if msgs and msgs[-1].get("role") == "assistant":
            reply = str(msgs[-1].get("content", ""))
            msgs = msgs[:-1]
        items.append(ItemIn.model_validate({"prompt": [{"role": m.get("role"), "content": m.get("content")}
                                                       for m in msgs],
                                            "reply": reply, "source_trace_id": row.source_trace_id}))
    if task_type in (TaskType.PAIRWISE, TaskType.RANKED) and not all(i.candidates for i in items):
        raise InvalidInput(f"dataset {ds.ref} holds {ds.kind} rows; a {task_type.value} project needs pairs",
                           param="source.ref")
    return items


def _env_items(ref: str | None, n: int) -> list[ItemIn]:
    from teachloop.envs.registry import available, import_target, instantiate

    entry = available().get(ref or "")
    if entry is None:
        raise InvalidInput(f"environment {ref!r} is not a built-in or installed environment", param="source.ref")
    env = instantiate(import_target(entry.target), {}, f"environment {ref}")
    return [ItemIn(prompt=[{"role": m.role, "content": m.content} for m in t.prompt],
                   context={"environment": ref, "task_id": t.id}) for t in env.take(n)]


def new_template(session: Session, org_id: str, ref: str, spec: TemplateSpec, *, actor: str = "system") -> WorkTemplate:
    """The next template version of the project; new tasks use it, older answers keep theirs."""
    project = get_project(session, org_id, ref)
    _check_template(TaskType(project.task_type), spec)
    project.template_version += 1
    row = WorkTemplate(org_id=org_id, project_id=project.id, version=project.template_version,
                       spec=spec.model_dump(mode="json"), created_by=actor)
    session.add(row)
    session.flush()
    AuditLog(session).record(org_id, actor, "work.template.version", project.id, {"version": row.version})
    return row


def update_settings(session: Session, org_id: str, ref: str, settings: ProjectSettings, *,
                    actor: str = "system") -> WorkProject:
    """Replace the project's settings (they apply to tasks leased and answers accepted from now on)."""
    project = get_project(session, org_id, ref)
    project.settings = settings.model_dump(mode="json")
    session.flush()
    AuditLog(session).record(org_id, actor, "work.project.settings", project.id, {})
    return project


def add_items(session: Session, org_id: str, ref: str, items: list[ItemIn], *, actor: str = "system",
              origin: str = "owner") -> list[WorkItem]:
    """Validate every item, then add them all (gold items with their hidden answer); nothing on a refusal."""
    project = get_project(session, org_id, ref)
    task_type = TaskType(project.task_type)
    spec = spec_of(template_of(session, project))
    for i, item in enumerate(items):
        try:
            check_payload(task_type, spec, item)
        except InvalidInput as err:
            raise InvalidInput(f"items[{i}]: {err}", param=f"items.{i}.{err.param or 'item'}") from None
    rows = []
    for item in items:
        payload = item.model_dump(mode="json", exclude={"gold_answer", "source_trace_id"})
        row = WorkItem(org_id=org_id, project_id=project.id, payload=payload, is_gold=item.gold_answer is not None,
                       source_trace_id=item.source_trace_id, origin=origin)
        if item.gold_answer is not None:
            row.gold_answer = item.gold_answer
        session.add(row)
        rows.append(row)
    session.flush()
    AuditLog(session).record(org_id, actor, "work.items.add", project.id,
                             {"items": len(rows), "gold": sum(r.is_gold for r in rows)})
    return rows


def counted_answers(session: Session, item_ids: list[str]) -> dict[str, int]:
    """Item id -> answers that count towards its quorum (submitted, accepted or fixed)."""
    if not item_ids:
        return {}
    rows = session.execute(select(WorkAnswer.item_id, func.count()).where(
        WorkAnswer.item_id.in_(item_ids), WorkAnswer.status.in_(COUNTED)).group_by(WorkAnswer.item_id))
    return {i: int(n) for i, n in rows}


def project_out(session: Session, project: WorkProject) -> ProjectOut:
    """The owner's view of a project with its counts."""
    items = list(session.execute(select(WorkItem.id, WorkItem.is_gold).where(WorkItem.project_id == project.id)))
    quorum = settings_of(project).quorum
    accepted = dict(session.execute(select(WorkAnswer.item_id, func.count()).where(
        WorkAnswer.project_id == project.id, WorkAnswer.status.in_(("accepted", "fixed")),
        WorkAnswer.is_gold.is_(False)).group_by(WorkAnswer.item_id)).all())
    return ProjectOut(id=project.id, name=project.name, title=project.title, task_type=TaskType(project.task_type),
                      template_version=project.template_version, settings=settings_of(project),
                      source=dict(project.source or {}), fulfils=project.fulfils, status=project.status,
                      items=len(items), gold_items=sum(1 for _, g in items if g),
                      complete_items=sum(1 for n in accepted.values() if n >= quorum),
                      created_at=project.created_at)


def list_projects(session: Session, org_id: str) -> list[WorkProject]:
    """The organisation's projects, newest first."""
    return list(session.scalars(select(WorkProject).where(WorkProject.org_id == org_id)
                                .order_by(WorkProject.created_at.desc(), WorkProject.id.desc())))


def template_out(row: WorkTemplate) -> TemplateOut:
    """A template version as returned by the API."""
    return TemplateOut(project_id=row.project_id, version=row.version, spec=spec_of(row), created_at=row.created_at)


def item_payload(session: Session, org_id: str, item_id: str) -> dict[str, Any]:
    """What an item shows (its prompt, reply, candidates, suggestion, context): never its gold answer."""
    row = session.get(WorkItem, item_id)
    if row is None or row.org_id != org_id:
        raise NotFound(f"item {item_id!r} not found", param="item")
    return dict(row.payload)


def list_items(session: Session, org_id: str, ref: str, *, gold: bool | None = None, limit: int = 500) -> list[ItemOut]:
    """The owner's view of a project's items (gold answers included), oldest first."""
    project = get_project(session, org_id, ref)
    if not 1 <= limit <= 10_000:
        raise InvalidInput(f"limit must be 1-10000, got {limit}", param="limit")
    query = select(WorkItem).where(WorkItem.project_id == project.id)
    if gold is not None:
        query = query.where(WorkItem.is_gold.is_(gold))
    rows = list(session.scalars(query.order_by(WorkItem.created_at, WorkItem.id).limit(limit)))
    counts = counted_answers(session, [r.id for r in rows])
    return [ItemOut(id=r.id, project_id=r.project_id, payload=dict(r.payload), is_gold=r.is_gold,
                    gold_answer=r.gold_answer, source_trace_id=r.source_trace_id, origin=r.origin,
                    answers=counts.get(r.id, 0), created_at=r.created_at) for r in rows]


__all__ = ["COUNTED", "add_items", "counted_answers", "create_project", "get_project", "item_payload", "list_items",
           "list_projects", "new_template", "project_out", "settings_of", "spec_of", "template_of", "template_out",
           "update_settings"]

"""Expert workforce pages, the owner's side: projects, their setup and progress, the review queue, gold, exams.

Reading needs the viewer role, changing anything the member role, inviting experts admin -- the
checks ``/api/work`` makes of a key. Experts (the ``expert`` role ranks below viewer) reach none
of these pages, except the review queue of a project that names them among its ``reviewers``.
Every object is found through ``teachloop.work`` within the session's organisation: another
organisation's project, answer or dispute is the same 404 as a missing one.

- ``/work/projects``: the projects with their progress, the experts with their quality, the
  exams; an admin invites an expert (a single-use ``/work/join/{token}`` link, shown once) and
  pays an expert's payable balance out (``POST /work/experts/payouts``: ``work.pay.payout``, the
  batch name keying it, so a retry pays once); a member sets a skill's exam (questions as text:
  ``id: question`` then one ``- option`` a line, the right one written ``* option``).
- ``/work/projects/new``: project setup (name, task type, instructions, rubric criteria as
  ``id low-high description`` lines, quorum, gold share, lease, skill, pay, source -- a marketplace
  data request the organisation can see becomes the project through ``app.joins.project_from_request``,
  as ``POST /api/requests/{id}/project`` does). *Preview*
  (``POST /work/projects/preview``) validates the form and shows the task as an expert will see
  it on a sample item, writing nothing; *Create* (``POST /work/projects``) makes the project.
- ``/work/projects/{project}``: progress (items, gold, complete, answers by status), agreement
  (Krippendorff's alpha, Cohen's kappa per expert pair, per item the aggregated label, its
  confidence and agreement), each expert's quality in the project, the result datasets and
  *Build the dataset* (``results.build_dataset``), the template preview, and adding items (JSON
  lines of ``ItemIn``; every line is checked before any is added). A member also edits the template
  (``POST .../templates``: the next version), the settings (``POST .../settings``: the fields the
  form shows replace theirs, the rest stay), closes a pay period (``POST .../periods``, listed with
  its top-ups), fills model suggestions from a deployment (``POST .../suggestions``:
  ``app.joins.fill_suggestions`` with the console's serving runtime) and publishes an authoring
  project's accepted tasks as an environment version (``POST .../environment``: ``work.publish``).
- ``/work/projects/{project}/review``: submitted answers with their items; accept, fix (the
  corrected reply, or the corrected value as JSON) or reject with a reason
  (``review.review``; a rejection without a reason is refused).
- ``/work/projects/{project}/gold``: gold items with their answers, adding gold items, and the
  open disputes, each resolved (uphold with a new gold answer, or reject) by a member.

Bad form input is a 400 page naming the field; nothing is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from teachloop.app import joins
from teachloop.app.auth import current_serving
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.tenancy import Role
from teachloop.core.work import (
    AnswerStatus,
    Criterion,
    DisputeResolve,
    EnvPublish,
    ExamCreate,
    ExamQuestion,
    ItemIn,
    PeriodClose,
    ProjectCreate,
    ProjectSettings,
    ProjectSource,
    ReviewBody,
    SuggestionsFill,
    TaskType,
    TemplateSpec,
)
from teachloop.ledger import Payouts, TestProvider
from teachloop.market.requests import DataRequests
from teachloop.store.repos.sessions import NewLink, SigninLinks
from teachloop.store.schema.base import utc_now
from teachloop.web.auth import SignedIn, Viewer, app_deps, require, require_csrf
from teachloop.web.market import money
from teachloop.web.render import ConsoleRoute, page
from teachloop.web.work import Fields, task_context
from teachloop.work import pay, projects, publish, results, review, suggestions, workforce

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

TASK_TYPES = [t.value for t in TaskType]
SOURCES = ("manual", "traces", "dataset", "environment", "request")
#: the sample item each task type's template preview shows
SAMPLES: dict[TaskType, dict[str, Any]] = {
    TaskType.DEMONSTRATION: {"prompt": [{"role": "user", "content": "How do I reset my password?"}]},
    TaskType.PAIRWISE: {"prompt": [{"role": "user", "content": "Summarise: the meeting moved to Friday."}],
                        "candidates": [{"id": "a", "text": "The meeting is now on Friday."},
                                       {"id": "b", "text": "There is a meeting."}]},
    TaskType.RANKED: {"prompt": [{"role": "user", "content": "Name a prime number above 10."}],
                      "candidates": [{"id": "x", "text": "11"}, {"id": "y", "text": "12"}, {"id": "z", "text": "13"}]},
    TaskType.RUBRIC: {"prompt": [{"role": "user", "content": "Explain recursion in one sentence."}],
                      "reply": "Recursion is when a function calls itself on a smaller problem."},
    TaskType.CORRECTION: {"prompt": [{"role": "user", "content": "What is the capital of Australia?"}],
                          "reply": "The capital of Australia is Sydney."},
    TaskType.AUTHORING: {"prompt": [{"role": "user", "content": "Write a task about unit conversion."}]},
}


def _model(model: Any, param: str, **fields: Any) -> Any:
    """``model(**fields)``; a refused field is a 400 naming it (``param.field``)."""
    try:
        return model(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in (param, *first.get("loc", ())) if p != "")
        raise InvalidInput(f"{where}: {first.get('msg', 'invalid value')}", param=where) from None


def _json(raw: str, param: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as err:
        raise InvalidInput(f"{param} is not valid JSON: {err}", param=param) from None


def _field(fields: FormData, name: str) -> str:
    value = fields.get(name)
    return value if isinstance(value, str) else ""


# ------------------------------------------------------------------------------------------ form parsing


def parse_criteria(text: str) -> list[Criterion]:
    """Rubric criteria from ``id low-high description`` lines (blank lines skipped)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, 2)
        scale = parts[1].split("-") if len(parts) > 1 else []
        if len(parts) < 3 or len(scale) != 2 or not all(s.strip().isdigit() for s in scale):
            raise InvalidInput(f"criteria line {n}: write 'id low-high description', e.g. 'clarity 1-5 Is the "
                               f"reply clear?'; got {line.strip()!r}", param="criteria")
        out.append(_model(Criterion, f"criteria line {n}", id=parts[0], low=int(scale[0]), high=int(scale[1]),
                          description=parts[2].strip()))
    return out


def parse_questions(text: str) -> list[ExamQuestion]:
    """Exam questions from blocks: ``id: question``, then ``- option`` lines with the right one ``* option``."""
    out: list[ExamQuestion] = []
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    if not blocks:
        raise InvalidInput("write at least one question", param="questions")
    for n, block in enumerate(blocks, 1):
        lines = [x.strip() for x in block.strip().splitlines() if x.strip()]
        head, _, prompt = lines[0].partition(":")
        options = [x[1:].strip() for x in lines[1:] if x[:1] in "-*"]
        right = [x[1:].strip() for x in lines[1:] if x[:1] == "*"]
        if not prompt.strip() or len(options) != len(lines) - 1:
            raise InvalidInput(f"question {n}: start with 'id: question', then one '- option' a line",
                               param="questions")
        if len(right) != 1:
            raise InvalidInput(f"question {n}: mark exactly one option as right with '*'", param="questions")
        out.append(_model(ExamQuestion, f"question {n}", id=head.strip(), prompt=prompt.strip(), options=options,
                          answer=right[0]))
    return out


def _number(raw: str, param: str, cast: Any = int) -> Any:
    try:
        return cast(raw.strip())
    except ValueError:
        kind = "a whole number" if cast is int else "a number"
        raise InvalidInput(f"{param} must be {kind}, got {raw!r}", param=param) from None


def template_body(fields: FormData) -> TemplateSpec:
    """The ``TemplateSpec`` of a form's ``instructions``, ``criteria`` and ``allow_unchanged`` fields."""
    return _model(TemplateSpec, "template", instructions=_field(fields, "instructions"),  # type: ignore[no-any-return]
                  criteria=parse_criteria(_field(fields, "criteria")),
                  allow_unchanged=bool(_field(fields, "allow_unchanged")))


def criteria_text(spec: TemplateSpec) -> str:
    """A template's criteria as the form writes them (``id low-high description`` lines)."""
    return "\n".join(f"{c.id} {c.low}-{c.high} {c.description}" for c in spec.criteria)


def settings_body(fields: FormData, base: ProjectSettings | None = None) -> ProjectSettings:
    """The ``ProjectSettings`` a form stands for, over ``base`` (the settings the form does not show stay)."""
    ints = {k: _number(_field(fields, k), k) for k in ("quorum", "lease_seconds", "rate", "min_hourly", "min_gold")
            if _field(fields, k).strip()}
    floats = {k: _number(_field(fields, k), k, float) for k in ("gold_share", "pause_below", "min_confidence")
              if _field(fields, k).strip()}
    days = _field(fields, "review_window_days")
    if days.strip():
        ints["review_window_s"] = int(_number(days, "review_window_days", float) * 86_400)
    reviewers = [x.strip() for x in _field(fields, "reviewers").split(",") if x.strip()]
    kept = base.model_dump() if base is not None else {}
    return _model(ProjectSettings, "settings", **{  # type: ignore[no-any-return]
        **kept, **ints, **floats, "skill": _field(fields, "skill").strip() or None,
        "show_suggestions": bool(_field(fields, "show_suggestions")), "pay_mode": _field(fields, "pay_mode") or "task",
        "currency": (_field(fields, "currency").strip() or "USD").upper(), "reviewers": reviewers})


def project_body(fields: FormData) -> ProjectCreate:
    """The ``ProjectCreate`` the setup form stands for; ``InvalidInput`` naming the first wrong field.

    With the source ``request``, ``source_request`` names the data request; ``create`` then makes
    the project through ``app.joins.project_from_request`` (the request's spec is added there).
    """
    task_type = _field(fields, "task_type")
    if task_type not in TASK_TYPES:
        raise InvalidInput(f"task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}", param="task_type")
    template = template_body(fields)
    settings = settings_body(fields)
    kind = _field(fields, "source") or "manual"
    if kind not in SOURCES:
        raise InvalidInput(f"source must be one of {', '.join(SOURCES)}, got {kind!r}", param="source")
    raw_filter = _field(fields, "source_filter").strip()
    source_fields: dict[str, Any] = {"kind": kind, "ref": _field(fields, "source_ref").strip() or None,
                                     "filter": _json(raw_filter, "source_filter") if raw_filter else {}}
    if kind == "request":
        request_id = _field(fields, "source_request").strip()
        if not request_id:
            raise InvalidInput("choose the data request the project answers", param="source_request")
        source_fields = {"kind": kind, "fulfils": request_id}
    if _field(fields, "source_tasks").strip():
        source_fields["tasks"] = _number(_field(fields, "source_tasks"), "source_tasks")
    source = _model(ProjectSource, "source", **source_fields)
    return _model(ProjectCreate, "", name=_field(fields, "name").strip(), title=_field(fields, "title").strip(),
                  task_type=task_type, template=template, settings=settings, source=source)


def items_of(text: str, *, gold: bool = False) -> list[ItemIn]:
    """Items from JSON lines (one ``ItemIn`` object a line); ``gold`` requires each line's ``gold_answer``."""
    out = []
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise InvalidInput("write at least one item: one JSON object a line", param="items")
    for n, line in lines:
        raw = _json(line, f"items line {n}")
        if not isinstance(raw, dict):
            raise InvalidInput(f"items line {n} must be a JSON object", param="items")
        item = _model(ItemIn, f"items line {n}", **raw)
        if gold and item.gold_answer is None:
            raise InvalidInput(f"items line {n}: a gold item needs its gold_answer", param="items")
        out.append(item)
    return out


# ------------------------------------------------------------------------------------------ projects


@dataclass(frozen=True)
class ExpertRow:
    """An expert with their quality (in the organisation or one project)."""

    expert: Any  # ExpertOut
    quality: Any  # QualityOut


def _invite_url(request: Request, link: NewLink | None) -> str | None:
    return str(request.base_url).rstrip("/") + f"/work/join/{link.token}" if link else None


def _projects_page(request: Request, viewer: Viewer, *, status: int = 200, new_link: NewLink | None = None,
                   done: str = "") -> Response:
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        found = [projects.project_out(s, p) for p in projects.list_projects(s, org)]
        experts = [ExpertRow(workforce.expert_out(s, e), review.quality(s, org, e.user_id))
                   for e in workforce.list_experts(s, org)]
        exams = workforce.list_exams(s, org)
        invites = [i for i in SigninLinks(s).pending_invites(org) if i.role is Role.EXPERT]
    return page(request, "work_projects.html", status=status, projects=found, experts=experts, exams=exams,
                invites=invites, new_link=new_link, link_url=_invite_url(request, new_link), done=done,
                can_write=viewer.can(Role.MEMBER), can_invite=viewer.can(Role.ADMIN), can_pay=viewer.can(Role.ADMIN),
                batch=utc_now().strftime("%Y%m%d"))


@router.get("/work/projects")
def project_list(request: Request, viewer: SignedIn, done: str = "") -> Response:
    """Projects with progress, experts with quality, exams; invitations and exam forms."""
    require(viewer, Role.VIEWER, "reading labeling projects")
    return _projects_page(request, viewer, done=done)


@router.post("/work/experts/invitations")
def invite_expert(request: Request, viewer: SignedIn, email: Annotated[str, Form(max_length=320)] = "") -> Response:
    """Invite an e-mail address to join as an expert; the single-use link is shown once."""
    require(viewer, Role.ADMIN, "inviting experts")
    with app_deps(request).database.session() as s:
        link = SigninLinks(s).create_invite(viewer.principal.org_id, email, Role.EXPERT,
                                            actor=viewer.principal.key_id)
    return _projects_page(request, viewer, status=201, new_link=link)


@router.post("/work/exams")
def set_exam(
    request: Request, viewer: SignedIn,
    skill: Annotated[str, Form(max_length=100)] = "",
    questions: Annotated[str, Form(max_length=200_000)] = "",
    pass_percent: Annotated[str, Form(max_length=10)] = "80",
    cooldown_hours: Annotated[str, Form(max_length=10)] = "24",
) -> Response:
    """Set a skill's exam (its questions replace the old ones; past attempts keep their scores)."""
    require(viewer, Role.MEMBER, "setting exams")
    workforce.check_skill(skill.strip())
    body = _model(ExamCreate, "exam", questions=parse_questions(questions),
                  pass_score=_number(pass_percent, "pass_percent", float) / 100,
                  cooldown_s=int(_number(cooldown_hours, "cooldown_hours", float) * 3600))
    with app_deps(request).database.session() as s:
        workforce.put_exam(s, viewer.principal.org_id, skill.strip(), body, actor=viewer.principal.key_id)
    return RedirectResponse("/work/projects?done=exam-saved", status_code=303)


def _setup_page(request: Request, viewer: Viewer, *, status: int = 200, form: dict[str, str] | None = None,
                preview: ProjectCreate | None = None, message: str | None = None) -> Response:
    context: dict[str, Any] = {}
    if preview is not None:
        context = task_context(preview.task_type, preview.template, SAMPLES[preview.task_type])
    with app_deps(request).database.session(write=False) as s:
        requests = DataRequests(s).list_requests(viewer.principal.org_id)
    return page(request, "work_setup.html", status=status, form=form or {}, preview=preview, message=message,
                task_types=TASK_TYPES, sources=SOURCES, requests=requests, values={}, **context)


@router.get("/work/projects/new")
def setup(request: Request, viewer: SignedIn) -> Response:
    """The project setup form."""
    require(viewer, Role.MEMBER, "creating labeling projects")
    return _setup_page(request, viewer)


def _typed(fields: FormData) -> dict[str, str]:
    return {k: v for k, v in fields.items() if isinstance(v, str) and k != "csrf_token"}


@router.post("/work/projects/preview")
def preview(request: Request, viewer: SignedIn, fields: Fields) -> Response:
    """The setup form again with the task as an expert will see it (nothing is written)."""
    require(viewer, Role.MEMBER, "creating labeling projects")
    try:
        body = project_body(fields)
        if body.task_type is TaskType.RUBRIC and not body.template.criteria:
            raise InvalidInput("a rubric project needs at least one criterion", param="criteria")
    except InvalidInput as err:
        return _setup_page(request, viewer, status=400, form=_typed(fields), message=err.message)
    return _setup_page(request, viewer, form=_typed(fields), preview=body)


@router.post("/work/projects")
def create(request: Request, viewer: SignedIn, fields: Fields) -> Response:
    """Create the project (template version 1, its first items from the source)."""
    require(viewer, Role.MEMBER, "creating labeling projects")
    org, actor = viewer.principal.org_id, viewer.principal.key_id
    try:
        body = project_body(fields)
        with app_deps(request).database.session() as s:
            if body.source.kind == "request":
                row = joins.project_from_request(s, org, body.source.fulfils or "", name=body.name, title=body.title,
                                                 task_type=body.task_type, template=body.template,
                                                 settings=body.settings, actor=actor)
            else:
                row = projects.create_project(s, org, body, actor=actor)
            project_id = row.id
    except (InvalidInput, NotFound) as err:
        return _setup_page(request, viewer, status=err.status, form=_typed(fields), message=err.message)
    return RedirectResponse(f"/work/projects/{project_id}?done=created", status_code=303)


@router.get("/work/projects/{project}")
def project_page(request: Request, viewer: SignedIn, project: str, done: str = "") -> Response:
    """Progress, agreement, expert quality, result datasets, template preview and adding items."""
    require(viewer, Role.VIEWER, "reading labeling projects")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        row = projects.get_project(s, org, project)
        out = projects.project_out(s, row)
        spec = projects.spec_of(projects.template_of(s, row))
        answers = review.list_answers(s, org, row.id, limit=10_000)
        by_status = {st.value: sum(1 for a in answers if a.status == st.value) for st in AnswerStatus}
        experts = sorted({a.expert_id for a in answers})
        handles = {e.user_id: e.handle for e in workforce.list_experts(s, org)}
        quality = [ExpertRow(workforce.expert_out(s, workforce.get_expert(s, org, u)),
                             review.quality(s, org, u, row.id)) for u in experts if u in handles]
        agreement = results.agreement(s, org, row.id)
        datasets = results.result_datasets(s, org, row.id)
        periods = [pay.period_out(p) for p in pay.list_periods(s, org, row)]
    sample = SAMPLES[out.task_type]
    edit = {"instructions": spec.instructions, "criteria": criteria_text(spec), "allow_unchanged": spec.allow_unchanged}
    return page(request, "work_project.html", project=out, by_status=by_status, quality=quality,
                agreement=agreement, handles=handles, datasets=datasets, periods=periods, edit=edit, done=done,
                money=money, can_write=viewer.can(Role.MEMBER), values={}, preview=True,
                suggestible=out.task_type in suggestions.SUGGESTIBLE,
                **task_context(out.task_type, spec, sample))


@router.post("/work/projects/{project}/items")
def add_items(request: Request, viewer: SignedIn, project: str,
              items: Annotated[str, Form(max_length=2_000_000)] = "") -> Response:
    """Add items (JSON lines); every one is checked before any is added."""
    require(viewer, Role.MEMBER, "adding items")
    parsed = items_of(items)
    with app_deps(request).database.session() as s:
        rows = projects.add_items(s, viewer.principal.org_id, project, parsed, actor=viewer.principal.key_id)
        target = rows[0].project_id
    return RedirectResponse(f"/work/projects/{target}?done=added-{len(rows)}-items", status_code=303)


@router.post("/work/projects/{project}/dataset")
def build(request: Request, viewer: SignedIn, project: str) -> Response:
    """Aggregate the accepted answers into the next version of the project's dataset."""
    require(viewer, Role.MEMBER, "building datasets")
    deps = app_deps(request)
    result = results.build_dataset(deps.database, deps.blobs, viewer.principal.org_id, project,
                                   actor=viewer.principal.key_id)
    done = f"dataset-{result.dataset}-{result.rows}-rows" if result.dataset else "no-item-passed-the-threshold"
    return RedirectResponse(f"/work/projects/{result.project_id}?done={done}", status_code=303)


@router.post("/work/projects/{project}/templates")
def new_template(request: Request, viewer: SignedIn, fields: Fields, project: str) -> Response:
    """The next template version (new tasks use it; answers keep the version they answered)."""
    require(viewer, Role.MEMBER, "editing templates")
    spec = template_body(fields)
    with app_deps(request).database.session() as s:
        row = projects.new_template(s, viewer.principal.org_id, project, spec, actor=viewer.principal.key_id)
        target, version = row.project_id, row.version
    return RedirectResponse(f"/work/projects/{target}?done=template-v{version}", status_code=303)


@router.post("/work/projects/{project}/settings")
def put_settings(request: Request, viewer: SignedIn, fields: Fields, project: str) -> Response:
    """Replace the settings the form shows (the others stay); they apply from now on."""
    require(viewer, Role.MEMBER, "changing project settings")
    org = viewer.principal.org_id
    with app_deps(request).database.session() as s:
        row = projects.get_project(s, org, project)
        body = settings_body(fields, projects.settings_of(row))
        projects.update_settings(s, org, row.id, body, actor=viewer.principal.key_id)
        target = row.id
    return RedirectResponse(f"/work/projects/{target}?done=settings-saved", status_code=303)


def _until(raw: str) -> datetime | None:
    if not raw.strip():
        return None
    try:
        at = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidInput(f"until must be a date and time like 2026-12-01T09:00, got {raw!r}", param="until") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@router.post("/work/projects/{project}/periods")
def close_period(request: Request, viewer: SignedIn, project: str,
                 period: Annotated[str, Form(max_length=40)] = "",
                 until: Annotated[str, Form(max_length=40)] = "") -> Response:
    """Close a pay period (ending now, or at ``until``, UTC) and post the minimum-hourly-rate top-ups."""
    require(viewer, Role.MEMBER, "closing pay periods")
    body = _model(PeriodClose, "period", period=period.strip(), until=_until(until))
    with app_deps(request).database.session() as s:
        row = projects.get_project(s, viewer.principal.org_id, project)
        closed = pay.close_period(s, viewer.principal.org_id, row, body.period, until=body.until,
                                  actor=viewer.principal.key_id)
        target, topups = row.id, len(closed.topups or {})
    return RedirectResponse(f"/work/projects/{target}?done=period-{quote(body.period)}-closed-{topups}-top-ups",
                            status_code=303)


@router.post("/work/projects/{project}/environment")
async def publish_environment(request: Request, viewer: SignedIn, project: str,
                              name: Annotated[str, Form(max_length=100)] = "",
                              version: Annotated[str, Form(max_length=64)] = "") -> Response:
    """Publish the accepted authored tasks as an environment version (every publish-time check runs)."""
    require(viewer, Role.MEMBER, "publishing environments")
    body = _model(EnvPublish, "environment", name=name.strip() or None, version=version.strip() or None)
    deps = app_deps(request)
    out = await publish.publish_environment(deps.database, deps.blobs, viewer.principal.org_id, project, body,
                                            actor=viewer.principal.key_id)
    state = "published" if out.created else "unchanged"
    return RedirectResponse(f"/work/projects/{out.project_id}?done=environment-{quote(out.environment)}-{state}",
                            status_code=303)


@router.post("/work/projects/{project}/suggestions")
async def fill_suggestions(request: Request, viewer: SignedIn, project: str,
                           deployment: Annotated[str, Form(max_length=200)] = "",
                           limit: Annotated[str, Form(max_length=10)] = "50") -> Response:
    """Ask a deployment for the suggestion of each item without one (traced completions of the organisation)."""
    require(viewer, Role.MEMBER, "filling model suggestions")
    body = _model(SuggestionsFill, "suggestions", deployment=deployment.strip(), limit=_number(limit, "limit"))
    out = await joins.fill_suggestions(app_deps(request).database, current_serving(request), viewer.principal,
                                       project, body)
    done = f"suggestions-{out.filled}-filled-{out.refused}-refused-{out.remaining}-left"
    return RedirectResponse(f"/work/projects/{out.project_id}?done={done}", status_code=303)


@router.post("/work/experts/payouts")
def payout(request: Request, viewer: SignedIn, expert: Annotated[str, Form(max_length=40)] = "",
           currency: Annotated[str, Form(max_length=3)] = "USD",
           batch: Annotated[str, Form(max_length=100)] = "") -> Response:
    """Pay an expert's whole payable work balance out (admin); the batch name makes a retry pay once."""
    require(viewer, Role.ADMIN, "paying experts out")
    currency, batch = currency.strip().upper(), batch.strip() or utc_now().strftime("%Y%m%d")
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise InvalidInput(f"currency must be a three-letter code, got {currency!r}", param="currency")
    if any(c.isspace() or not c.isprintable() for c in batch):
        raise InvalidInput("batch must be printable characters without spaces", param="batch")
    org, deps = viewer.principal.org_id, app_deps(request)
    with deps.database.session(write=False) as s:
        handle = workforce.get_expert(s, org, expert.strip()).handle
    paid = pay.payout(deps.database, Payouts(deps.database, TestProvider()), org, expert.strip(),
                      f"work:payout:{expert.strip()}:{batch}", currency)
    done = f"paid-{money(paid.amount.amount, currency)}-to-{handle}" if paid else f"nothing-payable-for-{handle}"
    return RedirectResponse(f"/work/projects?done={quote(done)}", status_code=303)


# ------------------------------------------------------------------------------------------ review


@dataclass(frozen=True)
class Pending:
    """A submitted answer with its item, for the review queue."""

    answer: Any  # AnswerOut
    payload: dict[str, Any]
    context: dict[str, Any]


@router.get("/work/projects/{project}/review")
def review_page(request: Request, viewer: SignedIn, project: str, done: str = "") -> Response:
    """Submitted answers awaiting review, each with accept / fix / reject."""
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        row = projects.get_project(s, org, project)
        waiting = review.review_queue(s, org, row.id, viewer.principal.user_id, member=viewer.can(Role.MEMBER))
        handles = {e.user_id: e.handle for e in workforce.list_experts(s, org)}
        spec = projects.spec_of(projects.template_of(s, row))
        task_type = TaskType(row.task_type)
        pending = []
        for a in waiting:
            payload = projects.item_payload(s, org, a.item_id)
            pending.append(Pending(review.answer_out(a), payload, task_context(task_type, spec, payload)))
        title, project_id = row.title, row.id
    return page(request, "work_review.html", title=title, project_id=project_id, pending=pending, handles=handles,
                task_type=task_type.value, done=done, money=money)


def _fixed_value(task_type: TaskType, fields: FormData) -> dict[str, Any]:
    if task_type in (TaskType.DEMONSTRATION, TaskType.CORRECTION):
        return {"reply": _field(fields, "fixed_reply")}
    raw = _field(fields, "fixed_json").strip()
    if not raw:
        raise InvalidInput("a fix needs the corrected value (JSON)", param="fixed_json")
    value = _json(raw, "fixed_json")
    if not isinstance(value, dict):
        raise InvalidInput("fixed_json must be a JSON object", param="fixed_json")
    return value


@router.post("/work/answers/{answer_id}/review")
def review_answer(request: Request, viewer: SignedIn, fields: Fields, answer_id: str) -> Response:
    """Accept, fix or reject one answer (a rejection needs a reason)."""
    decision = _field(fields, "decision")
    if decision not in ("accept", "fix", "reject"):
        raise InvalidInput(f"decision must be accept, fix or reject, got {decision!r}", param="decision")
    org = viewer.principal.org_id
    with app_deps(request).database.session() as s:
        answer = review.get_answer(s, org, answer_id)
        task_type = TaskType(projects.get_project(s, org, answer.project_id).task_type)
        fixed = _fixed_value(task_type, fields) if decision == "fix" else None
        body = _model(ReviewBody, "review", decision=decision, reason=_field(fields, "reason")[:1000],
                      fixed_value=fixed)
        review.review(s, org, answer_id, viewer.principal.user_id, body, member=viewer.can(Role.MEMBER),
                      actor=viewer.principal.key_id)
        project_id = answer.project_id
    return RedirectResponse(f"/work/projects/{project_id}/review?done={decision}", status_code=303)


# ------------------------------------------------------------------------------------------ gold


@router.get("/work/projects/{project}/gold")
def gold_page(request: Request, viewer: SignedIn, project: str, done: str = "") -> Response:
    """Gold items with their answers, the form that adds them, and the open disputes."""
    require(viewer, Role.VIEWER, "reading gold items")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        out = projects.project_out(s, projects.get_project(s, org, project))
        gold = projects.list_items(s, org, out.id, gold=True)
        disputes = [review.dispute_out(d) for d in review.list_disputes(s, org, project_ref=out.id)]
        handles = {e.user_id: e.handle for e in workforce.list_experts(s, org)}
    return page(request, "work_gold.html", project=out, gold=gold, disputes=disputes, handles=handles, done=done,
                can_write=viewer.can(Role.MEMBER))


@router.post("/work/projects/{project}/gold")
def add_gold(request: Request, viewer: SignedIn, project: str,
             items: Annotated[str, Form(max_length=2_000_000)] = "") -> Response:
    """Add gold items (JSON lines, each with its gold_answer)."""
    require(viewer, Role.MEMBER, "adding gold items")
    parsed = items_of(items, gold=True)
    with app_deps(request).database.session() as s:
        rows = projects.add_items(s, viewer.principal.org_id, project, parsed, actor=viewer.principal.key_id)
        target = rows[0].project_id
    return RedirectResponse(f"/work/projects/{target}/gold?done=added-{len(rows)}-gold", status_code=303)


@router.post("/work/disputes/{dispute_id}/resolve")
def resolve(request: Request, viewer: SignedIn, dispute_id: str,
            decision: Annotated[str, Form(max_length=10)] = "",
            resolution: Annotated[str, Form(max_length=2000)] = "",
            gold_answer: Annotated[str, Form(max_length=100_000)] = "") -> Response:
    """Resolve a dispute of a gold item (uphold re-scores every answer on it)."""
    require(viewer, Role.MEMBER, "resolving disputes")
    if decision not in ("uphold", "reject"):
        raise InvalidInput(f"decision must be uphold or reject, got {decision!r}", param="decision")
    gold = _json(gold_answer, "gold_answer") if gold_answer.strip() else None
    if gold is not None and not isinstance(gold, dict):
        raise InvalidInput("gold_answer must be a JSON object", param="gold_answer")
    body = _model(DisputeResolve, "dispute", decision=decision, resolution=resolution, gold_answer=gold)
    with app_deps(request).database.session() as s:
        row = review.resolve_dispute(s, viewer.principal.org_id, dispute_id, body, actor=viewer.principal.key_id)
        project_id = row.project_id
    return RedirectResponse(f"/work/projects/{project_id}/gold?done=dispute-{decision}", status_code=303)


__all__ = ["SAMPLES", "SOURCES", "TASK_TYPES", "criteria_text", "items_of", "parse_criteria", "parse_questions",
           "project_body", "router", "settings_body", "template_body"]

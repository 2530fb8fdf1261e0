"""``/api/work``: the expert workforce -- projects, items, the expert's queue, exams, review, quality, pay, results.

Owners (a member key or higher):

- ``POST /api/work/projects`` (201): a project (``core.work.ProjectCreate``) with its first items
  from traces, a dataset version, an environment or a data request's spec; ``GET
  /api/work/projects`` (a viewer or expert key), ``GET .../{project}``; ``PUT .../{project}/settings``;
  ``POST .../{project}/templates`` (201) the next template version, ``GET .../templates/{version}``.
- ``POST .../{project}/items`` (201) items (gold items with their hidden answer); ``GET .../items``
  (``?gold=``) with gold answers; ``GET .../answers`` (``?status=``).
- ``GET .../{project}/agreement``; ``POST .../{project}/dataset``: aggregate and record the next
  dataset version; ``POST .../{project}/periods``: close a pay period (minimum-rate top-ups).
- ``POST .../{project}/environment``: publish an authoring project's accepted tasks as an
  environment version through the environment hub (``work.publish``; every publish-time check runs).
- ``POST .../{project}/suggestions``: ask a deployment (``core.work.SuggestionsFill``) for the model
  suggestion of each item without one (``app.joins.fill_suggestions``: the serving runtime answers,
  ``work.suggestions`` stores; each call is a traced completion of the organisation).
- ``POST /api/work/experts``: a member becomes an expert (skills); ``GET /api/work/experts``;
  ``GET /api/work/experts/{user_id}/quality``; ``PUT /api/work/exams/{skill}``;
  ``GET /api/work/disputes``, ``POST /api/work/disputes/{dispute_id}/resolve``;
  ``POST /api/work/release``: move pay whose review window closed to the experts' payable balances.

Reviewers (a member key, or an expert named in the project's ``reviewers``):
``GET .../{project}/review`` (the answers awaiting review), ``POST /api/work/answers/{answer_id}/review``.

Experts (an ``expert`` key, or a member with an expert profile): ``POST .../{project}/next`` leases
the next task (``task`` null when none waits); ``GET /api/work/tasks/{assignment_id}``; ``POST
.../submit``; ``POST .../release`` (skip); ``GET /api/work/exams/{skill}`` (no answers) and ``POST
.../attempts``; ``GET /api/work/me`` (profile, quality, earnings), ``GET /api/work/me/answers``;
``POST /api/work/answers/{answer_id}/disputes`` (a gold item they were scored wrong on).

Every refusal is a 4xx from the services in ``teachloop.work`` with nothing written; this module
knows HTTP and the response models only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from teachloop.app import joins
from teachloop.app.auth import CurrentPrincipal, Deps, Member, ServingDep
from teachloop.core.errors import Forbidden
from teachloop.core.tenancy import Principal, Role
from teachloop.core.work import (
    AgreementOut,
    AnswerOut,
    AttemptBody,
    AttemptOut,
    DatasetResult,
    DisputeCreate,
    DisputeOut,
    DisputeResolve,
    EarningsOut,
    EnvPublish,
    EnvPublished,
    ExamCreate,
    ExamOut,
    ExpertCreate,
    ExpertOut,
    ItemOut,
    ItemsIn,
    MyAnswerOut,
    PeriodClose,
    PeriodOut,
    ProjectCreate,
    ProjectOut,
    ProjectSettings,
    QualityOut,
    ReviewBody,
    SubmitBody,
    SuggestionsFill,
    SuggestionsFilled,
    TaskOut,
    TemplateOut,
    TemplateSpec,
)
from teachloop.work import pay, projects, publish, results, review, tasks, workforce

router = APIRouter(prefix="/api/work", tags=["work"])


def _role_or(floor: Role, *extra: Role) -> Callable[[Principal], Principal]:
    def check(principal: CurrentPrincipal) -> Principal:
        if principal.role.at_least(floor) or principal.role in extra:
            return principal
        raise Forbidden(f"this call needs the {floor.value} role or higher, or the "
                        f"{' or '.join(r.value for r in extra)} role; this key has {principal.role.value}")

    return check


#: Reads of projects: a viewer (or higher) or expert key.
Reader = Annotated[Principal, Depends(_role_or(Role.VIEWER, Role.EXPERT))]
#: Expert work: an expert key, or a member (or higher) with an expert profile.
Worker = Annotated[Principal, Depends(_role_or(Role.MEMBER, Role.EXPERT))]


class ProjectList(BaseModel):
    """The organisation's projects, newest first."""

    data: list[ProjectOut]


class ItemList(BaseModel):
    """Items of a project."""

    data: list[ItemOut]


class AnswerList(BaseModel):
    """Answers of a project."""

    data: list[AnswerOut]


class MyAnswerList(BaseModel):
    """The expert's own answers, newest first."""

    data: list[MyAnswerOut]


class ExpertList(BaseModel):
    """The organisation's experts."""

    data: list[ExpertOut]


class DisputeList(BaseModel):
    """Disputes of gold items, newest first."""

    data: list[DisputeOut]


class NextTask(BaseModel):
    """The task leased to the caller, or null with the reason when none waits."""

    task: TaskOut | None
    reason: str | None = None


class MeOut(BaseModel):
    """What an expert sees about themselves: profile, quality and earnings."""

    expert: ExpertOut
    quality: QualityOut
    earnings: EarningsOut


class Released(BaseModel):
    """Answers whose pay moved to the payable balance."""

    released: list[str] = Field(description="Answer ids.")


def _member(p: Principal) -> bool:
    return p.role.at_least(Role.MEMBER)


@router.post("/projects", status_code=201, response_model=ProjectOut)
def create_project(body: ProjectCreate, principal: Member, deps: Deps) -> ProjectOut:
    """Create a project with template version 1 and the items of its source."""
    with deps.database.session() as s:
        return projects.project_out(s, projects.create_project(s, principal.org_id, body, actor=principal.key_id))


@router.get("/projects", response_model=ProjectList)
def list_projects(principal: Reader, deps: Deps) -> ProjectList:
    """The organisation's projects, newest first."""
    with deps.database.session(write=False) as s:
        return ProjectList(data=[projects.project_out(s, p) for p in projects.list_projects(s, principal.org_id)])


@router.get("/projects/{project}", response_model=ProjectOut)
def get_project(project: str, principal: Reader, deps: Deps) -> ProjectOut:
    """One project (id or name) with its progress counts."""
    with deps.database.session(write=False) as s:
        return projects.project_out(s, projects.get_project(s, principal.org_id, project))


@router.put("/projects/{project}/settings", response_model=ProjectOut)
def put_settings(project: str, body: ProjectSettings, principal: Member, deps: Deps) -> ProjectOut:
    """Replace the project's settings (quorum, gold share, lease, pay, thresholds)."""
    with deps.database.session() as s:
        row = projects.update_settings(s, principal.org_id, project, body, actor=principal.key_id)
        return projects.project_out(s, row)


@router.post("/projects/{project}/templates", status_code=201, response_model=TemplateOut)
def new_template(project: str, body: TemplateSpec, principal: Member, deps: Deps) -> TemplateOut:
    """The next template version (answers keep the version they answered)."""
    with deps.database.session() as s:
        return projects.template_out(projects.new_template(s, principal.org_id, project, body, actor=principal.key_id))


@router.get("/projects/{project}/templates/{version}", response_model=TemplateOut)
def get_template(project: str, version: int, principal: Reader, deps: Deps) -> TemplateOut:
    """One version of the project's template (the preview)."""
    with deps.database.session(write=False) as s:
        row = projects.get_project(s, principal.org_id, project)
        return projects.template_out(projects.template_of(s, row, version))


@router.post("/projects/{project}/items", status_code=201, response_model=ItemList)
def add_items(project: str, body: ItemsIn, principal: Member, deps: Deps) -> ItemList:
    """Add items (all validated first; a gold answer makes a hidden gold item)."""
    with deps.database.session() as s:
        rows = projects.add_items(s, principal.org_id, project, body.items, actor=principal.key_id)
        ids = {r.id for r in rows}
        return ItemList(data=[i for i in projects.list_items(s, principal.org_id, project, limit=10_000)
                              if i.id in ids])


@router.get("/projects/{project}/items", response_model=ItemList)
def list_items(project: str, principal: Member, deps: Deps, gold: bool | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> ItemList:
    """The project's items with their gold answers (owners only)."""
    with deps.database.session(write=False) as s:
        return ItemList(data=projects.list_items(s, principal.org_id, project, gold=gold, limit=limit))


@router.get("/projects/{project}/answers", response_model=AnswerList)
def list_answers(project: str, principal: Member, deps: Deps, status: str | None = None) -> AnswerList:
    """The project's answers (optionally of one status)."""
    with deps.database.session(write=False) as s:
        return AnswerList(data=[review.answer_out(a) for a in
                                review.list_answers(s, principal.org_id, project, status=status)])


@router.get("/projects/{project}/review", response_model=AnswerList)
def review_queue(project: str, principal: Worker, deps: Deps) -> AnswerList:
    """Answers awaiting review (not the caller's own)."""
    with deps.database.session(write=False) as s:
        rows = review.review_queue(s, principal.org_id, project, principal.user_id, member=_member(principal))
        return AnswerList(data=[review.answer_out(a) for a in rows])


@router.get("/projects/{project}/agreement", response_model=AgreementOut)
def agreement(project: str, principal: Member, deps: Deps) -> AgreementOut:
    """Krippendorff's alpha, pairwise kappas and per-item agreement."""
    with deps.database.session(write=False) as s:
        return results.agreement(s, principal.org_id, project)


@router.post("/projects/{project}/dataset", response_model=DatasetResult)
def build_dataset(project: str, principal: Member, deps: Deps) -> DatasetResult:
    """Aggregate the accepted answers and record the next version of the project's dataset."""
    return results.build_dataset(deps.database, deps.blobs, principal.org_id, project, actor=principal.key_id)


@router.post("/projects/{project}/environment", response_model=EnvPublished)
async def publish_environment(project: str, body: EnvPublish, principal: Member, deps: Deps) -> EnvPublished:
    """Publish the accepted authored tasks as an environment version (``created`` false when unchanged)."""
    return await publish.publish_environment(deps.database, deps.blobs, principal.org_id, project, body,
                                             actor=principal.key_id)


@router.post("/projects/{project}/suggestions", response_model=SuggestionsFilled)
async def fill_suggestions(project: str, body: SuggestionsFill, principal: Member, deps: Deps,
                           serving: ServingDep) -> SuggestionsFilled:
    """Ask a deployment for the suggestion of each item that has none (demonstration and correction projects)."""
    return await joins.fill_suggestions(deps.database, serving, principal, project, body)


@router.post("/projects/{project}/periods", status_code=201, response_model=PeriodOut)
def close_period(project: str, body: PeriodClose, principal: Member, deps: Deps) -> PeriodOut:
    """Close a pay period and post the minimum-hourly-rate top-ups."""
    with deps.database.session() as s:
        row = projects.get_project(s, principal.org_id, project)
        return pay.period_out(pay.close_period(s, principal.org_id, row, body.period, until=body.until,
                                               actor=principal.key_id))


@router.post("/projects/{project}/next", response_model=NextTask)
def next_task(project: str, principal: Worker, deps: Deps) -> NextTask:
    """Lease the next task of the project to the caller (their live lease when they hold one)."""
    with deps.database.session() as s:
        lease = tasks.next_task(s, principal.org_id, principal.user_id, project)
        if lease is None:
            return NextTask(task=None, reason="no task is waiting for you in this project")
        return NextTask(task=tasks.task_out(s, lease))


@router.get("/tasks/{assignment_id}", response_model=TaskOut)
def get_task(assignment_id: str, principal: Worker, deps: Deps) -> TaskOut:
    """One of the caller's tasks."""
    with deps.database.session(write=False) as s:
        return tasks.task_out(s, tasks.get_lease(s, principal.org_id, principal.user_id, assignment_id))


@router.post("/tasks/{assignment_id}/submit", status_code=201, response_model=MyAnswerOut)
def submit(assignment_id: str, body: SubmitBody, principal: Worker, deps: Deps) -> MyAnswerOut:
    """Submit the answer to a leased task."""
    with deps.database.session() as s:
        answer = tasks.submit(s, principal.org_id, principal.user_id, assignment_id, body)
        return next(a for a in tasks.my_answers(s, principal.org_id, principal.user_id) if a.id == answer.id)


@router.post("/tasks/{assignment_id}/release", response_model=TaskOut)
def release(assignment_id: str, principal: Worker, deps: Deps) -> TaskOut:
    """Skip a leased task: it goes back to the queue."""
    with deps.database.session() as s:
        return tasks.task_out(s, tasks.release(s, principal.org_id, principal.user_id, assignment_id))


@router.post("/answers/{answer_id}/review", response_model=AnswerOut)
def review_answer(answer_id: str, body: ReviewBody, principal: Worker, deps: Deps) -> AnswerOut:
    """Accept, fix or reject an answer (a reason is required to reject)."""
    with deps.database.session() as s:
        return review.answer_out(review.review(s, principal.org_id, answer_id, principal.user_id, body,
                                               member=_member(principal), actor=principal.key_id))


@router.post("/answers/{answer_id}/disputes", status_code=201, response_model=DisputeOut)
def open_dispute(answer_id: str, body: DisputeCreate, principal: Worker, deps: Deps) -> DisputeOut:
    """Dispute the gold item one's answer was scored wrong on."""
    with deps.database.session() as s:
        return review.dispute_out(review.open_dispute(s, principal.org_id, principal.user_id, answer_id,
                                                      body.reason))


@router.get("/disputes", response_model=DisputeList)
def list_disputes(principal: Member, deps: Deps, project: str | None = None, status: str | None = None) -> DisputeList:
    """Disputes of gold items (of one project, of one status)."""
    with deps.database.session(write=False) as s:
        rows = review.list_disputes(s, principal.org_id, project_ref=project, status=status)
        return DisputeList(data=[review.dispute_out(d) for d in rows])


@router.post("/disputes/{dispute_id}/resolve", response_model=DisputeOut)
def resolve_dispute(dispute_id: str, body: DisputeResolve, principal: Member, deps: Deps) -> DisputeOut:
    """Uphold (re-scoring every answer on the item) or reject a dispute."""
    with deps.database.session() as s:
        return review.dispute_out(review.resolve_dispute(s, principal.org_id, dispute_id, body,
                                                         actor=principal.key_id))


@router.post("/experts", status_code=201, response_model=ExpertOut)
def add_expert(body: ExpertCreate, principal: Member, deps: Deps) -> ExpertOut:
    """Make a member of the organisation an expert (or update their skills)."""
    with deps.database.session() as s:
        return workforce.expert_out(s, workforce.add_expert(s, principal.org_id, body, actor=principal.key_id))


@router.get("/experts", response_model=ExpertList)
def list_experts(principal: Member, deps: Deps) -> ExpertList:
    """The organisation's experts."""
    with deps.database.session(write=False) as s:
        return ExpertList(data=[workforce.expert_out(s, e) for e in workforce.list_experts(s, principal.org_id)])


@router.get("/experts/{user_id}/quality", response_model=QualityOut)
def expert_quality(user_id: str, principal: Member, deps: Deps, project: str | None = None) -> QualityOut:
    """An expert's gold accuracy (with its Wilson lower bound), reviews and status."""
    with deps.database.session(write=False) as s:
        return review.quality(s, principal.org_id, user_id, project)


@router.put("/exams/{skill}", response_model=ExamOut)
def put_exam(skill: str, body: ExamCreate, principal: Member, deps: Deps) -> ExamOut:
    """Set the qualification exam of a skill (questions with gold answers)."""
    with deps.database.session() as s:
        workforce.put_exam(s, principal.org_id, skill, body, actor=principal.key_id)
        return workforce.exam_for(s, principal.org_id, skill)


@router.get("/exams/{skill}", response_model=ExamOut)
def get_exam(skill: str, principal: Reader, deps: Deps) -> ExamOut:
    """The exam of a skill as an expert sees it (no answers)."""
    with deps.database.session(write=False) as s:
        return workforce.exam_for(s, principal.org_id, skill)


@router.post("/exams/{skill}/attempts", status_code=201, response_model=AttemptOut)
def attempt(skill: str, body: AttemptBody, principal: Worker, deps: Deps) -> AttemptOut:
    """Take the exam; scored against its gold answers (a failed one may be retaken after the cool-down)."""
    with deps.database.session() as s:
        row = workforce.attempt(s, principal.org_id, principal.user_id or "", skill, body.answers)
        return workforce.attempt_out(row, workforce.get_exam(s, principal.org_id, skill))


@router.get("/me", response_model=MeOut)
def me(principal: Worker, deps: Deps, currency: str = "USD") -> MeOut:
    """The caller's expert profile, quality (pause reason included) and earnings."""
    with deps.database.session(write=False) as s:
        row = workforce.get_expert(s, principal.org_id, principal.user_id)
        return MeOut(expert=workforce.expert_out(s, row), quality=review.quality(s, principal.org_id, row.user_id),
                     earnings=pay.earnings(s, principal.org_id, row.user_id, currency))


@router.get("/me/answers", response_model=MyAnswerList)
def my_answers(principal: Worker, deps: Deps) -> MyAnswerList:
    """The caller's answers with their reviews."""
    with deps.database.session(write=False) as s:
        return MyAnswerList(data=tasks.my_answers(s, principal.org_id, principal.user_id))


@router.post("/release", response_model=Released)
def release_due(principal: Member, deps: Deps) -> Released:
    """Move the pay of answers whose review window closed to the experts' payable balances."""
    with deps.database.session() as s:
        return Released(released=pay.release_due(s, principal.org_id))


__all__ = ["router"]

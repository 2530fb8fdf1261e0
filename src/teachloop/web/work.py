"""Expert workforce pages, the expert's side: joining by invitation, exams, the queue, quality and earnings.

Experts are members of the organisation (an invitation with the ``expert`` role, made on
``/work/projects`` by an admin) with an expert profile (``work.workforce``). Every page here needs
a signed-in member *with* a profile in the session's organisation (another organisation's
project, task or exam is the same 404 as a missing one); the rules are ``teachloop.work``'s, this
module only renders them and turns form fields into its request bodies:

- ``/work/join/{token}``: an expert invitation shown (GET uses nothing; any other sign-in link or
  invitation is sent to ``/signin/link/{token}``), then its form's POST uses it once
  (``SigninLinks.consume``: name, password), makes the expert profile with the skills chosen,
  signs in and goes to ``/work``. A refused password or skill leaves the link usable. An expert
  who signs in with a password later lands on ``/work`` too (``overview`` sends them there).
- ``/work``: the expert's status (a paused expert sees why), quality on gold (accuracy and its
  Wilson lower bound, accepted and rejected answers), earnings per currency (pending in the
  review window, available, royalties pending and available), the exams of the organisation's
  skills, the projects to work on, and the expert's recent answers with their reviews. A member
  without a profile is sent to the owner's ``/work/projects``.
- ``/work/exams/{skill}``: the questions (never their answers); the POST scores an attempt
  (``workforce.attempt``; a failed attempt's retake waits for the cool-down, 409 before). An
  unanswered question is refused (400) before anything is stored.
- ``POST /work/answers/{answer}/dispute``: the expert disputes a gold item they were scored wrong
  on (``review.open_dispute``; a reason is required); the owner resolves it on the gold page.
- ``/work/projects/{project}/queue``: a project's instructions and the *Next task* button, whose
  POST leases a task (``tasks.next_task``) and opens ``/work/tasks/{assignment}``; that page's
  form submits the answer (``tasks.submit``) and returns to the queue; *Skip* gives it back
  (``tasks.release``). A refused answer (empty, off the scale, an expired or someone else's
  lease) shows the task again with the message and what was typed, and changes nothing.

Form fields of an answer, per task type: ``reply`` (demonstration, correction), ``choice``
(pairwise), ``rank.<candidate>`` = 1..n (ranked), ``score.<criterion>`` and ``comment`` (rubric),
``prompt``, ``answer`` and ``rubric`` (authoring; one criterion a line); ``active_seconds`` is what
``static/work.js`` tracked. These are the only pages with a script: they send a
Content-Security-Policy that allows ``/static/work.js`` (``SCRIPT_CSP``), which adds the keyboard
shortcuts; every form works without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.tenancy import Role
from teachloop.core.work import (
    AnswerStatus,
    EarningsOut,
    ExpertCreate,
    QualityOut,
    SubmitBody,
    TaskOut,
    TaskType,
    TemplateSpec,
)
from teachloop.store.repos.sessions import ConsoleSessions, SigninLinks
from teachloop.web.auth import SignedIn, Viewer, app_deps, require_csrf, start_session
from teachloop.web.market import money
from teachloop.web.render import CSP, ConsoleRoute, page
from teachloop.web.traces import message_view
from teachloop.work import pay, projects, review, tasks, workforce

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

#: the Content-Security-Policy of the pages that load ``/static/work.js`` (this origin's scripts only)
SCRIPT_CSP = CSP.replace("script-src 'none'", "script-src 'self'")
#: shortcut letters of candidates, in order (``n`` and ``s`` are *next* and *skip*)
LETTERS = "abcdefghijklmopqrtuvw"


async def form_fields(request: Request) -> FormData:
    """The posted form (already read and cached by ``require_csrf``)."""
    return await request.form()


Fields = Annotated[FormData, Depends(form_fields)]


def scripted(response: Response) -> Response:
    """``response`` with the policy that lets it load ``/static/work.js``."""
    response.headers["Content-Security-Policy"] = SCRIPT_CSP
    return response


def letters_of(payload: dict[str, Any]) -> dict[str, str]:
    """Candidate id -> its shortcut letter."""
    return {str(c["id"]): LETTERS[i] for i, c in enumerate(payload.get("candidates") or []) if i < len(LETTERS)}


def task_context(task_type: TaskType, spec: TemplateSpec, payload: dict[str, Any]) -> dict[str, Any]:
    """What ``_work_task.html`` needs besides the values typed so far."""
    return {"task_type": task_type.value, "spec": spec, "payload": payload,
            "prompt": [message_view(m) for m in payload.get("prompt") or []], "letters": letters_of(payload)}


def _field(fields: FormData, name: str) -> str:
    value = fields.get(name)
    return value if isinstance(value, str) else ""


def _whole(raw: str, param: str, what: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise InvalidInput(f"{what} must be a whole number, got {raw!r}", param=param) from None


def answer_value(task_type: TaskType, spec: TemplateSpec, payload: dict[str, Any], fields: FormData) -> dict[str, Any]:
    """The answer value a task's form fields stand for; ``InvalidInput`` naming a field the form left wrong.

    Only the form's own shape is checked here (a choice made, every candidate ranked once, a
    score given to every criterion); what the value means is ``work.values.check_value``'s.
    """
    if task_type in (TaskType.DEMONSTRATION, TaskType.CORRECTION):
        return {"reply": _field(fields, "reply")}
    if task_type is TaskType.PAIRWISE:
        choice = _field(fields, "choice")
        if not choice:
            raise InvalidInput("choose reply A or B before submitting", param="choice")
        return {"choice": choice}
    if task_type is TaskType.RANKED:
        letters = letters_of(payload)
        ranks: dict[str, int] = {}
        for cid, letter in letters.items():
            raw = _field(fields, f"rank.{cid}")
            if not raw.strip():
                raise InvalidInput(f"give reply {letter.upper()} a rank", param=f"rank.{cid}")
            ranks[cid] = _whole(raw, f"rank.{cid}", f"the rank of reply {letter.upper()}")
        if sorted(ranks.values()) != list(range(1, len(ranks) + 1)):
            raise InvalidInput(f"give each reply a different rank from 1 to {len(ranks)}", param="rank")
        return {"order": sorted(ranks, key=lambda c: ranks[c])}
    if task_type is TaskType.RUBRIC:
        scores: dict[str, int] = {}
        for c in spec.criteria:
            raw = _field(fields, f"score.{c.id}")
            if not raw.strip():
                raise InvalidInput(f"score {c.id} ({c.low}–{c.high}) before submitting", param=f"score.{c.id}")
            scores[c.id] = _whole(raw, f"score.{c.id}", f"the score of {c.id}")
        value: dict[str, Any] = {"scores": scores}
        if _field(fields, "comment").strip():
            value["comment"] = _field(fields, "comment")
        return value
    rubric = [line.strip() for line in _field(fields, "rubric").splitlines() if line.strip()]
    return {"prompt": _field(fields, "prompt"), "answer": _field(fields, "answer"), "rubric": rubric}


# ------------------------------------------------------------------------------------------ joining


def _exam_skills(request: Request, org_id: str) -> list[str]:
    with app_deps(request).database.session(write=False) as s:
        return [e.skill for e in workforce.list_exams(s, org_id)]


def _join_page(request: Request, token: str, *, status: int = 200, message: str | None = None) -> Response:
    with app_deps(request).database.session(write=False) as s:
        link = SigninLinks(s).peek(token)
    if link.kind != "invite" or link.role is not Role.EXPERT:  # any other link is used where it always is
        return RedirectResponse(f"/signin/link/{quote(token, safe='')}", status_code=303)
    return page(request, "work_join.html", status=status, link=link, token=token, message=message,
                skills=_exam_skills(request, link.org_id))


@router.get("/work/join/{token}")
def join_form(request: Request, token: str) -> Response:
    """What joining as an expert does, and the form that does it (the link is not used yet)."""
    return _join_page(request, token)


@router.post("/work/join/{token}")
def join(
    request: Request, fields: Fields, token: str,
    name: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    password_again: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Use the invitation once: the membership, the password, the expert profile, a session."""
    skills = [v for v in fields.getlist("skills") if isinstance(v, str)]
    with app_deps(request).database.session(write=False) as s:
        link = SigninLinks(s).peek(token)
    if link.kind != "invite" or link.role is not Role.EXPERT:
        raise InvalidInput("this link is not an expert invitation; open it at /signin/link/", param="token")
    try:
        if password != password_again:
            raise InvalidInput("the two passwords differ", param="password_again")
        for skill in skills:
            workforce.check_skill(skill, "skills")
        with app_deps(request).database.session() as s:
            org_id, user_id = SigninLinks(s).consume(token, password=password or None, name=name)
            workforce.add_expert(s, org_id, ExpertCreate(user_id=user_id, handle=name.strip()[:100], skills=skills),
                                 actor=user_id)
            created = ConsoleSessions(s).create(org_id, user_id)
    except InvalidInput as err:  # the link stays usable: the form again, with what to fix
        return _join_page(request, token, status=400, message=err.message)
    start_session(request, created.token)
    return RedirectResponse("/work", status_code=303)


# ------------------------------------------------------------------------------------------ home


@dataclass(frozen=True)
class ExamState:
    """One of the organisation's exams as the expert stands with it."""

    skill: str
    passed: bool
    retake_after: Any  # datetime | None: when a failed attempt may be retaken
    best: float | None


@dataclass(frozen=True)
class ProjectRow:
    """A project the expert may work on."""

    id: str
    name: str
    title: str
    task_type: str
    skill: str | None
    qualified: bool
    pay: str


def _expert(s: Any, viewer: Viewer) -> Any:
    return workforce.get_expert(s, viewer.principal.org_id, viewer.principal.user_id)


def _exams(s: Any, org_id: str, user_id: str) -> list[ExamState]:
    attempts = workforce.my_attempts(s, org_id, user_id)  # newest first
    out = []
    for exam in workforce.list_exams(s, org_id):
        mine = [a for a in attempts if a.skill == exam.skill]
        out.append(ExamState(exam.skill, any(a.passed for a in mine), mine[0].retake_after if mine else None,
                             max((a.score for a in mine), default=None)))
    return out


def _pay_text(settings: Any) -> str:
    unit = "accepted task" if settings.pay_mode == "task" else "active minute"
    return f"{money(settings.rate, settings.currency)} per {unit}"


@router.get("/work")
def home(request: Request, viewer: SignedIn, done: str = "") -> Response:
    """The expert's status, quality, earnings, exams, projects and recent answers."""
    org, user = viewer.principal.org_id, viewer.principal.user_id
    with app_deps(request).database.session(write=False) as s:
        try:
            expert = workforce.expert_out(s, _expert(s, viewer))
        except NotFound:
            if viewer.can(Role.VIEWER):
                return RedirectResponse("/work/projects", status_code=303)
            raise
        assert user is not None
        quality: QualityOut = review.quality(s, org, user)
        mine = tasks.my_answers(s, org, user, limit=20)
        rows = []
        currencies = {"USD"}
        for p in projects.list_projects(s, org):
            settings = projects.settings_of(p)
            currencies.add(settings.currency)
            if p.status == "open":
                rows.append(ProjectRow(p.id, p.name, p.title, p.task_type, settings.skill,
                                       not settings.skill or settings.skill in expert.qualified, _pay_text(settings)))
        earnings: list[EarningsOut] = [pay.earnings(s, org, user, cur) for cur in sorted(currencies)]
        exams = _exams(s, org, user)
        names = {p.id: p.name for p in rows}
    earnings = [e for e in earnings if e.currency == "USD" or any(
        (e.pending, e.available, e.royalties_pending, e.royalties_available))]
    return page(request, "work_home.html", expert=expert, quality=quality, answers=mine, projects=rows,
                earnings=earnings, exams=exams, names=names, done=done, money=money, statuses=AnswerStatus)


# ------------------------------------------------------------------------------------------ exams


def _exam_page(request: Request, viewer: Viewer, skill: str, *, status: int = 200, message: str | None = None,
               chosen: dict[str, str] | None = None, result: Any = None) -> Response:
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        _expert(s, viewer)
        exam = workforce.exam_for(s, org, skill)
        state = next((e for e in _exams(s, org, viewer.principal.user_id or "") if e.skill == skill), None)
    return scripted(page(request, "work_exam.html", status=status, exam=exam, state=state, message=message,
                         chosen=chosen or {}, result=result))


@router.get("/work/exams/{skill}")
def exam_page(request: Request, viewer: SignedIn, skill: str) -> Response:
    """The exam of a skill: its questions, never their answers."""
    workforce.check_skill(skill)
    return _exam_page(request, viewer, skill)


@router.post("/work/exams/{skill}")
def take_exam(request: Request, viewer: SignedIn, fields: Fields, skill: str) -> Response:
    """Score an attempt at the exam (every question answered)."""
    workforce.check_skill(skill)
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as s:
        _expert(s, viewer)
        exam = workforce.exam_for(s, org, skill)
    chosen = {q.id: _field(fields, f"q.{q.id}") for q in exam.questions}
    missing = [i + 1 for i, q in enumerate(exam.questions) if not chosen[q.id]]
    if missing:
        message = f"answer every question before submitting: question {', '.join(map(str, missing))} has no answer"
        return _exam_page(request, viewer, skill, status=400, message=message, chosen=chosen)
    with app_deps(request).database.session() as s:
        row = workforce.attempt(s, org, viewer.principal.user_id or "", skill, chosen)
        result = workforce.attempt_out(row, workforce.get_exam(s, org, skill))
    return _exam_page(request, viewer, skill, result=result)


# ------------------------------------------------------------------------------------------ the queue


@router.get("/work/projects/{project}/queue")
def queue(request: Request, viewer: SignedIn, project: str, done: str = "") -> Response:
    """A project's instructions and the button that leases the next task."""
    org, user = viewer.principal.org_id, viewer.principal.user_id
    with app_deps(request).database.session(write=False) as s:
        expert = workforce.expert_out(s, _expert(s, viewer))
        row = projects.get_project(s, org, project)
        settings = projects.settings_of(row)
        spec = projects.spec_of(projects.template_of(s, row))
        answered = len(tasks.my_answers(s, org, user, limit=10_000, project_ref=row.id))
    return scripted(page(request, "work_queue.html", project=row, spec=spec, expert=expert, answered=answered,
                         pay=_pay_text(settings), done=done,
                         qualified=not settings.skill or settings.skill in expert.qualified, skill=settings.skill))


@router.post("/work/projects/{project}/next")
def next_task(request: Request, viewer: SignedIn, project: str) -> Response:
    """Lease the next task of the project and open it (back to the queue page when none waits)."""
    org = viewer.principal.org_id
    with app_deps(request).database.session() as s:
        row = projects.get_project(s, org, project)
        lease = tasks.next_task(s, org, viewer.principal.user_id, row.id)
        target = (f"/work/tasks/{lease.id}" if lease is not None
                  else f"/work/projects/{row.id}/queue?done=empty")
    return RedirectResponse(target, status_code=303)


def _task_page(request: Request, task: TaskOut, *, status: int = 200, message: str | None = None,
               values: dict[str, str] | None = None) -> Response:
    context = task_context(task.task_type, task.template, task.payload)
    return scripted(page(request, "work_task.html", status=status, task=task, message=message, values=values or {},
                         preview=False, **context))


def _task(request: Request, viewer: Viewer, assignment_id: str) -> TaskOut:
    with app_deps(request).database.session(write=False) as s:
        lease = tasks.get_lease(s, viewer.principal.org_id, viewer.principal.user_id, assignment_id)
        return tasks.task_out(s, lease)


@router.get("/work/tasks/{assignment_id}")
def task_page(request: Request, viewer: SignedIn, assignment_id: str) -> Response:
    """One leased task and its answer form (the expert's own lease only)."""
    task = _task(request, viewer, assignment_id)
    with app_deps(request).database.session(write=False) as s:
        lease = tasks.get_lease(s, viewer.principal.org_id, viewer.principal.user_id, assignment_id)
        if lease.status != "leased":
            return RedirectResponse(f"/work/projects/{task.project_id}/queue?done={lease.status}", status_code=303)
    return _task_page(request, task)


@router.post("/work/tasks/{assignment_id}/submit")
def submit(request: Request, viewer: SignedIn, fields: Fields, assignment_id: str) -> Response:
    """Submit the answer; a refused one shows the task again with the message and what was typed."""
    task = _task(request, viewer, assignment_id)
    typed = {k: v for k, v in fields.items() if isinstance(v, str) and k != "csrf_token"}
    try:
        value = answer_value(task.task_type, task.template, task.payload, fields)
        active = _whole(_field(fields, "active_seconds") or "0", "active_seconds", "active_seconds")
        body = SubmitBody(value=value, active_seconds=max(0, min(active, 86_400)))
        with app_deps(request).database.session() as s:
            tasks.submit(s, viewer.principal.org_id, viewer.principal.user_id, assignment_id, body)
    except InvalidInput as err:
        return _task_page(request, task, status=400, message=err.message, values=typed)
    # the same answer for a gold item as for any other: the expert never learns which were gold
    return RedirectResponse(f"/work/projects/{task.project_id}/queue?done=submitted", status_code=303)


@router.post("/work/tasks/{assignment_id}/skip")
def skip(request: Request, viewer: SignedIn, assignment_id: str) -> Response:
    """Give the task back unanswered (it returns to the queue for other experts)."""
    with app_deps(request).database.session() as s:
        lease = tasks.release(s, viewer.principal.org_id, viewer.principal.user_id, assignment_id)
        project = lease.project_id
    return RedirectResponse(f"/work/projects/{project}/queue?done=skipped", status_code=303)


@router.post("/work/answers/{answer_id}/dispute")
def dispute(request: Request, viewer: SignedIn, answer_id: str,
            reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """Dispute the gold item one's answer was scored wrong on (the owner resolves it on the gold page)."""
    with app_deps(request).database.session() as s:
        review.open_dispute(s, viewer.principal.org_id, viewer.principal.user_id, answer_id, reason)
    return RedirectResponse("/work?done=disputed", status_code=303)


__all__ = ["LETTERS", "SCRIPT_CSP", "answer_value", "letters_of", "router", "scripted", "task_context"]

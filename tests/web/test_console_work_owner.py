"""The owner's project actions in process: a project from a marketplace data request, a new template version,
settings, a pay period closed and an expert paid out, model suggestions from a deployment (the echo engine
behind the console's ``Serving``) and authored tasks published as an environment version.

Over ``conftest.py``'s world plus ``work_world.seed_work``. Each action is checked in the store afterwards;
refused posts (no CSRF token, bad form input, too low a role, another organisation's object) change nothing
and say what is wrong; the stored-XSS probe shows as text.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from markupsafe import escape
from sqlalchemy import func, select

from teachloop.core.requests import RequestCreate
from teachloop.core.work import ReviewBody, SubmitBody, TaskType
from teachloop.ledger import Ledger
from teachloop.market.requests import DataRequests
from teachloop.store import Database
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.environments import EnvironmentVersion
from teachloop.store.schema.work import WorkItem, WorkPayPeriod, WorkProject, WorkTemplate
from teachloop.work import pay, projects, review, tasks, workforce
from tests.web.conftest import BASE, XSS, World, post_form
from tests.web.work_world import EXAM, RATE, SKILL, seed_work, signed_in

ESCAPED = str(escape(XSS))


def _count(database: Database, table: Any, *where: Any) -> int:
    with database.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def _settings(database: Database, org: str, project: str) -> Any:
    with database.session(write=False) as s:
        return projects.settings_of(projects.get_project(s, org, project))


def test_a_project_from_a_marketplace_request(client: Any, world: World, database: Database) -> None:
    with database.session() as s:
        public = DataRequests(s).post(world.globex.id, RequestCreate(
            title=f"Support replies {XSS}", description="Polite answers to angry customers."), actor="test").id
        private = DataRequests(s).post(world.globex.id, RequestCreate(
            title="gx-private-request", description="d", visibility="private"), actor="test").id
    signed_in(client, database, world.acme.id, world.acme.member)
    form = client.get("/work/projects/new")
    assert form.status_code == 200 and ESCAPED in form.text and XSS not in form.text and "gx-private-request" not in form.text
    fields = {"name": "from-request", "task_type": "demonstration", "source": "request", "quorum": "1"}
    before = _count(database, WorkProject)
    missing = post_form(client, "/work/projects/new", "/work/projects", fields)
    assert missing.status_code == 400 and "choose the data request" in missing.text
    for other in (private, "dreq_00000000000000000000000000"):  # another organisation's private one is a missing one
        out = post_form(client, "/work/projects/new", "/work/projects", {**fields, "source_request": other})
        assert out.status_code == 404, out.text
    assert _count(database, WorkProject) == before
    out = post_form(client, "/work/projects/new", "/work/projects", {**fields, "source_request": public})
    assert out.status_code == 303, out.text
    with database.session(write=False) as s:
        row = projects.get_project(s, world.acme.id, "from-request")
        spec = projects.spec_of(projects.template_of(s, row))
        assert row.fulfils == public and "Polite answers to angry customers." in spec.instructions
    page = client.get(out.headers["location"])
    assert page.status_code == 200 and ESCAPED in page.text and XSS not in page.text


def test_the_owner_edits_the_template_and_the_settings(client: Any, world: World, database: Database) -> None:
    work = seed_work(database, world)
    rubric, gx = work.projects[TaskType.RUBRIC], "wprj_00000000000000000000000000"
    signed_in(client, database, world.acme.id, world.acme.member)
    page = f"/work/projects/{rubric}"
    shown = client.get(page)
    assert shown.status_code == 200 and "clarity 1-5 Is the reply clear?" in shown.text
    out = post_form(client, page, f"{page}/templates", {"instructions": XSS, "criteria": "tone 1-3 Is it kind?"})
    assert out.status_code == 303 and out.headers["location"].endswith("done=template-v2"), out.text
    shown = client.get(page)
    assert ESCAPED in shown.text and XSS not in shown.text and "Template v2" in shown.text
    for bad in ({"criteria": "tone one-three kind"}, {"criteria": ""}):  # unreadable; a rubric needs a criterion
        assert post_form(client, page, f"{page}/templates", bad).status_code == 400
    assert client.post(f"{page}/templates", data={"criteria": "a 1-2 b"}).status_code == 403  # no CSRF token
    assert _count(database, WorkTemplate, WorkTemplate.project_id == rubric) == 2
    before = _settings(database, world.acme.id, rubric)
    out = post_form(client, page, f"{page}/settings", {"quorum": "2", "rate": "300", "currency": "eur",
                                                       "show_suggestions": "1", "reviewers": "u1, u2"})
    assert out.status_code == 303, out.text
    after = _settings(database, world.acme.id, rubric)
    assert (after.quorum, after.rate, after.currency, after.show_suggestions, after.reviewers) == (
        2, 300, "EUR", True, ["u1", "u2"])
    assert (after.aggregation, after.license, after.rubric_min_score) == (
        before.aggregation, before.license, before.rubric_min_score)  # what the form does not show stays
    for bad, param in (({"quorum": "two"}, "quorum"), ({"gold_share": "0.9"}, "gold_share")):
        out = post_form(client, page, f"{page}/settings", bad)
        assert out.status_code == 400 and param in out.text, out.text
    assert _settings(database, world.acme.id, rubric) == after
    assert post_form(client, page, f"/work/projects/{gx}/settings", {"quorum": "1"}).status_code == 404
    signed_in(client, database, world.acme.id, world.acme.viewer)
    assert post_form(client, page, f"{page}/settings", {"quorum": "5"}).status_code == 403
    assert _settings(database, world.acme.id, rubric) == after


def test_a_pay_period_is_closed_and_an_expert_paid_out(client: Any, world: World, database: Database) -> None:
    work = seed_work(database, world)
    demo, ada, org = work.projects[TaskType.DEMONSTRATION], work.experts["ada"], world.acme.id
    now = utc_now()
    with database.session() as s:  # a minimum hourly rate well above the task rate; ada works 100 s, accepted
        row = projects.get_project(s, org, demo)
        projects.update_settings(s, org, demo, projects.settings_of(row).model_copy(update={"min_hourly": 60_000}))
        workforce.attempt(s, org, ada, SKILL, {q.id: q.answer for q in EXAM.questions})
        lease = tasks.next_task(s, org, ada, demo, now=now - timedelta(seconds=120))
        assert lease is not None
        answer = tasks.submit(s, org, ada, lease.id, SubmitBody(value={"reply": "Hello"}, active_seconds=100))
        review.review(s, org, answer.id, None, ReviewBody(decision="accept"), member=True)  # type: ignore[arg-type]
    signed_in(client, database, org, world.acme.member)
    page = f"/work/projects/{demo}"
    for bad, status in (({"period": "week one"}, 400), ({"period": "w1", "until": "yesterday"}, 400),
                        ({"period": "w1", "until": "2099-01-01T00:00"}, 400)):
        assert post_form(client, page, f"{page}/periods", bad).status_code == status
    assert _count(database, WorkPayPeriod) == 0
    out = post_form(client, page, f"{page}/periods", {"period": "w1"})
    assert out.status_code == 303 and "period-w1-closed-1-top-ups" in out.headers["location"], out.text
    with database.session(write=False) as s:
        topup = pay.list_periods(s, org, projects.get_project(s, org, demo))[0].topups[ada]
        assert topup == 60_000 * 100 // 3600 - RATE  # 100 active seconds at the minimum rate, less the task pay
    shown = client.get(page)
    assert "w1" in shown.text and 'id="periods"' in shown.text
    assert post_form(client, page, f"{page}/periods", {"period": "w1"}).status_code == 409  # closed once
    with database.session() as s:  # the review window of the accepted answers closes
        pay.release_due(s, org, now=utc_now() + timedelta(days=3650))
        payable = pay.earnings(s, org, ada).available
    assert payable == topup + RATE
    assert post_form(client, "/work/projects", "/work/experts/payouts", {"expert": ada}).status_code == 403  # member
    signed_in(client, database, org, world.acme.admin)
    for bad, status in (({"expert": "usr_nobody"}, 404), ({"expert": ada, "currency": "US"}, 400),
                        ({"expert": ada, "batch": "two words"}, 400)):
        assert post_form(client, "/work/projects", "/work/experts/payouts", bad).status_code == status
    with database.session(write=False) as s:
        assert pay.earnings(s, org, ada).available == payable
    out = post_form(client, "/work/projects", "/work/experts/payouts", {"expert": ada, "batch": "b1"})
    assert out.status_code == 303 and "paid-" in out.headers["location"], out.text
    with database.session(write=False) as s:
        assert pay.earnings(s, org, ada).available == 0 and Ledger(s).check().ok
    again = post_form(client, "/work/projects", "/work/experts/payouts", {"expert": ada, "batch": "b1"})
    assert "nothing-payable" in again.headers["location"]


def test_suggestions_and_an_environment_from_the_project_page(client: Any, world: World, database: Database) -> None:
    work = seed_work(database, world, answered=True)
    org, demo, authoring = world.acme.id, work.projects[TaskType.DEMONSTRATION], work.projects[TaskType.AUTHORING]
    signed_in(client, database, org, world.acme.member)
    page = f"/work/projects/{demo}"
    assert "Fill suggestions" in client.get(page).text
    assert post_form(client, page, f"{page}/suggestions", {"deployment": "no-such"}).status_code == 404
    assert post_form(client, page, f"{page}/suggestions", {"deployment": BASE, "limit": "0"}).status_code == 400
    pair_page = f"/work/projects/{work.projects[TaskType.PAIRWISE]}"
    assert post_form(client, pair_page, f"{pair_page}/suggestions", {"deployment": BASE}).status_code == 400
    with database.session(write=False) as s:
        assert [i.payload.get("suggestion") for i in s.scalars(select(WorkItem))] == [None] * _count(database, WorkItem)
    out = post_form(client, page, f"{page}/suggestions", {"deployment": BASE})
    assert out.status_code == 303 and "suggestions-1-filled-0-refused-0-left" in out.headers["location"], out.text
    with database.session(write=False) as s:  # the echo engine replied with the item's prompt: stored as given
        item = s.scalars(select(WorkItem).where(WorkItem.project_id == demo)).one()
        assert item.payload["suggestion"] == {"reply": XSS}
    ada = work.experts["ada"]
    with database.session() as s:  # ada (who passed the exam) writes a task; a member accepts it
        lease = tasks.next_task(s, org, ada, authoring)
        assert lease is not None
        answer = tasks.submit(s, org, ada, lease.id, SubmitBody(value={
            "prompt": "How many centimetres are in a metre?", "answer": "100", "rubric": ["the number 100"]}))
        review.review(s, org, answer.id, None, ReviewBody(decision="accept"), member=True)  # type: ignore[arg-type]
    page = f"/work/projects/{authoring}"
    assert "Publish the environment" in client.get(page).text
    assert post_form(client, page, f"{page}/environment", {"version": "v1"}).status_code == 400
    assert post_form(client, pair_page, f"{pair_page}/environment", {}).status_code == 400
    assert _count(database, EnvironmentVersion, EnvironmentVersion.name == "units") == 0
    out = post_form(client, page, f"{page}/environment", {"name": "units"})
    assert out.status_code == 303 and "environment-units%401.0.0-published" in out.headers["location"], out.text
    with database.session(write=False) as s:
        assert s.scalars(select(EnvironmentVersion.version).where(EnvironmentVersion.org_id == org,
                                                                  EnvironmentVersion.name == "units")).all() == ["1.0.0"]

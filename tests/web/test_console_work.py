"""The expert workforce pages in process: joining, exams, the queue, review, gold, project setup.

Over the seeded world of ``conftest.py`` plus ``work_world.seed_work`` (acme runs one project per
task type; ada and bob answered the pairwise items; carol is an expert who has not taken the
exam). Each test checks what the store holds afterwards: refused posts (no CSRF token, bad form
input, another organisation, someone else's task, a paused expert) change nothing and say
precisely what is wrong; the stored-XSS probe in a project's title and an item's prompt shows as
text; no page answers a gold answer to an expert; the script-enabled policy is sent only by the
pages that load ``/static/work.js``.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import func, select

from teachloop.core.tenancy import Role
from teachloop.core.work import TaskType
from teachloop.ledger import Ledger
from teachloop.store import Database
from teachloop.store.repos.sessions import SigninLinks
from teachloop.store.schema.ledger import LedgerEntry
from teachloop.store.schema.work import (
    WorkAnswer,
    WorkAssignment,
    WorkExamAttempt,
    WorkExpert,
    WorkItem,
    WorkProject,
)
from teachloop.web.render import CSP
from teachloop.web.work import SCRIPT_CSP
from teachloop.work import pay, projects, workforce
from tests.web.conftest import PASSWORD, XSS, World, csrf_of, post_form
from tests.web.work_world import CORRECTION_REPLY, EXAM, RATE, SKILL, Work, seed_work, signed_in

ESCAPED = str(escape(XSS))
_TASK = re.compile(r"/work/tasks/(wasg_[0-9a-zA-Z]+)")


def _counts(database: Database) -> tuple[int, ...]:
    with database.session(write=False) as s:
        return tuple(int(s.scalar(select(func.count()).select_from(t)) or 0)
                     for t in (WorkAnswer, WorkAssignment, WorkExamAttempt, WorkProject, WorkItem, WorkExpert,
                               LedgerEntry))


def _pass_exam(client: Any) -> None:
    answers = {f"q.{q.id}": q.answer for q in EXAM.questions}
    out = post_form(client, f"/work/exams/{SKILL}", f"/work/exams/{SKILL}", answers)
    assert out.status_code == 200 and "Passed with 100 %" in out.text, out.text


def _lease(client: Any, project: str) -> str:
    out = post_form(client, f"/work/projects/{project}/queue", f"/work/projects/{project}/next", {})
    assert out.status_code == 303, out.text
    found = _TASK.search(out.headers["location"])
    assert found, out.headers["location"]
    return found.group(1)


def _expert_client(client: Any, work: Work, database: Database, org: str) -> Any:
    signed_in(client, database, org, work.carol)
    _pass_exam(client)
    return client


def test_an_invitation_makes_an_expert_who_lands_on_their_work(client: Any, world: World,
                                                                database: Database) -> None:
    seed_work(database, world)
    signed_in(client, database, world.acme.id, world.acme.admin)
    created = post_form(client, "/work/projects", "/work/experts/invitations", {"email": "dora@acme.test"})
    assert created.status_code == 201
    url = re.search(r'value="(http://[^"]+/work/join/[^"]+)"', created.text)
    assert url, "the invitation link is not shown"
    path = url.group(1).split("testserver", 1)[1]
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as guest:
        shown = guest.get(path)
        assert shown.status_code == 200 and "Join acme as an expert" in shown.text and SKILL in shown.text
        before = _counts(database)
        bad = guest.post(path, data={"name": "Dora", "password": "short", "password_again": "short",
                                     "csrf_token": csrf_of(shown.text)})
        assert bad.status_code == 400 and "password" in bad.text.lower() and _counts(database) == before
        bad = guest.post(path, data={"name": "Dora", "password": PASSWORD, "password_again": PASSWORD,
                                     "skills": "no spaces allowed", "csrf_token": csrf_of(shown.text)})
        assert bad.status_code == 400 and "invalid skill" in bad.text and _counts(database) == before
        joined = guest.post(path, data={"name": "Dora", "password": PASSWORD, "password_again": PASSWORD,
                                        "skills": SKILL, "csrf_token": csrf_of(shown.text)})
        assert joined.status_code == 303 and joined.headers["location"] == "/work"
        home = guest.get("/work")
        assert home.status_code == 200 and f"Take the {SKILL} exam" in home.text
        assert guest.get("/traces").status_code == 403  # an expert reads no tenant data
        assert guest.get("/work/projects").status_code == 403
        assert 'href="/traces"' not in home.text and 'href="/work"' in home.text  # the nav shows only Work
        assert guest.get(path).status_code == 410  # used once
        assert guest.post(path, data={"password": PASSWORD, "password_again": PASSWORD,
                                      "csrf_token": csrf_of(home.text)}).status_code == 410
        assert guest.get("/").headers["location"] == "/work"  # an expert's home is their work
    with database.session(write=False) as s:
        expert = s.scalar(select(WorkExpert).where(WorkExpert.handle == "Dora"))
        assert expert is not None and expert.skills == [SKILL] and expert.org_id == world.acme.id
    with database.session() as s:
        member = SigninLinks(s).create_invite(world.acme.id, "max@acme.test", Role.MEMBER, actor="test").token
    assert client.get(f"/work/join/{member}").headers["location"] == f"/signin/link/{member}"


def test_exam_refuses_unanswered_and_gates_the_queue(client: Any, world: World, database: Database) -> None:
    work = seed_work(database, world)
    signed_in(client, database, world.acme.id, work.carol)
    demo = work.projects[TaskType.DEMONSTRATION]
    before = _counts(database)
    gated = post_form(client, f"/work/projects/{demo}/queue", f"/work/projects/{demo}/next", {})
    assert gated.status_code == 403 and f"needs the {SKILL} qualification" in gated.text
    shown = client.get(f"/work/exams/{SKILL}")
    assert shown.status_code == 200 and shown.headers["content-security-policy"] == SCRIPT_CSP
    assert "An apology for the trouble" in shown.text and 'src="/static/work.js"' in shown.text
    partial = client.post(f"/work/exams/{SKILL}", data={"q.tone": EXAM.questions[0].answer,
                                                        "csrf_token": csrf_of(shown.text)})
    assert partial.status_code == 400 and "question 2 has no answer" in partial.text
    off = client.post(f"/work/exams/{SKILL}", data={"q.tone": "Something else", "q.facts": "Guess confidently",
                                                    "csrf_token": csrf_of(shown.text)})
    assert off.status_code == 400 and "must be one of its options" in off.text
    assert _counts(database) == before
    failed = client.post(f"/work/exams/{SKILL}", data={"q.tone": "Our refund policy", "q.facts": "Guess confidently",
                                                       "csrf_token": csrf_of(shown.text)})
    assert failed.status_code == 200 and "Not passed: 0 %" in failed.text and "retake it after" in failed.text
    again = client.post(f"/work/exams/{SKILL}", data={f"q.{q.id}": q.answer for q in EXAM.questions}
                        | {"csrf_token": csrf_of(shown.text)})
    assert again.status_code == 409 and "retake" in again.text  # the cool-down


def test_each_task_type_submits_from_its_form_and_bad_input_changes_nothing(client: Any, world: World,
                                                                             database: Database) -> None:
    work = seed_work(database, world)
    _expert_client(client, work, database, world.acme.id)
    forms: dict[TaskType, tuple[dict[str, str], dict[str, str], str]] = {
        TaskType.DEMONSTRATION: ({"reply": "   "}, {"reply": XSS}, "value.reply is empty"),
        TaskType.CORRECTION: ({"reply": CORRECTION_REPLY}, {"reply": "The capital of Australia is Canberra."},
                              "identical to the model's reply"),
        TaskType.PAIRWISE: ({}, {"choice": "b"}, "choose reply A or B"),
        TaskType.RANKED: ({"rank.x": "1", "rank.y": "1", "rank.z": "2"}, {"rank.x": "3", "rank.y": "2", "rank.z": "1"},
                          "a different rank from 1 to 3"),
        TaskType.RUBRIC: ({"score.clarity": "7", "score.accuracy": "3"}, {"score.clarity": "4", "score.accuracy": "5"},
                          "value.scores.clarity is 7, off its scale 1-5"),
        TaskType.AUTHORING: ({"prompt": "Convert 3 km to m.", "answer": ""},
                             {"prompt": "Convert 3 km to m.", "answer": "3000 m", "rubric": "states the unit\nis exact"},
                             "value.answer is empty"),
    }
    expected = {TaskType.DEMONSTRATION: {"reply": XSS},
                TaskType.CORRECTION: {"reply": "The capital of Australia is Canberra."},
                TaskType.PAIRWISE: {"choice": "b"}, TaskType.RANKED: {"order": ["z", "y", "x"]},
                TaskType.RUBRIC: {"scores": {"clarity": 4, "accuracy": 5}},
                TaskType.AUTHORING: {"prompt": "Convert 3 km to m.", "answer": "3000 m",
                                     "rubric": ["states the unit", "is exact"]}}
    for task_type, (bad, good, message) in forms.items():
        project = work.projects[task_type]
        task = _lease(client, project)
        shown = client.get(f"/work/tasks/{task}")
        assert shown.status_code == 200 and shown.headers["content-security-policy"] == SCRIPT_CSP
        assert XSS not in shown.text  # the project title's probe (and the demonstration prompt's) are escaped
        before = _counts(database)
        refused = client.post(f"/work/tasks/{task}/submit", data={**bad, "csrf_token": csrf_of(shown.text)})
        assert refused.status_code == 400 and str(escape(message)) in refused.text, (task_type, refused.text[-2000:])
        assert _counts(database) == before, task_type
        if task_type is TaskType.CORRECTION:
            assert str(escape(CORRECTION_REPLY)) in refused.text  # what was typed is kept
        assert client.post(f"/work/tasks/{task}/submit", data=good).status_code == 403  # no CSRF token
        done = client.post(f"/work/tasks/{task}/submit",
                           data={**good, "active_seconds": "12", "csrf_token": csrf_of(shown.text)})
        assert done.status_code == 303 and done.headers["location"].endswith("?done=submitted"), done.text
        with database.session(write=False) as s:
            answer = s.scalar(select(WorkAnswer).where(WorkAnswer.assignment_id == task))
            assert answer is not None and answer.value == expected[task_type] and answer.status == "submitted"
        again = post_form(client, f"/work/projects/{project}/queue", f"/work/tasks/{task}/submit", good)
        assert again.status_code == 409 and "take the next task" in again.text  # used once
    demo = client.get(f"/work/projects/{work.projects[TaskType.DEMONSTRATION]}/queue?done=submitted")
    assert "Submitted. Press N for the next task." in demo.text


def test_skip_returns_the_task_and_another_experts_task_is_refused(client: Any, world: World,
                                                                   database: Database) -> None:
    work = seed_work(database, world)
    _expert_client(client, work, database, world.acme.id)
    demo = work.projects[TaskType.DEMONSTRATION]
    task = _lease(client, demo)
    skipped = post_form(client, f"/work/tasks/{task}", f"/work/tasks/{task}/skip", {})
    assert skipped.status_code == 303 and skipped.headers["location"].endswith("done=skipped")
    with database.session(write=False) as s:
        assert s.get(WorkAssignment, task).status == "released"  # type: ignore[union-attr]
    mine = _lease(client, demo)
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as owner:
        signed_in(owner, database, world.acme.id, world.acme.owner)
        before = _counts(database)
        assert owner.get(f"/work/tasks/{mine}").status_code == 403  # not theirs
        with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as other:
            signed_in(other, database, world.globex.id, world.globex.owner)
            assert other.get(f"/work/tasks/{mine}").status_code == 404  # another organisation's: not found
            assert other.get(f"/work/projects/{demo}").status_code == 404
            assert other.get(f"/work/projects/{demo}/gold").status_code == 404
            assert post_form(other, "/work/projects", f"/work/projects/{demo}/items",
                             {"items": '{"prompt": [{"role": "user", "content": "x"}]}'}).status_code == 404
        assert _counts(database) == before


def test_a_paused_expert_sees_why_and_gets_no_work(client: Any, world: World, database: Database) -> None:
    work = seed_work(database, world)
    _expert_client(client, work, database, world.acme.id)
    with database.session() as s:
        workforce.pause(s, workforce.get_expert(s, world.acme.id, work.experts["carol"]),
                        f"too many gold answers wrong {XSS}")
    home = client.get("/work")
    assert "You are paused and get no new tasks" in home.text and str(escape(f"too many gold answers wrong {XSS}")) in home.text
    demo = work.projects[TaskType.DEMONSTRATION]
    before = _counts(database)
    refused = post_form(client, f"/work/projects/{demo}/queue", f"/work/projects/{demo}/next", {})
    assert refused.status_code == 403 and "you are paused" in refused.text
    assert _counts(database) == before


def test_review_accepts_pays_the_rate_and_rejects_with_a_reason(client: Any, world: World,
                                                                 database: Database) -> None:
    work = seed_work(database, world)
    _expert_client(client, work, database, world.acme.id)
    answers = {}
    for task_type, value in ((TaskType.DEMONSTRATION, {"reply": "Use the reset link."}),
                             (TaskType.CORRECTION, {"reply": "It is Canberra."}),
                             (TaskType.RUBRIC, {"score.clarity": "2", "score.accuracy": "2"})):
        task = _lease(client, work.projects[task_type])
        shown = client.get(f"/work/tasks/{task}")
        client.post(f"/work/tasks/{task}/submit", data={**value, "csrf_token": csrf_of(shown.text)})
        with database.session(write=False) as s:
            answers[task_type] = s.scalar(select(WorkAnswer.id).where(WorkAnswer.assignment_id == task))
    carol = work.experts["carol"]

    def pending() -> int:
        with database.session(write=False) as s:
            ledger = Ledger(s)
            return -ledger.balance(world.acme.id, pay.expert_account(ledger, world.acme.id, carol, "pending", "USD"))

    assert client.get(f"/work/projects/{work.projects[TaskType.DEMONSTRATION]}/review").status_code == 403
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as reviewer:
        signed_in(reviewer, database, world.acme.id, world.acme.member)
        demo = work.projects[TaskType.DEMONSTRATION]
        page = reviewer.get(f"/work/projects/{demo}/review")
        assert page.status_code == 200 and "Use the reset link." in page.text and ESCAPED in page.text
        before, paid = _counts(database), pending()
        for data, message in (({"decision": "maybe"}, "decision must be accept, fix or reject"),
                              ({"decision": "reject", "reason": "  "}, "a rejection needs a reason"),
                              ({"decision": "fix", "fixed_reply": ""}, "value.reply is empty")):
            bad = post_form(reviewer, f"/work/projects/{demo}/review",
                            f"/work/answers/{answers[TaskType.DEMONSTRATION]}/review", data)
            assert bad.status_code == 400 and message in bad.text, bad.text
        assert _counts(database) == before and pending() == paid == 0
        ok = post_form(reviewer, f"/work/projects/{demo}/review",
                       f"/work/answers/{answers[TaskType.DEMONSTRATION]}/review", {"decision": "accept"})
        assert ok.status_code == 303 and pending() == RATE
        corr = work.projects[TaskType.CORRECTION]
        assert "-The capital of Australia is Sydney." in reviewer.get(f"/work/projects/{corr}/review").text  # the diff
        no = post_form(reviewer, f"/work/projects/{corr}/review", f"/work/answers/{answers[TaskType.CORRECTION]}/review",
                       {"decision": "reject", "reason": f"too short {XSS}"})
        assert no.status_code == 303 and pending() == RATE  # a rejection pays nothing
        twice = post_form(reviewer, f"/work/projects/{corr}/review",
                          f"/work/answers/{answers[TaskType.CORRECTION]}/review", {"decision": "accept"})
        assert twice.status_code == 409
        rub = work.projects[TaskType.RUBRIC]
        action = f"/work/answers/{answers[TaskType.RUBRIC]}/review"
        off = post_form(reviewer, f"/work/projects/{rub}/review", action,
                        {"decision": "fix", "fixed_json": '{"scores": {"clarity": 9, "accuracy": 4}}'})
        assert off.status_code == 400 and "value.scores.clarity is 9, off its scale 1-5" in off.text
        assert pending() == RATE
        fixed = post_form(reviewer, f"/work/projects/{rub}/review", action,
                          {"decision": "fix", "fixed_json": '{"scores": {"clarity": 4, "accuracy": 4}}'})
        assert fixed.status_code == 303 and pending() == 2 * RATE  # a fixed answer is paid like an accepted one
    home = client.get("/work").text
    assert "2.50 USD" in home and str(escape(f"too short {XSS}")) in home and "rejected" in home
    with database.session(write=False) as s:
        assert Ledger(s).check().ok
        rubric = s.get(WorkAnswer, answers[TaskType.RUBRIC])
        assert rubric is not None and rubric.status == "fixed"
        assert rubric.fixed_value == {"scores": {"clarity": 4, "accuracy": 4}}


def test_project_setup_previews_validates_and_creates(client: Any, world: World, database: Database) -> None:
    seed_work(database, world)
    signed_in(client, database, world.acme.id, world.acme.member)
    form = {"name": "grading", "title": XSS, "task_type": "rubric", "instructions": f"Grade it. {XSS}",
            "criteria": "clarity 1-5 Is it clear?\nfacts 0-3 Are the facts right?", "quorum": "2",
            "gold_share": "0.2", "lease_seconds": "600", "rate": "50", "currency": "usd", "review_window_days": "1",
            "source": "manual"}
    before = _counts(database)
    shown = post_form(client, "/work/projects/new", "/work/projects/preview", form)
    assert shown.status_code == 200 and "Preview: a rubric task" in shown.text
    assert "Is it clear?" in shown.text and 'data-n="5"' in shown.text and ESCAPED in shown.text
    assert XSS not in shown.text and _counts(database) == before
    for field, value, message in (("criteria", "clarity 5-1 backwards", "low (5) must be below high (1)"),
                                  ("criteria", "clarity five Is it clear?", "criteria line 1: write 'id low-high"),
                                  ("quorum", "three", "quorum must be a whole number"),
                                  ("gold_share", "0.9", "settings.gold_share"),
                                  ("task_type", "poetry", "task_type must be one of"),
                                  ("source_filter", "{not json", "source_filter is not valid JSON"),
                                  ("name", "", "name")):
        bad = post_form(client, "/work/projects/new", "/work/projects", {**form, field: value})
        assert bad.status_code == 400 and str(escape(message)) in bad.text, (field, bad.text[-1500:])
        assert 'value="grading"' in bad.text or field == "name"  # the form keeps what was typed
    assert _counts(database) == before
    made = post_form(client, "/work/projects/new", "/work/projects", form)
    assert made.status_code == 303
    with database.session(write=False) as s:
        row = s.scalar(select(WorkProject).where(WorkProject.name == "grading"))
        assert row is not None and row.org_id == world.acme.id and row.title == XSS
        assert row.settings["quorum"] == 2 and row.settings["review_window_s"] == 86_400
        assert row.settings["currency"] == "USD"
    page = client.get(made.headers["location"])
    assert page.status_code == 200 and ESCAPED in page.text and XSS not in page.text
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as viewer:
        signed_in(viewer, database, world.acme.id, world.acme.viewer)
        assert viewer.get("/work/projects/new").status_code == 403
        assert post_form(viewer, "/work/projects", "/work/projects", {**form, "name": "other"}).status_code == 403
    assert _counts(database)[3] == before[3] + 1


def test_gold_items_exams_and_items_are_managed_with_precise_refusals(client: Any, world: World,
                                                                      database: Database) -> None:
    work = seed_work(database, world)
    pair = work.projects[TaskType.PAIRWISE]
    signed_in(client, database, world.acme.id, world.acme.member)
    gold = client.get(f"/work/projects/{pair}/gold")
    assert gold.status_code == 200 and work.gold_item in gold.text and "Which reply is rude?" in gold.text
    before = _counts(database)
    line = '{"prompt": [{"role": "user", "content": "Pick"}], "candidates": [{"id": "a", "text": "1"}, {"id": "b", "text": "2"}]'
    for items, message in ((line + "}", "items line 1: a gold item needs its gold_answer"),
                           (line + ', "gold_answer": {"choice": "c"}}', "value.choice must be one of"),
                           (line, "items line 1 is not valid JSON")):
        bad = post_form(client, f"/work/projects/{pair}/gold", f"/work/projects/{pair}/gold", {"items": items})
        assert bad.status_code == 400 and message in bad.text, bad.text[-1500:]
    two = f'{line}, "gold_answer": {{"choice": "a"}}}}\n{line}, "candidates": []}}'
    bad = post_form(client, f"/work/projects/{pair}/gold", f"/work/projects/{pair}/gold", {"items": two})
    assert bad.status_code == 400 and "items line 2" in bad.text  # the first line is not added either
    assert _counts(database) == before
    added = post_form(client, f"/work/projects/{pair}/gold", f"/work/projects/{pair}/gold",
                      {"items": line + ', "gold_answer": {"choice": "a"}}'})
    assert added.status_code == 303 and _counts(database)[4] == before[4] + 1
    exam = post_form(client, "/work/projects", "/work/exams", {"skill": "math", "questions": "q1: 2+2?\n- 3\n- 4"})
    assert exam.status_code == 400 and "mark exactly one option as right" in exam.text
    exam = post_form(client, "/work/projects", "/work/exams",
                     {"skill": "math", "questions": "q1: 2+2?\n- 3\n* 4\n\nq2: 3+3?\n* 6\n- 7", "pass_percent": "50"})
    assert exam.status_code == 303
    with database.session(write=False) as s:
        assert len(workforce.exam_for(s, world.acme.id, "math").questions) == 2
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as expert:
        signed_in(expert, database, world.acme.id, work.carol)
        assert expert.get(f"/work/projects/{pair}/gold").status_code == 403
        assert expert.get(f"/work/projects/{pair}").status_code == 403
        home = expert.get("/work").text
        assert '"choice": "b"' not in home and "Go away." not in home


def test_the_owner_sees_agreement_quality_and_builds_the_dataset(client: Any, world: World,
                                                                 database: Database) -> None:
    work = seed_work(database, world, answered=True)
    pair = work.projects[TaskType.PAIRWISE]
    for path in ("/work", "/work/projects", f"/work/projects/{pair}", f"/work/projects/{pair}/review",
                 f"/work/exams/{SKILL}", f"/work/projects/{pair}/queue"):  # every page needs a session
        assert client.get(path).headers["location"].startswith("/signin?next=%2Fwork"), path
    signed_in(client, database, world.acme.id, world.acme.owner)
    page = client.get(f"/work/projects/{pair}")
    assert page.status_code == 200 and "Krippendorff's alpha (nominal)" in page.text
    assert "Cohen's kappa per pair of experts" in page.text and "ada" in page.text and "bob" in page.text
    built = post_form(client, f"/work/projects/{pair}", f"/work/projects/{pair}/dataset", {})
    assert built.status_code == 303 and "no-item-passed-the-threshold" in built.headers["location"]  # quorum 3 unmet
    with database.session() as s:
        SigninLinks(s).create_invite(world.acme.id, "eve@acme.test", Role.EXPERT, actor="test")
    listing = client.get("/work/projects")
    assert "ada" in listing.text and ESCAPED in listing.text and XSS not in listing.text
    assert "eve@acme.test" in listing.text  # the pending expert invitation
    assert listing.headers["content-security-policy"] == CSP  # no script on the owner's pages
    assert client.get("/work").headers["location"] == "/work/projects"  # a member without a profile
    assert client.get("/static/work.js").headers["content-type"].startswith("text/javascript")


def test_a_gold_dispute_is_opened_by_the_expert_and_upheld_by_the_owner(client: Any, world: World,
                                                                         database: Database) -> None:
    work = seed_work(database, world)
    pair = work.projects[TaskType.PAIRWISE]
    with database.session() as s:
        row = projects.get_project(s, world.acme.id, pair)
        projects.update_settings(s, world.acme.id, pair, projects.settings_of(row).model_copy(update={"gold_share": 0.5}))
    _expert_client(client, work, database, world.acme.id)
    for _ in range(2):  # the second task is the hidden gold item (gold answer b); carol answers a
        task = _lease(client, pair)
        shown = client.get(f"/work/tasks/{task}")
        assert '"choice": "b"' not in shown.text  # the gold answer is never shown
        client.post(f"/work/tasks/{task}/submit", data={"choice": "a", "csrf_token": csrf_of(shown.text)})
    with database.session(write=False) as s:
        wrong = s.scalar(select(WorkAnswer).where(WorkAnswer.item_id == work.gold_item))
        assert wrong is not None and wrong.gold_correct is False
    home = client.get("/work")
    assert "Why the gold answer is wrong" in home.text and "0.00" in home.text  # accuracy 0 of 1
    assert post_form(client, "/work", f"/work/answers/{wrong.id}/dispute", {"reason": " "}).status_code == 400
    opened = post_form(client, "/work", f"/work/answers/{wrong.id}/dispute", {"reason": f"A is ruder {XSS}"})
    assert opened.status_code == 303
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as owner:
        signed_in(owner, database, world.acme.id, world.acme.owner)
        gold = owner.get(f"/work/projects/{pair}/gold")
        assert str(escape(f"A is ruder {XSS}")) in gold.text and XSS not in gold.text
        dispute = re.search(r'action="/work/disputes/(wdsp_[0-9a-z]+)/resolve"', gold.text)
        assert dispute, "no resolve form"
        action = f"/work/disputes/{dispute.group(1)}/resolve"
        bad = post_form(owner, f"/work/projects/{pair}/gold", action, {"decision": "uphold", "gold_answer": '{"choice": "q"}'})
        assert bad.status_code == 400 and "value.choice must be one of" in bad.text
        done = post_form(owner, f"/work/projects/{pair}/gold", action,
                         {"decision": "uphold", "gold_answer": '{"choice": "a"}', "resolution": "agreed"})
        assert done.status_code == 303
    with database.session(write=False) as s:
        assert s.get(WorkAnswer, wrong.id).gold_correct is True  # type: ignore[union-attr]

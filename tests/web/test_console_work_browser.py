"""The expert workforce in a real browser: an expert joins, qualifies and works every task type by keyboard.

Debian's headless ``/usr/bin/chromium`` driven by Playwright against a real uvicorn server over the
seeded world of ``conftest.py`` plus ``work_world.seed_work``. An invited expert joins through the
invitation link, passes the ``support`` exam with digit keys and Enter, then completes one task of
each of the six task types with the keyboard only (``static/work.js``: N next, S skip, A/B choose,
letters rank, digits score, Ctrl+Enter submit). A reviewer accepts five answers and rejects one with
a reason; the expert's pending balance in the ledger grows by exactly five times the rate, and the
expert's page shows it and the reason. The owner sees the pairwise project's agreement (the
Krippendorff alpha the service computes, the kappa table) and builds the aggregated dataset, whose
rows name the new expert in their lineage. No dialog opens anywhere (the stored-XSS probe in the
titles and a prompt stays text). Screenshots go to ``$TEACHLOOP_TEST_ARTIFACTS/console``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from teachloop.core.tenancy import Role
from teachloop.core.work import TaskType
from teachloop.ledger import Ledger
from teachloop.serve import Serving
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.sessions import SigninLinks
from teachloop.store.schema.work import WorkAnswer
from teachloop.web.auth import SESSION_COOKIE
from teachloop.work import pay, results
from tests.web.browser import LAPTOP, artifacts, chromium, console_url, needs_chromium
from tests.web.conftest import PASSWORD, World
from tests.web.work_world import RATE, RIGHT_KEYS, SKILL, seed_work, session_cookie

# In CI (CI=true) a missing browser is a failure, never a silent skip: `make test` must have installed it.
pytestmark = needs_chromium


@pytest.fixture
def live_url(database: Database, blobs: BlobStore, serving: Serving, settings: Any) -> Iterator[str]:
    with console_url(database, blobs, serving, settings) as url:
        yield url


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= LAPTOP["width"], f"{page.url} is {width}px wide at a laptop's width"


def _work(page: Any, task_type: TaskType) -> None:
    """Answer the open task of ``task_type`` with the keyboard only."""
    keys = page.keyboard
    if task_type is TaskType.DEMONSTRATION:  # the reply field has the focus
        keys.type("Open Settings, choose Reset password and follow the e-mailed link.")
    elif task_type is TaskType.CORRECTION:
        keys.press("Control+a")
        keys.type("The capital of Australia is Canberra.")
    elif task_type is TaskType.PAIRWISE:
        keys.press("a")
        assert page.locator("input[name=choice][value=a]").is_checked()
    elif task_type is TaskType.RANKED:  # best first: z (11), y (13), x (12)
        for letter in ("c", "b", "a"):
            keys.press(letter)
        assert [page.locator(f"select[name='rank.{c}']").input_value() for c in "xyz"] == ["3", "2", "1"]
    elif task_type is TaskType.RUBRIC:
        keys.press("4")
        keys.press("5")
        assert page.locator("input[name='score.accuracy'][value='5']").is_checked()
    else:  # authoring: prompt, Tab, answer, Tab, rubric
        keys.type("Convert 3 km to metres.")
        keys.press("Tab")
        keys.type("3000 m")
        keys.press("Tab")
        keys.type("gives 3000 m")
    keys.press("Control+Enter")


def test_an_expert_qualifies_works_every_task_type_by_keyboard_and_is_paid(
        live_url: str, world: World, database: Database) -> None:
    url, org = live_url, world.acme.id
    work = seed_work(database, world, answered=True)
    with database.session() as s:
        token = SigninLinks(s).create_invite(org, "dora@acme.test", Role.EXPERT, actor="test").token
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    with chromium() as browser:
        context = browser.new_context(viewport=LAPTOP)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("dialog", on_dialog)

        # joining by invitation
        page.goto(f"{url}/work/join/{token}")
        page.get_by_label("Your name").fill("Dora")
        page.get_by_label(SKILL).check()
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Password again").fill(PASSWORD)
        page.get_by_role("button", name="Join as an expert").click()
        page.wait_for_url(f"{url}/work")
        _shot(page, "work-expert-home")

        # the exam, by keyboard: a digit picks the current question's option and moves on; Enter submits
        page.get_by_role("link", name=f"Take the {SKILL} exam").click()
        page.wait_for_url(f"{url}/work/exams/{SKILL}")
        for key in RIGHT_KEYS:
            page.keyboard.press(key)
        _shot(page, "work-exam")
        page.keyboard.press("Enter")
        page.wait_for_load_state()
        assert "Passed with 100 %" in page.get_by_role("status").inner_text()

        # one task of each type, keyboard only; the pairwise task is skipped once first
        for task_type in TaskType:
            project = work.projects[task_type]
            page.goto(f"{url}/work/projects/{project}/queue")
            page.keyboard.press("n")
            page.wait_for_url(f"{url}/work/tasks/*")
            if task_type is TaskType.PAIRWISE:
                page.keyboard.press("s")
                page.wait_for_url("**/queue?done=skipped")
                page.keyboard.press("n")
                page.wait_for_url(f"{url}/work/tasks/*")
            _shot(page, f"work-task-{task_type.value}")
            _work(page, task_type)
            page.wait_for_url(f"{url}/work/projects/{project}/queue?done=submitted")
        dora = context.cookies()  # still signed in as the expert
        assert any(c["name"] == SESSION_COOKIE for c in dora)
        with database.session(write=False) as s:
            user = Tenancy(s).find_user("dora@acme.test")
            assert user is not None
            answers = {a.project_id: a for a in s.scalars(select(WorkAnswer).where(WorkAnswer.expert_id == user.id))}
        assert {a.project_id for a in answers.values()} == set(work.projects.values())
        by_type = {t: answers[p] for t, p in work.projects.items()}
        assert by_type[TaskType.RANKED].value == {"order": ["z", "y", "x"]}
        assert by_type[TaskType.RUBRIC].value == {"scores": {"clarity": 4, "accuracy": 5}}
        assert by_type[TaskType.PAIRWISE].value == {"choice": "a"}
        assert by_type[TaskType.CORRECTION].value == {"reply": "The capital of Australia is Canberra."}
        assert by_type[TaskType.AUTHORING].value == {"prompt": "Convert 3 km to metres.", "answer": "3000 m",
                                                     "rubric": ["gives 3000 m"]}

        def pending() -> int:
            with database.session(write=False) as s:
                ledger = Ledger(s)
                return -ledger.balance(org, pay.expert_account(ledger, org, user.id, "pending", "USD"))

        before = pending()

        # a reviewer accepts five answers and rejects the correction with a reason
        reviewer = browser.new_context(viewport=LAPTOP)
        reviewer.add_cookies([{"name": SESSION_COOKIE, "value": session_cookie(database, org, world.acme.member),
                               "url": url}])
        rpage = reviewer.new_page()
        rpage.set_default_timeout(15_000)
        rpage.on("dialog", on_dialog)
        for task_type, project in work.projects.items():
            rpage.goto(f"{url}/work/projects/{project}/review")
            if task_type is TaskType.CORRECTION:
                assert "-The capital of Australia is Sydney." in rpage.locator("main").inner_text()  # the diff
                rpage.get_by_role("radio", name="Reject").check()
                rpage.get_by_role("textbox", name="Reason").fill("Please explain why Sydney is wrong.")
                _shot(rpage, "work-review")
            rpage.get_by_role("button", name="Save the review").click()
            rpage.wait_for_url(f"{url}/work/projects/{project}/review?done=*")
        assert pending() - before == 5 * RATE

        page.goto(f"{url}/work")
        text = page.locator("main").inner_text()
        assert f"{5 * RATE // 100}.{5 * RATE % 100:02d} USD" in page.locator("[data-earning=pending]").inner_text()
        assert "Please explain why Sydney is wrong." in text
        _shot(page, "work-expert-paid")

        # the owner: agreement in the pairwise project, then the aggregated dataset
        owner = browser.new_context(viewport=LAPTOP)
        owner.add_cookies([{"name": SESSION_COOKIE, "value": session_cookie(database, org, world.acme.owner),
                            "url": url}])
        opage = owner.new_page()
        opage.set_default_timeout(15_000)
        opage.on("dialog", on_dialog)
        pair = work.projects[TaskType.PAIRWISE]
        opage.goto(f"{url}/work/projects/{pair}")
        with database.session(write=False) as s:
            alpha = results.agreement(s, org, pair).alpha
        assert alpha is not None
        assert f"Krippendorff's alpha (nominal): {alpha:.2f}" in opage.locator("#alpha").inner_text()
        assert opage.locator("#agreement-items tbody tr").count() == 2
        opage.get_by_role("button", name="Build the dataset from accepted answers").click()
        opage.wait_for_url(f"{url}/work/projects/{pair}?done=dataset-*")
        assert "3-rows" in opage.get_by_role("status").inner_text()
        assert opage.locator("#datasets li").count() == 1
        _shot(opage, "work-owner-project")
        for ctx in (context, reviewer, owner):
            ctx.close()
    assert dialogs == []  # no script of the stored-XSS probe ran anywhere

    with database.session(write=False) as s:
        repo = Datasets(s)
        ds = repo.resolve(org, "pairwise-project-labels")
        rows = list(repo.rows(org, ds.id))
        assert sorted(str(r.expert_id) for r in rows) == sorted([work.experts["ada"], work.experts["bob"], user.id])
        assert all(r.content["chosen"]["content"] == "The meeting is now on Friday." for r in rows)
        assert Ledger(s).check().ok

"""The console in a real browser: Debian's headless ``chromium`` driven by Playwright, against a real uvicorn server.

The server runs in this process on 127.0.0.1 over the echo engine and the
seeded world of ``conftest.py``; traffic reaches it through ``/v1`` with an API
key, exactly as a product would send it. Screenshots of every page go to
``$TEACHLOOP_TEST_ARTIFACTS/console`` (default ``.pytest-artifacts/console``).
Playwright's own browser download (``playwright install``) is never used: the
tests launch ``/usr/bin/chromium`` (``make test`` installs it with apt-get when
it is missing) and skip, saying why, only when it is not there -- except in CI,
where a missing browser fails them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import select

from teachloop.serve import Serving
from teachloop.store import BlobStore, Database
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema.traces import Feedback, Trace
from tests.web.browser import LAPTOP, artifacts, chromium, console_url, needs_chromium
from tests.web.conftest import PASSWORD, RUN_CURVE, XSS, World

# In CI (CI=true) a missing browser is a failure, never a silent skip: `make test` must have installed it.
pytestmark = needs_chromium


@dataclass
class Live:
    url: str
    database: Database


@pytest.fixture
def live(database: Database, blobs: BlobStore, serving: Serving, settings: Any) -> Iterator[Live]:
    with console_url(database, blobs, serving, settings) as url:
        yield Live(url, database)


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def _page(browser: Any) -> Any:
    page = browser.new_page(viewport=LAPTOP)
    page.set_default_timeout(15_000)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs
    return page


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)


def _fits_laptop(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= LAPTOP["width"], f"{page.url} is {width}px wide at a laptop's width"


def _sign_in(page: Any, url: str, email: str) -> None:
    page.goto(f"{url}/signin")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/")


def _chat(url: str, key: str, text: str, metadata: dict[str, str]) -> str:
    reply = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                       json={"model": "support", "messages": [{"role": "user", "content": text}], "user": "u1",
                             "metadata": metadata, "max_tokens": 32})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"]).removeprefix("chatcmpl-")


def _wait_for_trace(database: Database, trace_id: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        with database.session(write=False) as s:
            if s.get(Trace, trace_id) is not None:
                return
        assert time.monotonic() < deadline, "the trace was never written"
        time.sleep(0.05)


def test_journey_sign_in_feedback_rollback_and_keys(live: Live, browser: Any, world: World) -> None:
    trace_id = _chat(live.url, world.acme.key, "What is the capital of Italy?", {"app": "journey"})
    _wait_for_trace(live.database, trace_id)
    page = _page(browser)

    # keyboard first: the first Tab reaches the skip link
    page.goto(f"{live.url}/signin")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    _shot(page, "01-signin")

    _sign_in(page, live.url, world.acme.owner)
    assert page.get_by_role("heading", name="Overview").is_visible()
    _fits_laptop(page)
    _shot(page, "02-overview")

    # find the trace
    page.get_by_role("link", name="Traces", exact=True).click()
    page.get_by_label("Metadata").fill("app=journey")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    _fits_laptop(page)
    _shot(page, "03-traces")
    rows.first.get_by_role("link").click()
    page.wait_for_url(f"{live.url}/traces/{trace_id}")
    assert "What is the capital of Italy?" in page.content()
    _shot(page, "04-trace")

    # score and correct it
    page.get_by_label("Score", exact=True).fill("0.5")
    page.get_by_label("Label", exact=True).fill("journey")
    page.get_by_label("Corrected reply").fill("Rome.")
    page.get_by_role("button", name="Save feedback").click()
    assert page.get_by_role("status").inner_text() == "Feedback saved."
    page.get_by_role("button", name="Thumbs up").click()
    _shot(page, "05-trace-feedback")
    with live.database.session(write=False) as s:
        rows_stored = list(s.scalars(select(Feedback).where(Feedback.trace_id == trace_id)
                                     .order_by(Feedback.created_at, Feedback.id)))
    assert [(f.score, f.label) for f in rows_stored] == [(0.5, "journey"), (1.0, "thumbs_up")]
    assert rows_stored[0].corrected_output == {"role": "assistant", "content": "Rome."}

    # roll the deployment back, through its confirmation
    page.get_by_role("link", name="Deployments", exact=True).click()
    _shot(page, "06-deployments")
    page.get_by_role("link", name="support", exact=True).click()
    _shot(page, "07-deployment")
    page.get_by_role("link", name="Roll back…").click()
    _shot(page, "08-rollback-confirm")
    with live.database.session(write=False) as s:
        assert Deployments(s).get(world.acme.id, "support").revision == 3  # nothing changed yet
    page.get_by_role("button", name="Confirm: roll back").click()
    assert "Done: rollback-4" in page.get_by_role("status").inner_text()
    with live.database.session(write=False) as s:
        changed = Deployments(s).get(world.acme.id, "support")
        assert changed.revision == 4 and changed.canary_version_id is None

    # open a run's metric curve: an inline SVG with one point per training step
    page.get_by_role("link", name="Runs", exact=True).click()
    _fits_laptop(page)
    _shot(page, "11-runs")
    page.get_by_role("link", name="acme-grpo", exact=True).click()
    page.wait_for_url(f"{live.url}/runs/{world.acme_pages.run}")
    curve = page.locator("figure", has_text="Training: reward_mean").locator("svg[role=img] polyline")
    assert curve.count() == 1 and curve.is_visible()
    points = curve.get_attribute("points").split()
    assert len(points) == len(RUN_CURVE)
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[-1] < ys[0]  # the reward rose: its last point is drawn higher
    box = curve.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 50  # drawn at a readable size
    _fits_laptop(page)
    _shot(page, "12-run")

    # the loop: pause it and resume it
    page.get_by_role("link", name="Loops", exact=True).click()
    _shot(page, "13-loops")
    page.get_by_role("link", name="support", exact=True).click()
    page.wait_for_url(f"{live.url}/loops/support")
    assert page.locator("#chart-online svg polyline").count() == 2  # primary and canary arms
    _fits_laptop(page)
    _shot(page, "14-loop")
    page.get_by_role("button", name="Pause the loop").click()
    assert page.get_by_role("status").inner_text() == "Done: loop paused."
    page.get_by_role("button", name="Resume the loop").click()
    assert page.get_by_role("status").inner_text() == "Done: loop resumed."

    # environments and datasets
    page.get_by_role("link", name="Environments", exact=True).click()
    _fits_laptop(page)
    _shot(page, "15-environments")
    page.get_by_role("link", name="acme-env").first.click()
    page.wait_for_url(f"{live.url}/environments/acme-env")
    _shot(page, "16-environment")
    page.get_by_role("link", name="Datasets", exact=True).click()
    _fits_laptop(page)
    _shot(page, "17-datasets")
    page.get_by_role("link", name="acme-sft@1").click()
    page.wait_for_url(f"{live.url}/datasets/{world.acme_pages.dataset}")
    assert page.locator("main tbody tr").count() >= 50
    _fits_laptop(page)
    _shot(page, "18-dataset")
    page.get_by_role("link", name="Next rows").click()
    page.wait_for_url(f"{live.url}/datasets/{world.acme_pages.dataset}?split=&page=2")
    assert page.locator("main tbody tr").count() >= 5
    _shot(page, "19-dataset-page-2")

    # create an API key, see it work once, revoke it
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_label("Name", exact=True).fill("journey key")
    page.locator("#key-role").select_option("viewer")  # (the invitation form has a Role field too)
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret").input_value()
    _fits_laptop(page)
    _shot(page, "09-settings-new-key")
    whoami = httpx.get(f"{live.url}/api/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert whoami.status_code == 200 and whoami.json()["role"] == "viewer"
    page.get_by_role("button", name="Revoke key journey key").click()
    assert "key-revoked" in page.get_by_role("status").inner_text()
    _shot(page, "10-settings-revoked")
    assert httpx.get(f"{live.url}/api/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 401

    # change a member's role through its confirmation
    page.get_by_label("New role of member@acme.test").select_option("viewer")
    page.get_by_role("button", name="Change role… of member@acme.test").click()
    page.wait_for_url(re.compile(r".*/settings/members/usr_\w+/role\?role=viewer$"))
    _shot(page, "20-member-role-confirm")
    page.get_by_role("button", name="Confirm: make member@acme.test viewer").click()
    assert "role-changed" in page.get_by_role("status").inner_text()
    assert page.locator("#member-" + _member_id(live.database, world.acme.id, world.acme.member)).inner_text().count(
        "viewer") >= 1
    _shot(page, "21-settings-role-changed")
    assert page.dialogs == []


def _member_id(database: Database, org_id: str, email: str) -> str:
    from teachloop.store import Tenancy

    with database.session(write=False) as s:
        return next(u.id for _, u in Tenancy(s).list_members(org_id) if u.email == email)


def test_stored_xss_probe_is_inert_on_every_page(live: Live, browser: Any, world: World) -> None:
    page = _page(browser)
    _sign_in(page, live.url, world.acme.owner)
    pages = {
        "xss-overview": "/", "xss-traces": "/traces", "xss-trace": f"/traces/{world.xss_trace}",
        "xss-deployments": "/deployments", "xss-deployment": "/deployments/support", "xss-settings": "/settings",
        "xss-loops": "/loops", "xss-loop": "/loops/support", "xss-runs": "/runs",
        "xss-run": f"/runs/{world.acme_pages.xss_run}?metric={quote(XSS)}", "xss-environments": "/environments",
        "xss-environment": f"/environments/{world.acme_pages.env}", "xss-datasets": "/datasets",
        "xss-dataset": f"/datasets/{world.acme_pages.dataset}",
    }
    for name, path in pages.items():
        page.goto(f"{live.url}{path}")
        assert page.locator("script").count() == 0, path
        assert page.locator("img").count() == 0, path
        _shot(page, name)
    for path in (f"/traces/{world.xss_trace}", "/loops/support", f"/runs/{world.acme_pages.xss_run}",
                 f"/environments/{world.acme_pages.env}"):
        page.goto(f"{live.url}{path}")
        assert XSS in page.locator("main").inner_text(), path  # shown as text, not run
    assert page.dialogs == []

"""Console pages for loops, runs, environments, datasets and members, over the in-process app.

What they show (curves with their points, the gate's figures, canary evidence, lineage, paging), tenancy
(another organisation's run, dataset, environment, loop or member answers exactly like a missing one), roles
(a viewer cannot pause a loop, a member cannot change members, only an owner touches owners), the last-owner
rule, and the stored-XSS probe shown as text on every new page.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from teachloop.core.tenancy import Role
from teachloop.store import ApiKeys, Database, Tenancy
from teachloop.store.repos.loops import Loops
from teachloop.store.schema.audit import AuditEvent
from teachloop.store.schema.tenancy import ApiKey, Membership
from tests.web.conftest import DATASET_ROWS, RUN_CURVE, XSS, World, post_form, sign_in

ESCAPED = "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;"


def _normalised_404(response: Any, ref: str) -> str:
    assert response.status_code == 404, response.text
    return response.text.replace(ref, "REF")


def _same_404(client: Any, theirs: str, missing: str, path: str) -> None:
    assert _normalised_404(client.get(path.format(theirs)), theirs) == _normalised_404(
        client.get(path.format(missing)), missing), path


def _polylines(html: str) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in pts.split()]  # type: ignore[misc]
            for pts in re.findall(r'<polyline [^>]*points="([^"]*)"', html)]


def _user_id(database: Database, org_id: str, email: str) -> str:
    with database.session(write=False) as s:
        return next(u.id for _, u in Tenancy(s).list_members(org_id) if u.email == email)


def _role(database: Database, org_id: str, user_id: str) -> str | None:
    with database.session(write=False) as s:
        return s.scalar(select(Membership.role).where(Membership.org_id == org_id, Membership.user_id == user_id))


def test_run_pages_show_status_curves_eval_and_checkpoints(client: Any, world: World) -> None:
    sign_in(client, world.acme.viewer)
    listing = client.get("/runs")
    assert listing.status_code == 200
    assert f'href="/runs/{world.acme_pages.run}"' in listing.text and "acme-grpo" in listing.text
    assert "completed" in listing.text and "8 / 8" in listing.text
    assert world.globex_pages.run not in listing.text
    page = client.get(f"/runs/{world.acme_pages.run}")
    assert page.status_code == 200
    html = page.text
    assert "Training: reward_mean" in html and "Training: loss" in html and "Held-out eval: reward_mean" in html
    reward, loss = _polylines(html)[:2]
    assert len(reward) == len(loss) == len(RUN_CURVE)
    assert [x for x, _ in reward] == sorted(x for x, _ in reward)  # steps left to right
    assert reward[-1][1] < reward[0][1] and loss[-1][1] > loss[0][1]  # reward rises (up is a smaller y), loss falls
    assert html.count("<circle ") >= 2 * len(RUN_CURVE) + 2  # every point of the short curves, and both evals
    # held-out eval before and after, checkpoints, the config
    assert re.search(r"<th scope=\"row\">reward_mean</th><td>0.3000</td><td>0.8000</td><td>\+0.5000</td>", html)
    assert f"runs/{world.acme_pages.run}/checkpoints/00000004" in html and "00000008" in html
    assert "&#34;rank&#34;: 4" in html
    one = client.get(f"/runs/{world.acme_pages.run}", params={"metric": "loss"}).text
    assert "Training: loss" in one and "Training: reward_mean" not in one and len(_polylines(one)) == 1


def test_loop_page_shows_state_iterations_gate_canary_and_online_reward(client: Any, world: World) -> None:
    sign_in(client, world.acme.viewer)
    listing = client.get("/loops")
    assert listing.status_code == 200 and 'href="/loops/support"' in listing.text and "#3" in listing.text
    html = client.get("/loops/support").text
    assert "Pause the loop" not in html  # a viewer gets no button
    assert re.search(r"<dt>Runs</dt><dd>on</dd>", html) and re.search(r"<dt>Phase</dt><dd>idle</dd>", html)
    assert "every 10 new usable examples" in html and "canary 20 %" in html  # the config summary
    for number, status in ((1, "rejected"), (2, "promoted"), (3, "failed")):
        assert re.search(rf"#{number} <span class=\"status status-{status}\">{status}</span>", html), number
    assert "not better at 95% confidence" in html and "better at 95% confidence (mean diff +0.12" in html
    assert "<td>holdout</td><td>reward</td><td>40</td><td>0.6000</td><td>0.5900</td><td>-0.0100</td>" in html
    assert "the candidate held up: grader mean 0.74 vs 0.61" in html and "20 % of users" in html
    assert "<th scope=\"row\">candidate</th><td>20</td><td>20</td><td>0.7400</td>" in html
    assert f'href="/runs/{world.acme_pages.run}"' in html and f'href="/datasets/{world.acme_pages.dataset}"' in html
    assert "bot@2 → bot@3" in html and "before 2, canary 3, promoted 4" in html
    assert "Online reward" in html and "12 served requests" in html
    series = re.findall(r'<g class="series" data-name="([^"]+)"', html)
    assert series == ["canary (mean per 15 min)", "primary (mean per 15 min)"]
    primary = _polylines(html)[-1]
    assert len(primary) == 8 and primary[-1][1] < primary[0][1]  # newer scores are higher


def test_loop_page_names_each_gate_suites_slice_of_the_task_stream(client: Any, world: World,
                                                                  database: Database) -> None:
    fresh = {"seed": 7, "offset": 64, "tasks": 64, "fresh": True, "task_ids": [f"t{i}" for i in range(64)],
             "repeated_prompts": 3}
    suites = [{"name": "arithmetic", "metric": "reward", "n": 64, "deciding": True, "baseline_mean": 0.5,
               "candidate_mean": 0.6, "mean_diff": 0.1, "sample": fresh},
              {"name": XSS, "metric": "reward", "n": 1, "deciding": False, "baseline_mean": 0.5, "candidate_mean": 0.5,
               "mean_diff": 0.0, "sample": {**fresh, "fresh": False, "offset": 0, "tasks": 1, "repeated_prompts": 1,
                                            "task_ids": [XSS]}},
              {"name": "old-row", "metric": "reward", "n": 2, "deciding": False, "sample": {"offset": XSS}}]
    with database.session() as s:
        loops = Loops(s)
        loop = loops.list(world.acme.id)[0]
        it = loops.start_iteration(world.acme.id, loop.id, "interval")
        loops.update_iteration(world.acme.id, it.id, gate={"passed": False, "reason": "not better", "suites": suites})
    sign_in(client, world.acme.viewer)
    html = client.get("/loops/support").text
    assert "<td>fresh slice: offset 64, 64 tasks, 3 repeated prompts</td>" in html
    assert f"<td>{ESCAPED}" in html and "<td>fixed slice: offset 0, 1 task, 1 repeated prompt</td>" in html
    assert "<td>old-row</td>" in html and XSS not in html  # a record that is no sample shows none
    assert re.search(r"<td>holdout</td>(<td>[^<]*</td>){6}<td>—</td></tr>", html)  # a holdout suite has no slice


def test_pause_and_resume_need_the_member_role(client: Any, world: World, database: Database) -> None:
    def enabled() -> bool:
        with database.session(write=False) as s:
            return next(lp.enabled for lp in Loops(s).list(world.acme.id))

    sign_in(client, world.acme.viewer)
    assert post_form(client, "/loops/support", "/loops/support/pause", {}).status_code == 403
    assert enabled()
    with TestClient(client.app, raise_server_exceptions=False, follow_redirects=False) as member:
        sign_in(member, world.acme.member)
        assert "Pause the loop" in member.get("/loops/support").text
        paused = post_form(member, "/loops/support", "/loops/support/pause", {})
        assert paused.status_code == 303 and paused.headers["location"] == "/loops/support?done=paused"
        assert not enabled()
        shown = member.get("/loops/support").text
        assert "Resume the loop" in shown and re.search(r"<dt>Runs</dt><dd>paused</dd>", shown)
        assert member.post("/loops/support/resume", data={}).status_code == 403  # no CSRF token
        assert not enabled()
        assert post_form(member, "/loops/support", "/loops/support/resume", {}).status_code == 303
        assert enabled()


def test_environment_and_dataset_pages(client: Any, world: World) -> None:
    sign_in(client, world.acme.viewer)
    envs = client.get("/environments").text
    assert 'href="/environments/acme-env"' in envs and "@1.1.0" in envs and "@1.0.0" in envs
    assert "sha256:bbbbbbbbbbbb…" in envs and "0.650 (0.450 – 0.850)" in envs and "globex-env" not in envs
    env = client.get("/environments/acme-env").text
    assert "sha256:" + "a" * 64 in env and "Apache-2.0" in env and "lookup" in env and "passed at publish" in env

    listing = client.get("/datasets").text
    assert f'href="/datasets/{world.acme_pages.dataset}"' in listing and "acme-sft@1" in listing
    assert world.globex_pages.dataset not in listing
    path = f"/datasets/{world.acme_pages.dataset}"
    first = client.get(path).text
    positions = [int(p) for p in re.findall(r"<tr>\s*<td>(\d+)</td>", first)]
    assert positions == list(range(50)) and "page 1 of 2" in first and "Next rows" in first
    assert f'href="/traces/{world.acme.trace_ids[1]}"' in first  # lineage: the trace a row came from
    assert "scored by arithmetic" in first and "CC-BY-4.0" in first and "feedback" in first
    assert "globex" in first and "every version" in first and "active" in first  # the grant
    second = client.get(path, params={"page": "2"}).text
    assert [int(p) for p in re.findall(r"<tr>\s*<td>(\d+)</td>", second)] == list(range(50, DATASET_ROWS))
    holdout = client.get(path, params={"split": "holdout"}).text
    assert [int(p) for p in re.findall(r"<tr>\s*<td>(\d+)</td>", holdout)] == [0, 10, 20, 30, 40, 50]
    assert client.get(path, params={"page": "0"}).status_code == 400
    assert client.get(path, params={"split": "test"}).status_code == 400


def test_another_organisations_objects_answer_like_missing_ones(client: Any, world: World,
                                                               database: Database) -> None:
    sign_in(client, world.acme.owner)
    theirs = world.globex_pages
    _same_404(client, theirs.run, "run_00000000000000000000000000", "/runs/{}")
    _same_404(client, theirs.dataset, "ds_00000000000000000000000000", "/datasets/{}")
    _same_404(client, theirs.env, "nope-env", "/environments/{}")
    _same_404(client, theirs.loop, "nope", "/loops/{}")
    globex_owner = _user_id(database, world.globex.id, world.globex.owner)
    _same_404(client, globex_owner, "usr_00000000000000000000000000", "/settings/members/{}/remove")
    assert post_form(client, "/settings", f"/loops/{theirs.loop}/pause", {}).status_code == 404
    assert post_form(client, "/settings", f"/settings/members/{globex_owner}/remove", {}).status_code == 404
    assert post_form(client, "/settings", f"/settings/members/{globex_owner}/role",
                     {"role": "viewer"}).status_code == 404
    with database.session(write=False) as s:
        assert all(lp.enabled for lp in Loops(s).list(world.globex.id))
    assert _role(database, world.globex.id, globex_owner) == "owner"


def test_members_change_role_and_leave_through_a_confirmation(client: Any, world: World, database: Database,
                                                              app: Any) -> None:
    acme = world.acme.id
    member, admin = _user_id(database, acme, world.acme.member), _user_id(database, acme, world.acme.admin)
    with database.session() as s:
        admin_key = ApiKeys(s).create_key(acme, admin, Role.ADMIN, "admin's key")
        viewer_key = ApiKeys(s).create_key(acme, admin, Role.VIEWER, "admin's read key")
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as m:
        sign_in(m, world.acme.member)
        assert m.get("/settings").status_code == 403
        assert post_form(m, "/", f"/settings/members/{admin}/remove", {}).status_code == 403  # members cannot
        sign_in(client, world.acme.owner)
        confirm = client.get(f"/settings/members/{admin}/role", params={"role": "viewer"})
        assert confirm.status_code == 200 and "make admin@acme.test viewer instead of admin" in confirm.text
        assert "admin&#39;s key" in confirm.text and "admin&#39;s read key" not in confirm.text
        assert _role(database, acme, admin) == "admin"  # the confirmation page changed nothing
        done = post_form(client, "/settings", f"/settings/members/{admin}/role", {"role": "viewer"})
        assert done.status_code == 303 and done.headers["location"] == "/settings?done=role-changed"
        assert _role(database, acme, admin) == "viewer"
        with database.session(write=False) as s:
            assert s.get(ApiKey, admin_key.key.id).revoked_at is not None  # above the new role
            assert s.get(ApiKey, viewer_key.key.id).revoked_at is None
            actions = set(s.scalars(select(AuditEvent.action).where(AuditEvent.target == admin)))
        assert "member.role" in actions

        assert m.get("/").status_code == 200  # the member's session is live ...
        assert post_form(client, f"/settings/members/{member}/remove", f"/settings/members/{member}/remove",
                         {}).status_code == 303
        assert _role(database, acme, member) is None
        assert m.get("/").status_code == 303  # ... and ends with the membership
    assert "member@acme.test" not in client.get("/settings").text


def test_only_owners_touch_owners_and_the_last_owner_stays(client: Any, world: World, database: Database,
                                                           app: Any) -> None:
    acme = world.acme.id
    owner, admin = _user_id(database, acme, world.acme.owner), _user_id(database, acme, world.acme.admin)
    sign_in(client, world.acme.owner)
    last = client.get(f"/settings/members/{owner}/role", params={"role": "admin"})
    assert last.status_code == 409 and "last owner" in last.text
    assert post_form(client, "/settings", f"/settings/members/{owner}/remove", {}).status_code == 409
    assert post_form(client, "/settings", f"/settings/members/{owner}/role", {"role": "member"}).status_code == 409
    assert _role(database, acme, owner) == "owner"
    assert client.get(f"/settings/members/{admin}/role", params={"role": "operator"}).status_code == 400
    assert client.get(f"/settings/members/{admin}/role", params={"role": "admin"}).status_code == 400  # no change
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as a:
        sign_in(a, world.acme.admin)
        assert a.get(f"/settings/members/{owner}/remove").status_code == 403
        assert post_form(a, "/settings", f"/settings/members/{owner}/role", {"role": "admin"}).status_code == 403
        assert post_form(a, "/settings", f"/settings/members/{admin}/role", {"role": "owner"}).status_code == 403
        assert 'action="/settings/members/' + owner not in a.get("/settings").text  # no form for an owner
    assert post_form(client, "/settings", f"/settings/members/{admin}/role", {"role": "owner"}).status_code == 303
    assert post_form(client, "/settings", f"/settings/members/{owner}/role", {"role": "admin"}).status_code == 303
    assert (_role(database, acme, owner), _role(database, acme, admin)) == ("admin", "owner")


def test_stored_xss_is_escaped_on_the_new_pages(client: Any, world: World) -> None:
    sign_in(client, world.acme.owner)
    pages = ["/loops", "/loops/support", "/runs", f"/runs/{world.acme_pages.xss_run}", f"/runs/{world.acme_pages.run}",
             "/environments", f"/environments/{world.acme_pages.env}", "/datasets",
             f"/datasets/{world.acme_pages.dataset}"]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.text
        assert "<script>alert" not in html and "<img src=x" not in html and "onerror=alert(1)>" not in html, path
        assert XSS not in html, path
    for path in ("/loops/support", "/runs", f"/runs/{world.acme_pages.xss_run}", "/environments",
                 f"/environments/{world.acme_pages.env}", f"/datasets/{world.acme_pages.dataset}"):
        assert ESCAPED in client.get(path).text, path  # the probe is there, as text
    run = client.get(f"/runs/{world.acme_pages.xss_run}", params={"metric": XSS}).text
    assert f'data-name="{ESCAPED}' in run and "<title" in run  # a metric name in the SVG is text too


def test_row_lines_show_every_kind_of_row_as_text() -> None:
    from teachloop.web.datasets import row_lines

    chat = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    assert row_lines(chat) == [("user", "Hi?"), ("assistant", "Hello.")]
    pair = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": {"role": "assistant", "content": "4"},
            "rejected": {"role": "assistant", "content": "5"}}
    assert row_lines(pair) == [("prompt · user", "2+2?"), ("chosen (assistant)", "4"), ("rejected (assistant)", "5")]
    prompt = {"messages": [{"role": "user", "content": "3*3?"}], "answer": 9, "extra": {"k": [1]}}
    assert row_lines(prompt) == [("user", "3*3?"), ("answer", "9"), ("extra", '{"k": [1]}')]

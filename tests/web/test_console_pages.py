"""Console pages over the in-process app: tenancy, trace filters, feedback, deployments, API keys, XSS escaping."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from teachloop.store import Database
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema.tenancy import ApiKey
from teachloop.store.schema.traces import Feedback
from tests.web.conftest import XSS, XSS_KEY, World, post_form, sign_in


def _ids(html: str) -> set[str]:
    return set(re.findall(r'href="/traces/(tr_[0-9a-z]+)"', html))


def _normalised_404(response: Any, ref: str) -> str:
    assert response.status_code == 404, response.text
    return response.text.replace(ref, "REF")


def test_another_organisations_objects_answer_exactly_like_missing_ones(client: Any, world: World,
                                                                        database: Database) -> None:
    sign_in(client, world.acme.owner)
    theirs, missing = world.globex.trace_ids[0], "tr_00000000000000000000000000"
    assert _normalised_404(client.get(f"/traces/{theirs}"), theirs) == _normalised_404(
        client.get(f"/traces/{missing}"), missing)
    assert _normalised_404(client.get("/deployments/gx-only"), "gx-only") == _normalised_404(
        client.get("/deployments/nope"), "nope")
    assert client.get("/deployments/gx-only/rollback").status_code == 404
    assert post_form(client, "/settings", "/deployments/gx-only/rollback", {}).status_code == 404
    assert post_form(client, "/settings", f"/traces/{theirs}/feedback", {"score": "1"}).status_code == 404
    assert post_form(client, "/settings", f"/settings/keys/{world.globex.key_id}/revoke", {}).status_code == 404
    revoke = f"/settings/invitations/{world.globex.invite_id}/revoke"
    assert post_form(client, "/settings", revoke, {}).status_code == 404
    with database.session(write=False) as s:
        assert s.get(ApiKey, world.globex.key_id).revoked_at is None
        assert Deployments(s).get(world.globex.id, "gx-only").revision == 3
        assert not list(s.scalars(select(Feedback)))
    assert not _ids(client.get("/traces").text) & set(world.globex.trace_ids)


def test_trace_filters(client: Any, world: World) -> None:
    sign_in(client, world.acme.viewer)
    everything = _ids(client.get("/traces").text)
    assert set(world.acme.trace_ids) <= everything and world.tool_trace in everything
    assert _ids(client.get("/traces", params={"metadata": "app=search"}).text) == {world.acme.trace_ids[1]}
    assert _ids(client.get("/traces", params={"deployment": "support", "metadata": ["app=checkout", ""]}).text) == {
        world.acme.trace_ids[0]}
    assert world.tool_trace not in _ids(client.get("/traces", params={"deployment": "support"}).text)
    recent = _ids(client.get("/traces", params={"since": "2000-01-01T00:00", "until": "2999-01-01T00:00"}).text)
    assert recent == everything
    assert _ids(client.get("/traces", params={"until": "2001-01-01T00:00"}).text) == set()
    assert _ids(client.get("/traces", params={"feedback": "yes"}).text) == set()
    bad = client.get("/traces", params={"metadata": "no-equals-sign"})
    assert bad.status_code == 400 and "key=value" in bad.text
    assert client.get("/traces", params={"since": "yesterday"}).status_code == 400


def test_trace_detail_shows_the_conversation_with_tool_calls(client: Any, world: World) -> None:
    sign_in(client, world.acme.viewer)
    page = client.get(f"/traces/{world.tool_trace}")
    assert page.status_code == 200
    assert "get_weather" in page.text and "&#34;city&#34;: &#34;Paris&#34;" in page.text
    assert "Weather in Paris?" in page.text and "Be brief." in page.text
    assert 'action="/traces/' not in page.text  # a viewer gets no feedback forms


def test_feedback_from_the_page_is_stored_like_the_apis(client: Any, world: World, database: Database) -> None:
    sign_in(client, world.acme.member)
    trace = world.acme.trace_ids[1]
    detail = f"/traces/{trace}"
    assert post_form(client, detail, f"{detail}/feedback", {"thumb": "up"}).status_code == 303
    saved = post_form(client, detail, f"{detail}/feedback", {"score": "0.25", "label": "wrong-city", "comment": "meh",
                                                              "corrected": "Paris, obviously."})
    assert saved.status_code == 303 and saved.headers["location"] == f"/traces/{trace}?saved=1#feedback"
    unchanged = post_form(client, detail, f"{detail}/feedback", {"score": "1", "corrected": "Paris"})
    assert unchanged.status_code == 303
    assert post_form(client, detail, f"{detail}/feedback", {"score": "lots"}).status_code == 400
    assert post_form(client, detail, f"{detail}/feedback", {}).status_code == 400
    with database.session(write=False) as s:
        rows = list(s.scalars(select(Feedback).order_by(Feedback.created_at, Feedback.id)))
        member_id = rows[0].author
    assert [(r.score, r.label) for r in rows] == [(1.0, "thumbs_up"), (0.25, "wrong-city"), (1.0, None)]
    assert rows[1].comment == "meh" and rows[1].corrected_output == {"role": "assistant", "content": "Paris, obviously."}
    assert rows[2].corrected_output is None and member_id.startswith("usr_")
    shown = client.get(client.get(detail).url).text
    assert "wrong-city" in shown and "Paris, obviously." in shown
    assert _ids(client.get("/traces", params={"feedback": "yes"}).text) == {trace}


def test_rollback_promote_and_split_each_need_a_confirmation(client: Any, world: World, database: Database) -> None:
    sign_in(client, world.acme.member)

    def state() -> tuple[int, str | None, str | None, int]:
        with database.session(write=False) as s:
            d = Deployments(s).get(world.acme.id, "support")
            return d.revision, d.adapter_version_id, d.canary_version_id, d.canary_percent

    start = state()
    confirm = client.get("/deployments/support/split", params={"percent": "50"})
    assert confirm.status_code == 200 and "50 % of users" in confirm.text and state() == start  # a dry run
    assert post_form(client, "/deployments/support/split?percent=50", "/deployments/support/split",
                     {"percent": "50"}).status_code == 303
    assert state()[0] == 4 and state()[3] == 50
    assert client.get("/deployments/support/split", params={"percent": "100"}).status_code == 400
    rolled = post_form(client, "/deployments/support/rollback", "/deployments/support/rollback", {})
    assert rolled.status_code == 303 and state() == (5, *start[1:])
    restore = post_form(client, "/deployments/support/rollback?to_revision=1", "/deployments/support/rollback",
                        {"to_revision": "1"})
    assert restore.status_code == 303 and state()[0] == 6 and state()[2] is None
    assert client.get("/deployments/support/promote").status_code == 409  # no canary any more
    page = client.get("/deployments/support")
    assert "rollback (of 1)" in page.text and "Restore" in page.text


def test_api_keys_are_created_shown_once_and_revoked(client: Any, world: World, database: Database) -> None:
    sign_in(client, world.acme.owner)
    made = post_form(client, "/settings", "/settings/keys", {"name": "ci", "role": "viewer"})
    assert made.status_code == 201
    secret = re.search(r'value="(tl_[a-z2-7]{12}_[a-z2-7]{52})"', made.text).group(1)  # type: ignore[union-attr]
    who = client.get("/api/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert who.status_code == 200 and who.json()["role"] == "viewer"
    listing = client.get("/settings").text
    assert secret not in listing and secret[:15] in listing
    with database.session(write=False) as s:
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.name == "ci"))
    assert post_form(client, "/settings", f"/settings/keys/{key_id}/revoke", {}).status_code == 303
    assert client.get("/api/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert post_form(client, "/settings", "/settings/keys", {"name": "x", "role": "operator"}).status_code == 400


def test_stored_xss_is_escaped_on_every_page(client: Any, world: World) -> None:
    sign_in(client, world.acme.owner)
    detail = f"/traces/{world.xss_trace}"
    post_form(client, detail, f"{detail}/feedback", {"label": XSS[:100], "comment": XSS, "corrected": XSS + "!"})
    pages = ["/", "/traces", "/traces?metadata=app%3Dprobe", detail, "/deployments", "/deployments/support",
             "/deployments/support/rollback", "/settings", f"/traces?deployment={XSS}",
             "/loops", "/loops/support", "/runs", f"/runs/{world.acme_pages.xss_run}?metric={XSS}", "/environments",
             f"/environments/{world.acme_pages.env}", "/datasets", f"/datasets/{world.acme_pages.dataset}"]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.text
        assert "<script>alert" not in html and "<img src=x" not in html and "onerror=alert(1)>" not in html, path
        assert XSS not in html and XSS_KEY not in html, path
    shown = client.get(detail).text
    assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in shown
    assert "k&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in shown  # the metadata key
    assert XSS_KEY not in shown
    listing = client.get("/traces?metadata=app%3Dprobe").text
    assert _ids(listing) == {world.xss_trace} and "&lt;script&gt;" in listing

"""Upstream, canary and shadow arms and prices from the console (issue 17): the forms on the deployments pages.

Each form POSTs the body ``/api/deployments`` takes to the same ``serve.deployments`` call, against a
real local OpenAI-compatible upstream (``tests.unit.serve.upstream_server.FakeUpstream``), so a set
upstream answers the next ``/v1`` request. Bad input re-renders the form naming the field, writes
nothing, and never puts the API key in the page -- no HTML response of these tests contains it.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from teachloop.store import Database
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema.deployments import Deployment, DeploymentChange, UpstreamEndpoint
from tests.unit.serve.upstream_server import KEY, FakeUpstream
from tests.web.conftest import XSS, World, csrf_of, post_form, sign_in

PAGE = "/deployments/support"


@pytest.fixture(autouse=True)
def _upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_UPSTREAM_KEY", Fernet.generate_key().decode())


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def _form(up: FakeUpstream, model: str = "teacher", key: str = KEY, **extra: Any) -> dict[str, Any]:
    return {"base_url": up.base_url, "model": model, "api_key": key, "timeout_s": "30", "connect_timeout_s": "2",
            "max_retries": "1", "check_upstream": "on", **extra}


def _html(response: Any, status: int) -> str:
    """The page of ``response`` (checked: its status, and the API key nowhere in it)."""
    assert response.status_code == status, response.text[:2000]
    assert KEY not in response.text and KEY[-14:] not in response.text  # nor its tail
    return str(response.text)


def _post(client: Any, action: str, data: dict[str, Any], page: str = PAGE) -> Any:
    return post_form(client, page, action, data)


def _snapshot(database: Database) -> tuple[Any, ...]:
    """Everything a refused form must leave as it was."""
    with database.session(write=False) as s:
        deps = [(d.name, d.revision, d.adapter_version_id, d.canary_version_id, d.canary_percent, d.upstream_id,
                 d.canary_upstream_id, d.shadow_version_id, d.shadow_upstream_id, d.shadow_percent, dict(d.prices or {}))
                for d in s.scalars(select(Deployment).order_by(Deployment.org_id, Deployment.name))]
        return (deps, s.scalar(select(func.count()).select_from(UpstreamEndpoint)),
                s.scalar(select(func.count()).select_from(DeploymentChange)))


def _deployment(database: Database, org_id: str, name: str = "support") -> Deployment:
    with database.session(write=False) as s:
        row = Deployments(s).get(org_id, name)
        s.expunge(row)
        return row


def _chat(client: Any, key: str, model: str = "support") -> str:
    reply = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                        json={"model": model, "messages": [{"role": "user", "content": "hello"}]})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def test_member_sets_an_upstream_primary_a_shadow_and_prices_and_the_page_shows_each_arm(
    client: Any, world: World, database: Database, upstream: FakeUpstream
) -> None:
    acme = world.acme
    sign_in(client, acme.member)
    page = _html(client.get(PAGE), 200)
    assert "Adapter bot@2" in page and "bot@3" in page and 'type="password"' in page
    assert not _chat(client, acme.key).startswith("teacher:")  # the adapter answers

    done = _post(client, f"{PAGE}/upstream", _form(upstream))
    assert done.status_code == 303 and done.headers["location"] == f"{PAGE}?done=upstream-4", done.text
    row = _deployment(database, acme.id)
    assert row.upstream_id is not None and row.adapter_version_id is None and row.canary_version_id is not None
    with database.session(write=False) as s:
        stored = s.get(UpstreamEndpoint, row.upstream_id)
        assert stored is not None and KEY not in stored.key_ciphertext
        assert (stored.base_url, stored.model, stored.timeout_s, stored.connect_timeout_s, stored.max_retries) == (
            upstream.base_url, "teacher", 30.0, 2.0, 1)
    assert any(_chat(client, acme.key) == "teacher: hello" for _ in range(10))
    page = _html(client.get(f"{PAGE}?done=upstream-4"), 200)
    assert upstream.base_url in page and "<dd>teacher</dd>" in page and "<dt>API key</dt><dd>set</dd>" in page
    assert "30.0 s (connect 2.0 s)" in page and "<dt>Retries</dt><dd>1</dd>" in page
    assert "Replace the primary upstream" in page and "upstream teacher at " + upstream.base_url in page

    # a shadow adapter, then a shadow upstream, each with its share
    assert _post(client, f"{PAGE}/shadow", {"adapter": "bot@1", "percent": "30"}).status_code == 303
    row = _deployment(database, acme.id)
    assert row.shadow_version_id is not None and row.shadow_percent == 30 and row.shadow_upstream_id is None
    assert "Adapter bot@1 also sent 30 % of requests" in _html(client.get(PAGE), 200)
    shadow = _form(upstream, percent="5", timeout_s="", connect_timeout_s="", max_retries="")
    assert _post(client, f"{PAGE}/shadow", shadow).status_code == 303
    row = _deployment(database, acme.id)
    assert row.shadow_upstream_id is not None and row.shadow_version_id is None and row.shadow_percent == 5
    assert row.shadow_upstream_id != row.upstream_id  # a new immutable row
    page = _html(client.get(PAGE), 200)
    assert "Upstream also sent 5 % of requests" in page and "60.0 s (connect 5.0 s)" in page  # the defaults

    # prices: rows by model id, the whole list replaced; a row without a model id is left out
    prices = {"price_model": ["teacher", "bot@1", ""], "price_prompt": ["15", "1", ""],
              "price_completion": ["60", "2", ""], "price_currency": ["USD", "EUR", "USD"]}
    assert _post(client, f"{PAGE}/prices", prices).status_code == 303
    assert _deployment(database, acme.id).prices == {
        "teacher": {"prompt_per_1m": 15, "completion_per_1m": 60, "currency": "USD"},
        "bot@1": {"prompt_per_1m": 1, "completion_per_1m": 2, "currency": "EUR"}}
    page = _html(client.get(PAGE), 200)
    assert re.search(r"<td>teacher</td><td>15</td><td>60</td><td>USD</td>", page)
    assert 'name="price_model" type="text" value="bot@1"' in page  # the form starts from the list in force
    assert _post(client, f"{PAGE}/prices", {**prices, "price_model": ["teacher", "", ""]}).status_code == 303
    assert set(_deployment(database, acme.id).prices) == {"teacher"}

    # the REST view agrees with the page
    api = client.get("/api/deployments/support", headers={"Authorization": f"Bearer {acme.key}"}).json()
    assert api["upstream"]["api_key"] == "set" and api["shadow"]["percent"] == 5 and KEY not in str(api)

    # remove the shadow; the primary upstream, canary and prices stay
    assert _post(client, f"{PAGE}/shadow/remove", {}).status_code == 303
    row = _deployment(database, acme.id)
    assert row.shadow_upstream_id is None and row.shadow_percent == 0 and row.upstream_id is not None
    assert set(row.prices) == {"teacher"} and row.canary_version_id is not None
    page = _html(client.get(PAGE), 200)
    assert "Remove the shadow arm" not in page and "Add a shadow arm" in page
    # every revision names its arms; a rollback page shows the upstream it would restore or leave
    assert re.search(r"<td>\d+</td>\s*<td>update</td>\s*<td>upstream teacher at ", page)
    _html(client.get(f"{PAGE}/rollback"), 200)
    assert "upstream teacher at" in _html(client.get("/deployments"), 200)


def _refused_case(up: FakeUpstream) -> list[tuple[str, dict[str, Any], int, str, str]]:
    """(action, form, status, the field named, a value shown again) of each refused form."""
    return [
        (f"{PAGE}/upstream", _form(up, base_url="ftp://example.com/v1"), 400, "upstream.base_url", "ftp://example.com"),
        (f"{PAGE}/upstream", _form(up, api_key=""), 400, "upstream.api_key", 'value="teacher"'),
        (f"{PAGE}/upstream", _form(up, api_key="   "), 400, "upstream.api_key", 'value="teacher"'),
        (f"{PAGE}/upstream", _form(up, model="missing"), 400, "upstream.model", 'value="missing"'),
        (f"{PAGE}/upstream", _form(up, api_key=KEY[::-1]), 400, "upstream.api_key", 'value="teacher"'),
        (f"{PAGE}/upstream", _form(up, base_url=_closed_port()), 400, "upstream.base_url", 'value="30"'),
        (f"{PAGE}/upstream", _form(up, timeout_s="soon"), 400, "upstream.timeout_s", 'value="soon"'),
        (f"{PAGE}/upstream", _form(up, max_retries="9"), 400, "upstream.max_retries", 'value="9"'),
        (f"{PAGE}/shadow", _form(up, percent="0"), 400, "shadow.percent", 'value="teacher"'),
        (f"{PAGE}/shadow", _form(up, percent="100"), 400, "shadow.percent", 'value="100"'),
        (f"{PAGE}/shadow", {"adapter": "bot@1", "percent": "lots"}, 400, "shadow.percent", 'value="bot@1"'),
        (f"{PAGE}/shadow", _form(up, adapter="bot@1", percent="20"), 400, "shadow.upstream", 'value="bot@1"'),
        (f"{PAGE}/shadow", {"percent": "20"}, 400, "shadow.adapter", 'value="20"'),
        (f"{PAGE}/shadow", {"adapter": "nobot@1", "percent": "20"}, 404, "shadow.adapter", 'value="nobot@1"'),
        (f"{PAGE}/shadow", _form(up, model="missing", percent="20"), 400, "shadow.upstream.model", 'value="20"'),
        (f"{PAGE}/canary", _form(up, percent="0"), 400, "canary.percent", 'value="teacher"'),
        (f"{PAGE}/canary", _form(up, percent="100"), 400, "canary.percent", 'value="100"'),
        (f"{PAGE}/canary", {"adapter": "bot@1", "percent": "most"}, 400, "canary.percent", 'value="bot@1"'),
        (f"{PAGE}/canary", _form(up, adapter="bot@1", percent="20"), 400, "canary.upstream", 'value="bot@1"'),
        (f"{PAGE}/canary", {"percent": "20"}, 400, "canary.adapter", 'value="20"'),
        (f"{PAGE}/canary", {"adapter": "nobot@1", "percent": "20"}, 404, "canary.adapter", 'value="nobot@1"'),
        (f"{PAGE}/canary", _form(up, model="missing", percent="20"), 400, "canary.upstream.model", 'value="20"'),
        (f"{PAGE}/canary", _form(up, base_url="ftp://example.com/v1", percent="20"), 400, "canary.upstream.base_url",
         "ftp://example.com"),
        (f"{PAGE}/canary", _form(up, api_key="", percent="20"), 400, "canary.upstream.api_key", 'value="teacher"'),
        (f"{PAGE}/canary", _form(up, max_retries="9", percent="20"), 400, "canary.upstream.max_retries", 'value="9"'),
        (f"{PAGE}/prices", {"price_model": ["teacher"], "price_prompt": ["-1"], "price_completion": ["2"],
                            "price_currency": ["USD"]}, 400, "prices.teacher.prompt_per_1m", 'value="-1"'),
        (f"{PAGE}/prices", {"price_model": ["teacher"], "price_prompt": ["1"], "price_completion": [""],
                            "price_currency": ["USD"]}, 400, "prices.teacher.completion_per_1m", 'value="teacher"'),
        (f"{PAGE}/prices", {"price_model": ["teacher"], "price_prompt": ["1"], "price_completion": ["2"],
                            "price_currency": ["usd"]}, 400, "prices.teacher.currency", 'value="usd"'),
        ("/deployments", {"name": "both", "adapter": "bot@1", **_form(up)}, 400, "upstream", 'value="both"'),
        ("/deployments", {"name": "bad-url", **_form(up, base_url="file:///etc/passwd")}, 400, "upstream.base_url",
         'value="bad-url"'),
        ("/deployments", {"name": "gone", **_form(up, model="missing")}, 400, "upstream.model", 'value="gone"'),
        # the create form parses its upstream fields as the upstream, canary and shadow forms do (one parse)
        ("/deployments", {"name": "slow", **_form(up, timeout_s="soon")}, 400, "upstream.timeout_s", 'value="soon"'),
        ("/deployments", {"name": "slow", **_form(up, max_retries="x")}, 400, "upstream.max_retries", 'value="slow"'),
        (f"{PAGE}/shadow", _form(up, connect_timeout_s="fast", percent="20"), 400,
         "shadow.upstream.connect_timeout_s", 'value="fast"'),
        ("/deployments", {"name": "support", **_form(up)}, 409, "name", 'value="support"'),
    ]


def test_bad_input_re_renders_the_form_naming_the_field_writes_nothing_and_never_echoes_the_key(
    client: Any, world: World, database: Database, upstream: FakeUpstream
) -> None:
    sign_in(client, world.acme.owner)
    before = _snapshot(database)
    for action, data, status, field, shown in _refused_case(upstream):
        page = "/deployments" if action == "/deployments" else PAGE
        html = _html(_post(client, action, data, page=page), status)
        error = re.search(r'<p class="error" role="alert" id="(\w+)-error" data-param="([^"]*)">([^<]*)</p>', html)
        assert error is not None, (action, data, html[:3000])
        assert error.group(2) == field and error.group(3).startswith(field + ":"), (action, error.groups())
        assert shown in html, (action, shown)
        assert 'name="api_key" type="password" autocomplete="off" value=""' in html  # the key is not filled in
        assert _snapshot(database) == before, (action, data)
    assert upstream.requests == []  # no chat reached the upstream, only probes
    # the stored-XSS probe in every field is text, refused or stored
    for action, data in ((f"{PAGE}/shadow", {"adapter": XSS, "percent": "20"}),
                         ("/deployments", {"name": XSS, "base_url": XSS, "model": XSS, "api_key": KEY})):
        html = _html(_post(client, action, data, page="/deployments" if action == "/deployments" else PAGE), 400)
        assert XSS not in html and "<script>alert" not in html and "<img src=x" not in html, action
    assert _snapshot(database) == before
    assert _post(client, f"{PAGE}/upstream", _form(upstream, model=XSS)).status_code == 303  # the fake serves any
    for path in (PAGE, "/deployments", f"{PAGE}/rollback"):
        html = _html(client.get(path), 200)
        assert XSS not in html and "<script>alert" not in html and "&lt;script&gt;alert(&#39;xss&#39;)" in html, path


def test_no_upstream_secret_on_the_server_is_refused_naming_the_key_field(
    client: Any, world: World, database: Database, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEACHLOOP_UPSTREAM_KEY")
    monkeypatch.setenv("TEACHLOOP_UPSTREAM_KEY", "")
    sign_in(client, world.acme.member)
    before = _snapshot(database)
    html = _html(_post(client, f"{PAGE}/upstream", _form(upstream)), 400)
    assert "TEACHLOOP_UPSTREAM_KEY" in html and 'data-param="upstream.api_key"' in html
    assert _snapshot(database) == before


def test_creating_a_deployment_with_an_upstream_primary_from_the_list_page(
    client: Any, world: World, database: Database, upstream: FakeUpstream
) -> None:
    sign_in(client, world.acme.member)
    listing = _html(client.get("/deployments"), 200)
    assert 'action="/deployments"' in listing and 'id="create-api-key"' in listing
    done = _post(client, "/deployments", {"name": "hosted", **_form(upstream)}, page="/deployments")
    assert done.status_code == 303 and done.headers["location"] == "/deployments/hosted?done=created-1", done.text
    row = _deployment(database, world.acme.id, "hosted")
    assert row.upstream_id is not None and row.adapter_version_id is None and row.revision == 1
    assert _chat(client, world.acme.key, "hosted") == "teacher: hello"
    assert "upstream teacher at " + upstream.base_url in _html(client.get("/deployments"), 200)
    # unchecked, the upstream is not probed: an address that answers nothing is stored as given
    unchecked = {"name": "later", **_form(upstream, base_url=_closed_port())}
    del unchecked["check_upstream"]
    assert _post(client, "/deployments", unchecked, page="/deployments").status_code == 303
    assert _deployment(database, world.acme.id, "later").upstream_id is not None
    # an adapter primary works from the same form
    assert _post(client, "/deployments", {"name": "local", "adapter": "bot@1"}, page="/deployments").status_code == 303
    assert _deployment(database, world.acme.id, "local").adapter_version_id is not None


def test_viewers_csrf_and_other_organisations_are_refused_and_write_nothing(
    client: Any, app: Any, world: World, database: Database, upstream: FakeUpstream
) -> None:
    from fastapi.testclient import TestClient

    before = _snapshot(database)
    sign_in(client, world.acme.viewer)
    page = _html(client.get(PAGE), 200)
    assert 'type="password"' not in page and f'action="{PAGE}/shadow"' not in page
    assert 'action="/deployments"' not in _html(client.get("/deployments"), 200)
    assert f'action="{PAGE}/canary"' not in page and f"{PAGE}/promote" not in page
    for action, data in ((f"{PAGE}/upstream", _form(upstream)), (f"{PAGE}/shadow", {"adapter": "bot@1", "percent": "5"}),
                         (f"{PAGE}/canary", _form(upstream, percent="20")), (f"{PAGE}/canary/remove", {}),
                         (f"{PAGE}/promote", {}), (f"{PAGE}/split", {"percent": "50"}),
                         (f"{PAGE}/shadow/remove", {}), (f"{PAGE}/prices", {"price_model": ["x"]}),
                         ("/deployments", {"name": "v", **_form(upstream)})):
        _html(_post(client, action, data), 403)
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as member:
        sign_in(member, world.acme.member)
        token = csrf_of(member.get(PAGE).text)
        _html(member.post(f"{PAGE}/upstream", data=_form(upstream)), 403)  # no CSRF token
        _html(member.post(f"{PAGE}/canary", data=_form(upstream, percent="20")), 403)
        _html(member.post(f"{PAGE}/canary", data={**_form(upstream, percent="20"), "csrf_token": "0" * 64}), 403)
        _html(member.post(f"{PAGE}/promote", data={}), 403)
        _html(member.post(f"{PAGE}/upstream", data={**_form(upstream), "csrf_token": "0" * 64}), 403)
        theirs = member.post("/deployments/gx-only/upstream", data={**_form(upstream), "csrf_token": token})
        missing = member.post("/deployments/nothing/upstream", data={**_form(upstream), "csrf_token": token})
        assert _html(theirs, 404).replace("gx-only", "nothing") == _html(missing, 404)
        _html(member.post("/deployments/gx-only/shadow/remove", data={"csrf_token": token}), 404)
        theirs = member.post("/deployments/gx-only/canary", data={**_form(upstream, percent="20"), "csrf_token": token})
        missing = member.post("/deployments/nothing/canary", data={**_form(upstream, percent="20"), "csrf_token": token})
        assert _html(theirs, 404).replace("gx-only", "nothing") == _html(missing, 404)
        _html(member.post("/deployments/gx-only/canary/remove", data={"csrf_token": token}), 404)
    assert _snapshot(database) == before


def _upstream_count(database: Database) -> int:
    with database.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(UpstreamEndpoint)) or 0)


def test_an_upstream_canary_is_set_split_and_promoted_and_every_page_names_the_upstream(
    client: Any, world: World, database: Database, upstream: FakeUpstream
) -> None:
    acme = world.acme
    sign_in(client, acme.member)
    page = _html(client.get(PAGE), 200)
    assert f'action="{PAGE}/canary"' in page and 'id="canary-api-key"' in page and "Replace the canary" in page

    # a canary that is an upstream, for 30 % of users (the adapter primary stays)
    done = _post(client, f"{PAGE}/canary", _form(upstream, percent="30"))
    assert done.status_code == 303 and done.headers["location"] == f"{PAGE}?done=canary-4", done.text
    row = _deployment(database, acme.id)
    assert row.canary_upstream_id is not None and row.canary_version_id is None and row.canary_percent == 30
    assert row.adapter_version_id is not None and row.upstream_id is None
    canary_id, stored = row.canary_upstream_id, _upstream_count(database)
    assert any(_chat(client, acme.key) == "teacher: hello" for _ in range(40))  # some requests reach the canary
    label = f"upstream teacher at {upstream.base_url}"
    page = _html(client.get(PAGE), 200)
    assert "Upstream for 30 % of users:" in page and "<dt>API key</dt><dd>set</dd>" in page
    assert f'href="{PAGE}/promote"' in page and "End the canary" in page
    assert f"{label} · 30 %" in page  # the revision's row
    assert f"{label} · 30 %" in _html(client.get("/"), 200)  # the overview
    assert f"<td>{label}</td>" in _html(client.get("/deployments"), 200)
    assert f"canary {label} for 30 %" in _html(client.get("/loops/support"), 200)

    # the split: a dry run first, then the same upstream row at 60 %
    confirm = _html(client.get(f"{PAGE}/split", params={"percent": "60"}), 200)
    assert f"{label} for 30 % of users" in confirm and f"{label} for 60 % of users" in confirm
    assert _deployment(database, acme.id).canary_percent == 30
    assert _post(client, f"{PAGE}/split", {"percent": "60"}, page=f"{PAGE}/split?percent=60").status_code == 303
    row = _deployment(database, acme.id)
    assert (row.canary_upstream_id, row.canary_percent, row.revision) == (canary_id, 60, 5)
    assert _html(client.get(f"{PAGE}/split", params={"percent": "100"}), 400)

    # promotion: the canary's upstream row becomes the primary arm; nothing is stored anew, no key asked for
    confirm = _html(client.get(f"{PAGE}/promote"), 200)
    assert "serve the canary upstream to everyone" in confirm and f"<dd>{label}</dd>" in confirm
    assert _post(client, f"{PAGE}/promote", {}, page=f"{PAGE}/promote").status_code == 303
    row = _deployment(database, acme.id)
    assert (row.upstream_id, row.adapter_version_id, row.canary_upstream_id, row.canary_version_id,
            row.canary_percent, row.revision) == (canary_id, None, None, None, 0, 6)
    assert _upstream_count(database) == stored
    assert all(_chat(client, acme.key) == "teacher: hello" for _ in range(5))
    page = _html(client.get(PAGE), 200)
    assert "Promote the canary" not in page and "Start a canary" in page
    overview = _html(client.get("/"), 200)
    assert f"<td>{label}</td>" in overview and "<td>bot@2</td>" not in overview
    loop = _html(client.get("/loops/support"), 200)
    assert f"<dd>{label}</dd>" in loop and "base model" not in loop.split("Serving (revision")[1][:300]
    assert client.get(f"{PAGE}/promote").status_code == 409  # no canary any more

    # an adapter canary from the same form, then the canary ended; the primary upstream stays
    assert _post(client, f"{PAGE}/canary", {"adapter": "bot@3", "percent": "15"}).status_code == 303
    row = _deployment(database, acme.id)
    assert row.canary_version_id is not None and row.canary_upstream_id is None and row.canary_percent == 15
    assert f"<td>{label}</td>" in _html(client.get("/"), 200) and "bot@3 · 15 %" in _html(client.get("/"), 200)
    assert _post(client, f"{PAGE}/canary/remove", {}).status_code == 303
    row = _deployment(database, acme.id)
    assert (row.canary_version_id, row.canary_upstream_id, row.canary_percent, row.upstream_id) == (
        None, None, 0, canary_id)
    # the REST view agrees
    api = client.get("/api/deployments/support", headers={"Authorization": f"Bearer {acme.key}"}).json()
    assert api["upstream"]["model"] == "teacher" and api["canary"] is None and KEY not in str(api)


def test_the_loop_page_names_an_upstream_primary_as_the_baseline_of_an_iteration_that_started_on_it(
    client: Any, world: World, database: Database, upstream: FakeUpstream
) -> None:
    from teachloop.core.loop import Revisions
    from teachloop.store.repos.loops import Loops

    acme = world.acme
    sign_in(client, acme.member)
    assert _post(client, f"{PAGE}/upstream", _form(upstream)).status_code == 303
    row = _deployment(database, acme.id)
    assert row.upstream_id is not None and row.adapter_version_id is None
    with database.session() as s:  # as the runner starts an iteration: the deployed version, the revision in force
        loops = Loops(s)
        loop = loops.list(acme.id)[0]
        started = loops.start_iteration(acme.id, loop.id, "interval", baseline_version_id=row.adapter_version_id,
                                        revisions=Revisions(before=row.revision))
        loops.update_iteration(acme.id, started.id, gate={"passed": False, "reason": "not better",
                                                          "baseline": "upstream:teacher", "suites": []})
        gated = loops.start_iteration(acme.id, loop.id, "interval")  # no revision recorded: the gate's record says
        loops.update_iteration(acme.id, gated.id, gate={"passed": False, "reason": "not better",
                                                        "baseline": "upstream:teacher", "suites": []})
    # the deployment moves on (back to its adapter): the iteration still names what it started from
    assert _post(client, f"{PAGE}/rollback", {}, page=f"{PAGE}/rollback").status_code == 303
    assert _deployment(database, acme.id).upstream_id is None
    html = _html(client.get("/loops/support"), 200)

    def baseline(number: int) -> str:
        found = re.search(rf'id="it-{number}-h">.*?<dt>Baseline → candidate</dt><dd>([^<]*)</dd>', html, re.S)
        assert found is not None, number
        return found.group(1)

    assert baseline(started.number) == f"upstream teacher at {upstream.base_url} → —"
    assert baseline(gated.number) == "upstream teacher → —"
    assert baseline(1) == "base model → —" and baseline(2) == "bot@2 → bot@3"  # the seeded iterations, as before

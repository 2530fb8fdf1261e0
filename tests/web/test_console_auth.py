"""Console sign-in over the in-process app: passwords, cookies, CSRF, the rate limit, links, invitations, roles."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from fastapi import APIRouter
from sqlalchemy import func, select, update

from teachloop.app import AppDeps, create_app
from teachloop.core.tenancy import Role
from teachloop.store import Database
from teachloop.store.repos.sessions import MAX_PAIR_FAILURES, SigninLinks
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.console import ConsoleSession, SigninLink
from teachloop.store.schema.tenancy import Membership, User
from teachloop.store.schema.traces import Feedback
from teachloop.web.auth import SESSION_COOKIE
from tests.web.conftest import PASSWORD, World, csrf_of, post_form, sign_in


def _feedback_count(database: Database) -> int:
    with database.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(Feedback)) or 0)


def test_sign_in_sets_a_hardened_cookie_whose_token_is_stored_only_hashed(client: Any, world: World,
                                                                        database: Database) -> None:
    response = sign_in(client, world.acme.owner)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "="))
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert "secure" not in flags  # plain http here; https requests get Secure
    signed = cookie.split(";")[0].split("=", 1)[1].strip('"')
    token = signed.rsplit(".", 1)[0]
    with database.session(write=False) as s:
        rows = list(s.scalars(select(ConsoleSession)))
    assert len(rows) == 1 and rows[0].token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in rows[0].token_hash
    home = client.get("/")
    assert home.status_code == 200 and "acme" in home.text and world.acme.owner in home.text
    assert "script-src 'none'" in home.headers["content-security-policy"]


def test_https_requests_get_secure_cookies(app: Any, world: World) -> None:
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="https://console.test", follow_redirects=False) as client:
        response = sign_in(client, world.acme.owner)
    cookies = response.headers.get_list("set-cookie")
    assert cookies and all("secure" in c.lower() for c in cookies)


def test_unknown_user_and_wrong_password_get_the_same_answer(client: Any, world: World) -> None:
    wrong = sign_in(client, world.acme.owner, "not the password!")
    unknown = sign_in(client, "nobody@nowhere.test", "not the password!")
    assert wrong.status_code == unknown.status_code == 400
    assert "Wrong e-mail or password." in wrong.text and "Wrong e-mail or password." in unknown.text
    strip = lambda html: html.replace("nobody@nowhere.test", "X").replace(world.acme.owner, "X")  # noqa: E731
    assert strip(wrong.text).split('name="csrf_token"')[0] == strip(unknown.text).split('name="csrf_token"')[0]
    assert SESSION_COOKIE not in client.cookies


def test_failed_attempts_are_rate_limited_per_email_and_client(client: Any, world: World) -> None:
    for _ in range(MAX_PAIR_FAILURES):
        assert sign_in(client, world.acme.member, "wrong password!").status_code == 400
    blocked = sign_in(client, world.acme.member, PASSWORD)  # even the right password waits
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60"
    assert SESSION_COOKIE not in client.cookies
    assert sign_in(client, world.acme.viewer).status_code == 303  # another e-mail from this client is not blocked


def test_a_post_without_a_valid_csrf_token_is_403_and_changes_nothing(client: Any, world: World,
                                                                   database: Database) -> None:
    assert client.post("/signin", data={"email": world.acme.owner, "password": PASSWORD}).status_code == 403
    assert SESSION_COOKIE not in client.cookies
    sign_in(client, world.acme.owner)
    trace = world.acme.trace_ids[0]
    before = _feedback_count(database)
    for data in ({"score": "1"}, {"score": "1", "csrf_token": "0" * 64}, {"score": "1", "csrf_token": ""}):
        response = client.post(f"/traces/{trace}/feedback", data=data)
        assert response.status_code == 403 and "reload the page" in response.text
    # a token from another browser's session is no good either
    from fastapi.testclient import TestClient

    with TestClient(client.app, follow_redirects=False) as other:
        sign_in(other, world.acme.member)
        foreign = csrf_of(other.get(f"/traces/{trace}").text)
    assert client.post(f"/traces/{trace}/feedback", data={"score": "1", "csrf_token": foreign}).status_code == 403
    assert _feedback_count(database) == before
    ok = post_form(client, f"/traces/{trace}", f"/traces/{trace}/feedback", {"score": "1"})
    assert ok.status_code == 303 and _feedback_count(database) == before + 1


def test_sign_out_revokes_the_session_on_the_server(client: Any, world: World) -> None:
    sign_in(client, world.acme.owner)
    stolen = client.cookies.get(SESSION_COOKIE)
    out = post_form(client, "/", "/signout", {})
    assert out.status_code == 303 and out.headers["location"] == "/signin"
    client.cookies.set(SESSION_COOKIE, stolen)  # replaying the old cookie
    again = client.get("/traces")
    assert again.status_code == 303 and again.headers["location"] == "/signin?next=%2Ftraces"


def test_pages_need_a_session_and_next_never_leaves_the_site(client: Any, world: World) -> None:
    assert client.get("/settings").headers["location"] == "/signin?next=%2Fsettings"
    form = client.get("/signin")
    response = client.post("/signin", data={"email": world.acme.owner, "password": PASSWORD,
                                            "csrf_token": csrf_of(form.text), "next": "//evil.test/x"})
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_a_session_never_reaches_the_api(client: Any, world: World) -> None:
    sign_in(client, world.acme.owner)
    for path in ("/api/whoami", "/api/traces", "/v1/models"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/nowhere").status_code == 401  # unknown paths still answer 401 without a key
    assert client.get("/api/whoami", headers={"Authorization": f"Bearer {world.acme.key}"}).status_code == 200


def test_page_routes_may_not_claim_api_paths(settings: Any, database: Database, blobs: Any) -> None:
    bad = APIRouter()

    @bad.get("/api/console")
    def page() -> str:
        return "no"

    app = create_app(AppDeps(settings, database, blobs), pages=bad)
    from fastapi.testclient import TestClient

    with pytest.raises(ValueError, match="need an API key"), TestClient(app) as client:
        client.get("/healthz")


def test_roles_apply_to_pages_as_to_keys(client: Any, world: World, database: Database) -> None:
    sign_in(client, world.acme.viewer)
    trace = world.acme.trace_ids[0]
    assert client.get(f"/traces/{trace}").status_code == 200
    denied = post_form(client, f"/traces/{trace}", f"/traces/{trace}/feedback", {"score": "1"})
    assert denied.status_code == 403 and _feedback_count(database) == 0
    assert client.get("/settings").status_code == 403
    assert client.get("/deployments/support/rollback").status_code == 403
    with database.session() as s:  # a role change applies to the live session at once
        user = s.scalar(select(User).where(User.email == world.acme.viewer))
        s.execute(update(Membership).where(Membership.user_id == user.id).values(role="admin"))
    assert client.get("/settings").status_code == 200
    with database.session() as s:  # and a removed member's session stops working
        s.execute(Membership.__table__.delete().where(Membership.user_id == user.id))
    assert client.get("/").status_code == 303


def _link(database: Database, world: World, email: str, ttl: timedelta = timedelta(hours=1)) -> str:
    with database.session() as s:
        return SigninLinks(s).create_signin(world.acme.id, email, actor="test", ttl=ttl).token


def test_a_signin_link_works_once_and_can_set_the_password(client: Any, world: World, database: Database) -> None:
    token = _link(database, world, world.acme.member)
    shown = client.get(f"/signin/link/{token}")
    assert shown.status_code == 200 and world.acme.member in shown.text
    assert client.get(f"/signin/link/{token}").status_code == 200  # looking uses nothing
    short = client.post(f"/signin/link/{token}", data={"password": "short", "password_again": "short",
                                                       "csrf_token": csrf_of(shown.text)})
    assert short.status_code == 400 and "10-1024 characters" in short.text  # the link is still good
    used = client.post(f"/signin/link/{token}", data={"password": "a brand new password",
                                                      "password_again": "a brand new password",
                                                      "csrf_token": csrf_of(shown.text)})
    assert used.status_code == 303 and client.get("/").status_code == 200
    client.cookies.clear()
    again = client.get(f"/signin/link/{token}")
    assert again.status_code == 410 and "already used" in again.text
    assert sign_in(client, world.acme.member, "a brand new password").status_code == 303


def test_expired_and_unknown_links_are_refused(client: Any, world: World, database: Database) -> None:
    token = _link(database, world, world.acme.member)
    shown = client.get(f"/signin/link/{token}")
    with database.session() as s:
        s.execute(update(SigninLink).values(expires_at=utc_now() - timedelta(seconds=1)))
    for path in (f"/signin/link/{token}", "/signin/link/not-a-token"):
        assert client.get(path).status_code == 410
    refused = client.post(f"/signin/link/{token}", data={"csrf_token": csrf_of(shown.text)})
    assert refused.status_code == 410 and SESSION_COOKIE not in client.cookies


def test_an_invitation_makes_a_member_with_its_role(client: Any, world: World, database: Database) -> None:
    sign_in(client, world.acme.admin)
    made = post_form(client, "/settings", "/settings/invitations", {"email": "New.Person@acme.test", "role": "viewer"})
    assert made.status_code == 201 and "/signin/link/" in made.text
    url = made.text.split('id="new-link-url" class="secret" type="text" readonly value="')[1].split('"')[0]
    path = url.split("testserver", 1)[1]
    assert "new.person@acme.test" in client.get("/settings").text  # pending
    owner_invite = post_form(client, "/settings", "/settings/invitations", {"email": "boss@acme.test", "role": "owner"})
    assert owner_invite.status_code == 403  # only an owner invites an owner
    dup = post_form(client, "/settings", "/settings/invitations", {"email": world.acme.viewer, "role": "member"})
    assert dup.status_code == 409
    client.cookies.clear()
    form = client.get(path)
    assert form.status_code == 200 and "viewer" in form.text
    joined = client.post(path, data={"name": "New Person", "password": "invitee password",
                                     "password_again": "invitee password", "csrf_token": csrf_of(form.text)})
    assert joined.status_code == 303
    with database.session(write=False) as s:
        user = s.scalar(select(User).where(User.email == "new.person@acme.test"))
        role = s.scalar(select(Membership.role).where(Membership.user_id == user.id,
                                                      Membership.org_id == world.acme.id))
    assert role == Role.VIEWER.value and user.name == "New Person" and user.password_hash.startswith("$argon2id$")
    assert client.get("/").status_code == 200 and client.get("/settings").status_code == 403

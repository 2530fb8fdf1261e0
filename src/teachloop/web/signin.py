"""Sign-in pages: ``/signin`` (password), ``/signout``, ``/signin/link/{token}`` (sign-in links and invitations).

- A wrong password and an unknown e-mail get the same 400 page with the same
  message (``Passwords.check`` also spends the same hashing work on both).
  Failed attempts count per (e-mail, client address) and per client address;
  past the limit the answer is 429 before any password is checked.
- A successful sign-in starts a new session (a new token, never the one the
  browser came with) and redirects to ``next`` when it is a path on this site.
- ``GET /signin/link/{token}`` only shows the link (mail scanners that follow
  links use nothing); the form's POST uses it. An unknown, expired, revoked or
  already-used link gets one 410 page. A link whose user has no password yet
  asks for one (the first owner, an invitee); a refused password leaves the
  link usable.
- ``/signout`` revokes the session on the server and clears the cookie.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response

from teachloop.core.errors import InvalidInput
from teachloop.store.repos.sessions import ConsoleSessions, Passwords, SigninAttempts, SigninLinks
from teachloop.web.auth import (
    MaybeSignedIn,
    app_deps,
    end_session,
    require_csrf,
    session_token,
    start_session,
)
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

WRONG_CREDENTIALS = "Wrong e-mail or password."


def safe_next(target: str | None) -> str:
    """``target`` when it is a path on this site, else ``/`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\n" in target:
        return "/"
    return target


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


@router.get("/signin")
def signin_form(request: Request, viewer: MaybeSignedIn, next: str = "/") -> Response:
    """The sign-in form (signed-in members go straight on)."""
    if viewer is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return page(request, "signin.html", next=safe_next(next), email="", message=None)


@router.post("/signin")
def signin(
    request: Request,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Check the password; start a session or count a failed attempt."""
    database = app_deps(request).database
    client = _client(request)
    with database.session(write=False) as session:
        SigninAttempts(session).check(email, client)  # 429 before any password is checked
        found = Passwords(session).check(email, password) if email and password else None
    with database.session() as session:
        attempts = SigninAttempts(session)
        if found is None:
            attempts.record_failure(email, client)
        else:
            attempts.clear(email, client)
            created = ConsoleSessions(session).create(*found)
    if found is None:
        return page(request, "signin.html", status=400, next=safe_next(next), email=email,
                    message=WRONG_CREDENTIALS)
    start_session(request, created.token)
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/signout")
def signout(request: Request) -> Response:
    """End the session on the server and in the browser."""
    with app_deps(request).database.session() as session:
        ConsoleSessions(session).revoke(session_token(request))
    end_session(request)
    return RedirectResponse("/signin", status_code=303)


@router.get("/signin/link/{token}")
def link_form(request: Request, token: str) -> Response:
    """What a sign-in link or invitation does, and the form that uses it."""
    with app_deps(request).database.session(write=False) as session:
        link = SigninLinks(session).peek(token)
    return page(request, "link.html", link=link, token=token, message=None)


@router.post("/signin/link/{token}")
def use_link(
    request: Request,
    token: str,
    password: Annotated[str, Form(max_length=1024)] = "",
    password_again: Annotated[str, Form(max_length=1024)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Use the link once: set the password (if given), join the organisation (an invitation), sign in."""
    database = app_deps(request).database
    try:
        if password != password_again:
            raise InvalidInput("the two passwords differ", param="password_again")
        with database.session() as session:
            org_id, user_id = SigninLinks(session).consume(token, password=password or None, name=name)
            created = ConsoleSessions(session).create(org_id, user_id)
    except InvalidInput as err:  # the link stays usable: show its form again with what to fix
        with database.session(write=False) as session:
            link = SigninLinks(session).peek(token)
        return page(request, "link.html", status=400, link=link, token=token, message=err.message)
    start_session(request, created.token)
    return RedirectResponse("/", status_code=303)


__all__ = ["WRONG_CREDENTIALS", "router", "safe_next"]

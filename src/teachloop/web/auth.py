"""Console authentication: the session cookie, CSRF tokens, and the signed-in ``Viewer``.

Cookies (both ``HttpOnly``, ``SameSite=Lax``, ``Path=/``, and ``Secure`` when the
request came over https):

- ``tl_session``: the session token, signed with ``itsdangerous`` under the
  install's console key (``store.repos.sessions.server_secret``). The token is
  random; the database keeps only its sha256, so sign-out and revocation end it
  on the server whatever the browser keeps.
- ``tl_csrf``: a random nonce, signed the same way, set by the first console
  response that needs it.

A CSRF token is ``HMAC(console key, nonce + session token)``: every form
carries it in a hidden ``csrf_token`` field, and ``require_csrf`` (a dependency
of every console router) answers any POST whose field is missing or wrong with
403 ``csrf_failed`` before the handler runs, so nothing changes. Forms shown
before sign-in (sign-in, sign-in links) are bound to the nonce alone, which
stops login CSRF too.

``current_viewer`` resolves the session cookie to a ``Viewer``: the session and
a ``core.tenancy.Principal`` (org, user, ``key_id`` = the session id, the
member's role *now*), the same principal an API key gives, so pages call the
same services with the same role checks (``require``). No session:
``SignInRequired``, which ``render.ConsoleRoute`` turns into a redirect to
the sign-in page. Cookies never authenticate ``/v1`` or ``/api``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from itsdangerous import BadSignature, Signer
from starlette.responses import Response

from teachloop.app.deps import AppDeps
from teachloop.core.errors import Conflict, Forbidden, ServiceUnavailable
from teachloop.core.tenancy import Principal, Role
from teachloop.serve.service import Serving
from teachloop.store.repos.sessions import SESSION_TTL, ConsoleSessions, SessionInfo, server_secret

SESSION_COOKIE = "tl_session"
NONCE_COOKIE = "tl_csrf"
CSRF_FIELD = "csrf_token"
KEY_NAME = "console-signing-key"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):
    """The page needs a signed-in session and the request has none (redirected to ``/signin``)."""


class CsrfRejected(Forbidden):
    """A form post without the CSRF token of this browser's session (HTTP 403)."""

    code = "csrf_failed"


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in member of a console request."""

    principal: Principal
    session: SessionInfo

    @property
    def role(self) -> Role:
        """The member's role in the organisation, as of this request."""
        return self.principal.role

    def can(self, role: Role) -> bool:
        """Whether the member's role includes ``role`` (owner > admin > member > viewer)."""
        return self.role.at_least(role)


def app_deps(request: Request) -> AppDeps:
    """The ``AppDeps`` the app was created with."""
    deps: AppDeps = request.app.state.deps
    return deps


def serving_of(request: Request) -> Serving:
    """The app's ``Serving`` runtime (deployment changes resync its adapters)."""
    serving = getattr(request.app.state, "serving", None)
    if not isinstance(serving, Serving):
        raise ServiceUnavailable("serving is not configured on this server")
    return serving


def signing_key(request: Request) -> bytes:
    """The install's console key (from the database once per app, created on first use)."""
    key = getattr(request.app.state, "console_key", None)
    if isinstance(key, bytes):
        return key
    database = app_deps(request).database
    for attempt in range(2):
        try:
            with database.session() as session:
                value = server_secret(session, KEY_NAME)
            break
        except Conflict:  # another process created it at the same moment: read theirs
            if attempt:
                raise
    key = value.encode()
    request.app.state.console_key = key
    return key


def _signer(request: Request, purpose: str) -> Signer:
    return Signer(signing_key(request), salt=f"teachloop.console.{purpose}")


def _unsigned(request: Request, cookie: str, purpose: str) -> str | None:
    raw = request.cookies.get(cookie)
    if not raw:
        return None
    try:
        return _signer(request, purpose).unsign(raw).decode()
    except (BadSignature, UnicodeDecodeError):
        return None


def session_token(request: Request) -> str | None:
    """The session token of the request's cookie (None when absent or not signed by this install)."""
    if hasattr(request.state, "new_session_token"):
        return request.state.new_session_token  # type: ignore[no-any-return]
    return _unsigned(request, SESSION_COOKIE, "session")


def _nonce(request: Request) -> tuple[str, bool]:
    """(nonce, whether it came from the browser's cookie)."""
    pending = getattr(request.state, "new_nonce", None)
    if isinstance(pending, str):
        return pending, False
    found = _unsigned(request, NONCE_COOKIE, "nonce")
    if found:
        return found, True
    request.state.new_nonce = secrets.token_urlsafe(24)
    return request.state.new_nonce, False


def csrf_token(request: Request) -> str:
    """The CSRF token forms of this response carry (bound to the nonce and the session token)."""
    nonce, _ = _nonce(request)
    message = f"{nonce}\0{session_token(request) or ''}".encode()
    return hmac.new(signing_key(request), message, hashlib.sha256).hexdigest()


async def require_csrf(request: Request) -> None:
    """Dependency of every console router: ``CsrfRejected`` (403) for a POST without this browser's token."""
    if request.method in _SAFE_METHODS:
        return
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    _, known = _nonce(request)
    if not known or not isinstance(sent, str) or not hmac.compare_digest(sent, csrf_token(request)):
        raise CsrfRejected("this form has expired or did not come from this console; reload the page and try again")


def start_session(request: Request, token: str) -> None:
    """Set the session cookie for ``token`` on this request's response (after a successful sign-in)."""
    request.state.new_session_token = token


def end_session(request: Request) -> None:
    """Clear the session cookie on this request's response (sign-out)."""
    request.state.new_session_token = None


def set_pending_cookies(request: Request, response: Response) -> None:
    """Write the cookies this request decided on (the CSRF nonce, a new or ended session)."""
    secure = request.url.scheme == "https"
    nonce = getattr(request.state, "new_nonce", None)
    if isinstance(nonce, str):
        signed = _signer(request, "nonce").sign(nonce).decode()
        response.set_cookie(NONCE_COOKIE, signed, httponly=True, samesite="lax", secure=secure, path="/")
    if hasattr(request.state, "new_session_token"):
        token = request.state.new_session_token
        if token is None:
            response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure)
        else:
            signed = _signer(request, "session").sign(token).decode()
            response.set_cookie(
                SESSION_COOKIE, signed, max_age=int(SESSION_TTL.total_seconds()), httponly=True, samesite="lax",
                secure=secure, path="/",
            )


def optional_viewer(request: Request) -> Viewer | None:
    """The signed-in member, or None (blocking: one database read)."""
    token = session_token(request)
    if not token:
        return None
    with app_deps(request).database.session(write=False) as session:
        info = ConsoleSessions(session).resolve(token)
    if info is None:
        return None
    viewer = Viewer(Principal(org_id=info.org_id, user_id=info.user_id, key_id=info.id, role=info.role), info)
    request.state.viewer = viewer
    return viewer


def current_viewer(request: Request) -> Viewer:
    """The signed-in member; ``SignInRequired`` (a redirect to the sign-in page) without a live session."""
    viewer = optional_viewer(request)
    if viewer is None:
        raise SignInRequired
    return viewer


def require(viewer: Viewer, role: Role, action: str) -> None:
    """``Forbidden`` (403) unless the member's role includes ``role`` -- the check the API makes of a key."""
    if not viewer.can(role):
        raise Forbidden(f"{action} needs the {role.value} role or higher; you are {viewer.role.value}")


SignedIn = Annotated[Viewer, Depends(current_viewer)]
MaybeSignedIn = Annotated[Viewer | None, Depends(optional_viewer)]

__all__ = [
    "CSRF_FIELD",
    "NONCE_COOKIE",
    "SESSION_COOKIE",
    "CsrfRejected",
    "MaybeSignedIn",
    "SignInRequired",
    "SignedIn",
    "Viewer",
    "app_deps",
    "csrf_token",
    "current_viewer",
    "end_session",
    "optional_viewer",
    "require",
    "require_csrf",
    "serving_of",
    "session_token",
    "set_pending_cookies",
    "signing_key",
    "start_session",
]

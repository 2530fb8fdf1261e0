"""Authentication: ``Authorization: Bearer <key>`` -> ``Principal``.

``authenticate_request`` checks a key. ``guard.RequestGuard`` calls it for every request
but the public health check before the body is read (so a keyless request is
401 whatever its body) and leaves the ``Principal`` on the request's state.
``require_principal`` is the dependency ``create_app`` puts on every router
except the public one: it returns that principal, or checks the key itself when
the app runs without the guard, and it is what marks the routes as secured in
the OpenAPI document. A handler that needs the caller declares ``principal:
CurrentPrincipal``; a platform-operator route declares ``principal: Operator``
(``require_operator``: 403 for every organisation role). The key check itself lives in ``store.repos.keys.authenticate_key``
(one Core statement in a read transaction, no ORM session); the key's ``last_used_at`` is refreshed
separately, at most once a minute, and a busy database never fails a request
over it.

The dependencies are coroutines: FastAPI runs a plain ``def`` dependency in its
thread pool, one thread hop per dependency per request. ``authenticate_request``
reads the key through ``Database.run_read`` (in the event loop's thread on SQLite,
in a worker thread on PostgreSQL); only the once-a-minute write goes to a thread.

This module is the one place routers get the caller and the app's runtime from:
``Viewer`` (reads), ``Member`` (writes), ``Admin`` (grants), ``Operator``
(platform), ``Deps`` (``AppDeps``) and ``ServingDep`` (the ``serve.Serving``
runtime on ``app.state.serving``; 503 when the app has none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from teachloop.app.deps import AppDeps
from teachloop.core.errors import Forbidden, ServiceUnavailable, Unauthorized
from teachloop.core.tenancy import Principal, Role
from teachloop.serve.service import Serving
from teachloop.store.repos.keys import ApiKeys, authenticate_key, is_due

_bearer = HTTPBearer(auto_error=False, description="A teachloop API key: `tl_<prefix>_<secret>`.")


async def get_deps(request: Request) -> AppDeps:
    """The ``AppDeps`` the app was created with."""
    deps: AppDeps = request.app.state.deps
    return deps


def current_serving(request: Request) -> Serving:
    """The ``Serving`` runtime of the app; ``ServiceUnavailable`` (503) when it has none."""
    serving = getattr(request.app.state, "serving", None)
    if not isinstance(serving, Serving):
        raise ServiceUnavailable("serving is not configured on this server")
    return serving


#: The prefix the Tinker SDK requires of API keys; ``X-API-Key: tml-<teachloop key>`` authenticates as that key.
TINKER_KEY_PREFIX = "tml-"


def bearer_header(authorization: str | None, x_api_key: str | None) -> str | None:
    """The ``Authorization`` value to check: the header itself, else ``Bearer <key>`` for a Tinker SDK
    ``X-API-Key: tml-<key>`` (the Tinker API's clients; the key's organisation and role apply)."""
    if authorization is not None or x_api_key is None:
        return authorization
    key = x_api_key.strip()
    return f"Bearer {key.removeprefix(TINKER_KEY_PREFIX)}"


def check_key(deps: AppDeps, header: str | None) -> tuple[Principal, bool]:
    """The caller named by an ``Authorization`` header value, and whether its ``last_used_at`` is due a refresh;
    ``Unauthorized`` (401) when missing, unknown or revoked. Blocking, one read transaction (no write lock)."""
    secret = None
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("the Authorization header must read `Bearer <API key>`")
        secret = value.strip()
    with deps.database.connection(write=False) as conn:  # Core, no ORM session; no write lock on the request path
        principal, last_used = authenticate_key(conn, secret)
    return principal, is_due(last_used)


def touch_key(deps: AppDeps, key_id: str) -> None:
    """Refresh the key's ``last_used_at`` (if still stale); best effort: a busy database is ignored. Blocking."""
    with contextlib.suppress(ServiceUnavailable), deps.database.session() as session:
        ApiKeys(session).touch(key_id)


async def authenticate_request(deps: AppDeps, header: str | None) -> Principal:
    """The caller named by an ``Authorization`` header value; ``Unauthorized`` (401) when missing, unknown or
    revoked. The read (``check_key``) goes through ``Database.run_read`` (no thread hop on SQLite); the
    once-a-minute ``last_used_at`` write (``touch_key``) runs in a worker thread (it may wait for SQLite's lock)."""
    principal, stale = await deps.database.run_read(check_key, deps, header)
    if stale:
        await to_thread.run_sync(touch_key, deps, principal.key_id)
    return principal


async def _caller(request: Request) -> Principal:
    """The principal the guard left on the request, else the bearer key checked now (and left there)."""
    known = getattr(request.state, "principal", None)
    if isinstance(known, Principal):  # the guard authenticated this request already
        return known
    header = bearer_header(request.headers.get("authorization"), request.headers.get("x-api-key"))
    principal = await authenticate_request(request.app.state.deps, header)
    request.state.principal = principal
    return principal


async def require_principal(
    request: Request,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    """The caller, from the bearer API key; ``Unauthorized`` (401) when missing, unknown or revoked.

    The role checks (``require_role``, ``require_operator``) get the caller the same way (``_caller``) rather
    than through ``Depends(require_principal)``, and this reads ``AppDeps`` off ``request.app.state`` rather than
    through ``Depends(get_deps)``: FastAPI solves a cached dependency's sub-dependencies again wherever it is
    named, and each solve costs more CPU than the read. Every router in ``routes.PROTECTED`` depends on this one,
    which is what documents the security scheme of its routes."""
    return await _caller(request)


async def require_operator(request: Request) -> Principal:
    """The caller, who must hold a platform operator key; ``Forbidden`` (403) for any organisation role."""
    principal = await _caller(request)
    if principal.role is not Role.OPERATOR:
        raise Forbidden(
            f"this route is for the platform operator (a key from `teachloop admin keys operator`); "
            f"this key has the {principal.role.value} role"
        )
    return principal


def require_role(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller, whose role must include ``role`` (owner > admin > member > viewer); else 403."""

    async def check(request: Request) -> Principal:
        principal = await _caller(request)
        if not principal.role.at_least(role):
            raise Forbidden(f"this call needs the {role.value} role or higher; this key has {principal.role.value}")
        return principal

    return check


Deps = Annotated[AppDeps, Depends(get_deps)]
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
Operator = Annotated[Principal, Depends(require_operator)]
#: A caller with at least the viewer role (reads).
Viewer = Annotated[Principal, Depends(require_role(Role.VIEWER))]
#: A caller with at least the member role (writes).
Member = Annotated[Principal, Depends(require_role(Role.MEMBER))]
#: A caller with at least the admin role (grants to other organisations).
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]
async def _serving(request: Request) -> Serving:
    return current_serving(request)


#: The app's serving runtime.
ServingDep = Annotated[Serving, Depends(_serving)]

__all__ = ["TINKER_KEY_PREFIX", "Admin", "CurrentPrincipal", "Deps", "Member", "Operator", "ServingDep", "Viewer",
           "authenticate_request", "bearer_header", "check_key",
           "current_serving", "get_deps", "require_operator", "require_principal", "require_role", "touch_key"]

"""Authentication: ``Authorization: Bearer <key>`` -> ``Principal``.

``require_principal`` is the one dependency that does it. ``create_app`` puts it
on every router except the public health check, so a route is authenticated
by default; a handler that needs the caller declares ``principal: CurrentPrincipal``
(FastAPI runs the dependency once per request either way). The key check itself
lives in ``store.ApiKeys.authenticate`` and runs in a read transaction; the key's
``last_used_at`` is refreshed separately, at most once a minute, and a busy
database never fails a request over it.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from teachloop.app.deps import AppDeps
from teachloop.core.errors import ServiceUnavailable, Unauthorized
from teachloop.core.tenancy import Principal
from teachloop.store.repos.keys import ApiKeys

_bearer = HTTPBearer(auto_error=False, description="A teachloop API key: `tl_<prefix>_<secret>`.")


def get_deps(request: Request) -> AppDeps:
    """The ``AppDeps`` the app was created with."""
    deps: AppDeps = request.app.state.deps
    return deps


def require_principal(
    request: Request,
    deps: Annotated[AppDeps, Depends(get_deps)],
    _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    """The caller, from the bearer API key; ``Unauthorized`` (401) when missing, unknown or revoked."""
    header = request.headers.get("authorization")
    secret = None
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("the Authorization header must read `Bearer <API key>`")
        secret = value.strip()
    with deps.database.session(write=False) as session:  # no write lock on the request path
        keys = ApiKeys(session)
        principal = keys.authenticate(secret, touch=False)
        stale = keys.is_stale(principal.key_id)
    if stale:  # at most once a minute per key; best effort
        with contextlib.suppress(ServiceUnavailable), deps.database.session() as session:
            ApiKeys(session).touch(principal.key_id)
    request.state.principal = principal
    return principal


Deps = Annotated[AppDeps, Depends(get_deps)]
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]

__all__ = ["CurrentPrincipal", "Deps", "get_deps", "require_principal"]

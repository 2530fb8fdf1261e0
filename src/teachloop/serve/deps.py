"""What the serving routers take from a request: the caller and the ``Serving`` runtime.

The app (layer L4) authenticates every protected request before a handler
runs and leaves the ``Principal`` on ``request.state.principal``; it puts the
``Serving`` it was built with on ``app.state.serving``. These helpers read
them back, so ``serve/`` never imports the app. A route reached without the
app's authentication answers 401 rather than running unauthenticated.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from teachloop.core.errors import Forbidden, ServiceUnavailable, Unauthorized
from teachloop.core.tenancy import Principal, Role
from teachloop.serve.service import Serving


def current_principal(request: Request) -> Principal:
    """The authenticated caller of this request."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise Unauthorized("this route needs an API key (Authorization: Bearer <key>)")
    return principal


def current_serving(request: Request) -> Serving:
    """The ``Serving`` runtime of the app."""
    serving = getattr(request.app.state, "serving", None)
    if not isinstance(serving, Serving):
        raise ServiceUnavailable("serving is not configured on this server")
    return serving


def require_role(principal: Principal, role: Role, action: str) -> None:
    """``Forbidden`` unless the caller's role includes ``role``."""
    if not principal.role.at_least(role):
        raise Forbidden(f"{action} needs the {role.value} role or higher; this key has {principal.role.value}")


def reader(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """The caller, who must be at least a viewer."""
    require_role(principal, Role.VIEWER, "reading serving data")
    return principal


def writer(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """The caller, who must be at least a member."""
    require_role(principal, Role.MEMBER, "this call")
    return principal


ServingDep = Annotated[Serving, Depends(current_serving)]
Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]

__all__ = ["Reader", "ServingDep", "Writer", "current_principal", "current_serving", "require_role"]

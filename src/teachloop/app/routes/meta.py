"""Health, identity and the API description: ``/healthz``, ``/api/whoami``, ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from teachloop import __version__
from teachloop.app.auth import CurrentPrincipal, Deps
from teachloop.core.errors import TeachloopError
from teachloop.store.db import head_revision
from teachloop.store.repos.tenancy import Tenancy
from teachloop.store.schema.tenancy import User

public = APIRouter(tags=["meta"])
api = APIRouter(prefix="/api", tags=["meta"])


class Health(BaseModel):
    """Whether the server can do its work."""

    status: str = Field(description="ok, or unavailable when a dependency is down.")
    version: str = Field(description="teachloop version.")
    database: str = Field(description="ok, or why the database cannot be used.")


class OrgRef(BaseModel):
    id: str
    name: str


class UserRef(BaseModel):
    id: str
    email: str
    name: str


class WhoAmI(BaseModel):
    """Who the API key belongs to."""

    org: OrgRef = Field(description="The organisation every call with this key acts in.")
    user: UserRef | None = Field(description="The key's user; null for a service key.")
    role: str = Field(description="The role the key grants.")
    key_id: str = Field(description="Id of the key used.")


@public.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(deps: Deps) -> Any:
    """Liveness and database reachability; no API key needed."""
    try:
        current = deps.database.current_revision()
        database = "ok" if current == head_revision() else f"schema at {current}, expected {head_revision()}"
    except TeachloopError as err:
        database = str(err)
    ok = database == "ok"
    body = Health(status="ok" if ok else "unavailable", version=__version__, database=database)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@api.get("/whoami", response_model=WhoAmI)
def whoami(principal: CurrentPrincipal, deps: Deps) -> WhoAmI:
    """The organisation, user and role of the calling API key."""
    with deps.database.session(write=False) as session:
        org = Tenancy(session).get_org(principal.org_id)
        user = session.get(User, principal.user_id) if principal.user_id else None
        return WhoAmI(
            org=OrgRef(id=org.id, name=org.name),
            user=UserRef(id=user.id, email=user.email, name=user.name) if user else None,
            role=principal.role.value,
            key_id=principal.key_id,
        )


@api.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> dict[str, Any]:
    """The OpenAPI document of this server."""
    document: dict[str, Any] = request.app.openapi()
    return document


__all__ = ["api", "public"]

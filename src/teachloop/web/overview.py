"""The overview page (``/``): deployments with adapter and canary, request counts, the loops' state.

Request counts come from the stored traces (the last 24 hours and all time,
per deployment) and this server's live figures for the organisation
(``serve.Usage``: in flight, completed, failed since it started). Each loop
shows its deployment, whether it is on, its phase, its note and last tick.
Needs the viewer role; everything is the signed-in member's organisation's.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Request
from starlette.responses import RedirectResponse, Response

from teachloop.core.tenancy import Role
from teachloop.store.repos.loops import Loops
from teachloop.store.repos.traces import TraceFilter, Traces
from teachloop.store.schema.base import utc_now
from teachloop.web.auth import SignedIn, app_deps, require, require_csrf
from teachloop.web.deployments import deployment_rows
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

RECENT = timedelta(hours=24)


@router.get("/")
def overview(request: Request, viewer: SignedIn) -> Response:
    """Deployments, traffic and the loops of the organisation at a glance."""
    if viewer.role is Role.EXPERT:  # an expert reads no tenant data: their home is their work
        return RedirectResponse("/work", status_code=303)
    require(viewer, Role.VIEWER, "reading the overview")
    org = viewer.principal.org_id
    since = utc_now() - RECENT
    with app_deps(request).database.session(write=False) as session:
        traces = Traces(session)
        rows = [
            (d, state, traces.count(org, TraceFilter(deployment_id=d.id, since=since)),
             traces.count(org, TraceFilter(deployment_id=d.id)))
            for d, state in deployment_rows(session, org)
        ]
        names = {d.id: d.name for d, *_ in rows}
        loops = [(loop, names.get(loop.deployment_id, loop.deployment_id)) for loop in Loops(session).list(org)]
        total = traces.count(org)
        with_feedback = traces.count(org, TraceFilter(has_feedback=True))
    serving = getattr(request.app.state, "serving", None)
    usage = serving.usage.of(org) if serving is not None else None
    return page(request, "overview.html", rows=rows, loops=loops, total=total, with_feedback=with_feedback,
                usage=usage)


__all__ = ["router"]

"""teachloop.web -- the console: server-rendered pages over the same services as the API (layer L5).

``create_console_app(deps)`` is the whole server: ``app.create_app`` with the
console's ``router`` as its pages (``teachloop up`` and ``serve`` run it).
The app layer never imports this package; it only mounts the router it is
given, lets its paths through without an API key, and refuses page paths under
``/v1``, ``/api`` and ``/metrics``.

How the console is built (see ``docs/console.md`` for adding a page):

- ``auth``: the session cookie, CSRF tokens, the signed-in ``Viewer`` (whose
  ``principal`` is the same ``core.tenancy.Principal`` an API key gives).
- ``render``: the Jinja2 environment (autoescape always on), ``page()``,
  ``ConsoleRoute`` (HTML errors, redirects to sign-in, security headers) and ``NAV``.
- one module per area, each an ``APIRouter(route_class=ConsoleRoute,
  dependencies=[Depends(require_csrf)])``: ``signin``, ``overview``, ``traces``,
  ``deployments``, ``loops``, ``runs``, ``environments``, ``datasets``,
  ``market``, ``work`` (the expert's pages) and ``work_owner`` (the project
  owner's), ``settings``; ``router`` below includes them all. ``charts`` computes the
  server-rendered SVG line charts that ``templates/_chart.html`` draws.
- ``templates/`` (``base.html`` holds the layout, skip link and navigation) and
  ``static/console.css``, served at ``/static/console.css``. Every page reads and
  every action posts as a plain HTML form; the one script, ``static/work.js``, only
  adds keyboard shortcuts to the expert's work pages (which alone allow it in their
  Content-Security-Policy, ``work.SCRIPT_CSP``).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends, FastAPI
from starlette.responses import Response

from teachloop.app.deps import AppDeps
from teachloop.app.factory import create_app
from teachloop.core.errors import NotFound
from teachloop.web import (
    datasets,
    deployments,
    environments,
    loops,
    market,
    overview,
    runs,
    settings,
    signin,
    traces,
    work,
    work_owner,
)
from teachloop.web.auth import require_csrf
from teachloop.web.render import ConsoleRoute

#: the static files the console serves (name -> media type); nothing else under /static is answered
STATIC = {"console.css": "text/css; charset=utf-8", "work.js": "text/javascript; charset=utf-8"}

_static = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])


@_static.get("/static/{name}")
def static_file(name: str) -> Response:
    """One of the console's own static files."""
    if name not in STATIC:
        raise NotFound(f"no static file {name!r}", param="name")
    body = resources.files("teachloop.web").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "public, max-age=3600"})


#: every console route, flat (``create_app`` hands these routes to the guard, which matches paths against them)
router = APIRouter()
for _area in (signin.router, overview.router, traces.router, deployments.router, loops.router, runs.router,
              environments.router, datasets.router, market.router, work.router, work_owner.router, settings.router,
              _static):
    router.routes.extend(_area.routes)


def create_console_app(deps: AppDeps) -> FastAPI:
    """The teachloop app over ``deps`` with the console's pages."""
    return create_app(deps, pages=router)


__all__ = ["STATIC", "create_console_app", "router"]

"""``create_app(deps)``: the ASGI app -- routers, authentication and error rendering.

The factory wires; it holds no state of its own and opens nothing: the caller
builds ``AppDeps`` and closes them (the app's lifespan only closes, at shutdown, the
keep-alive connections the upstream relay opened on the server's event loop). Every request outside ``routes.PUBLIC``
(``/healthz``) passes ``guard.RequestGuard`` first -- 401 without a valid key,
then 413 for a body over ``Settings.max_body_bytes`` -- before a route reads its
body; every router in ``routes.PROTECTED`` is also mounted behind
``require_principal`` (the caller, and the security scheme in the OpenAPI document).
Every router, public ones too, documents the error body (``errors.ERROR_RESPONSES``).
The serving routers (``/v1``, ``/api/deployments``, ``/api/traces``, ...) find the
``serve.Serving`` runtime on ``app.state.serving``: ``deps.serving``, or one without
an engine (it starts no threads) when the caller built none.
There are no interactive docs pages (they would load scripts from a CDN); the
OpenAPI document is served, authenticated, at ``/api/openapi.json``.

``pages`` is how a higher layer adds server-rendered pages without this layer
importing it: ``web.create_console_app`` passes the console's router here. Page
routes are mounted without ``require_principal`` and outside the OpenAPI
document; the guard lets them through without a key (they check their own
session cookie) and refuses any under ``/v1``, ``/api`` or ``/metrics``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from teachloop import __version__
from teachloop.app.auth import require_principal
from teachloop.app.deps import AppDeps
from teachloop.app.errors import ERROR_RESPONSES, install_error_handlers
from teachloop.app.guard import RequestGuard
from teachloop.app.routes import PROTECTED, PUBLIC
from teachloop.market.quotas import serving_admission
from teachloop.serve.service import Serving


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await app.state.serving.relay.aclose()  # the upstream relay's keep-alive connections, on this loop


def create_app(deps: AppDeps, *, pages: APIRouter | None = None) -> FastAPI:
    """The teachloop HTTP app over ``deps`` (with the page routes of ``pages``, e.g. the web console)."""
    app = FastAPI(
        lifespan=_lifespan,
        title="teachloop",
        version=__version__,
        description="Serve, reward, train and redeploy LoRA-adapted language models in one loop.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.deps = deps
    app.state.serving = deps.serving or Serving(deps.database, deps.blobs)
    if app.state.serving.admission is None:  # the organisations' token and spend quotas (market.quotas): 429
        app.state.serving.admission = serving_admission(deps.database)
    install_error_handlers(app)
    public_paths = [path for router in PUBLIC for route in router.routes if (path := getattr(route, "path", None))]
    page_routes = list(pages.routes) if pages is not None else []
    app.add_middleware(RequestGuard, deps=deps, public_paths=public_paths, page_routes=page_routes)
    for router in PUBLIC:
        app.include_router(router, responses=ERROR_RESPONSES)
    for router in PROTECTED:
        app.include_router(router, dependencies=[Depends(require_principal)], responses=ERROR_RESPONSES)
    if pages is not None:
        app.include_router(pages, include_in_schema=False)
    return app


__all__ = ["create_app"]

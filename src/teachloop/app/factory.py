"""``create_app(deps)``: the ASGI app -- routers, authentication and error rendering.

The factory wires; it holds no state of its own and opens nothing: the caller
builds ``AppDeps`` and closes them. Every request outside ``routes.PUBLIC``
(``/healthz``) passes ``guard.RequestGuard`` first -- 401 without a valid key,
then 413 for a body over ``Settings.max_body_bytes`` -- before a route reads its
body; every router in ``routes.PROTECTED`` is also mounted behind
``require_principal`` (the caller, and the security scheme in the OpenAPI document).
The serving routers (``/v1``, ``/api/deployments``, ``/api/traces``, ...) find the
``serve.Serving`` runtime on ``app.state.serving``: ``deps.serving``, or one without
an engine (it starts no threads) when the caller built none.
There are no interactive docs pages (they would load scripts from a CDN); the
OpenAPI document is served, authenticated, at ``/api/openapi.json``.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from teachloop import __version__
from teachloop.app.auth import require_principal
from teachloop.app.deps import AppDeps
from teachloop.app.errors import install_error_handlers
from teachloop.app.guard import RequestGuard
from teachloop.app.routes import PROTECTED, PUBLIC
from teachloop.serve.service import Serving


def create_app(deps: AppDeps) -> FastAPI:
    """The teachloop HTTP app over ``deps``."""
    app = FastAPI(
        title="teachloop",
        version=__version__,
        description="Serve, reward, train and redeploy LoRA-adapted language models in one loop.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.deps = deps
    app.state.serving = deps.serving or Serving(deps.database, deps.blobs)
    install_error_handlers(app)
    public_paths = [path for router in PUBLIC for route in router.routes if (path := getattr(route, "path", None))]
    app.add_middleware(RequestGuard, deps=deps, public_paths=public_paths)
    for router in PUBLIC:
        app.include_router(router)
    for router in PROTECTED:
        app.include_router(router, dependencies=[Depends(require_principal)])
    return app


__all__ = ["create_app"]

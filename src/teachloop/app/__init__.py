"""teachloop.app -- the ASGI app factory: routers, authentication, error rendering (layer L4).

``create_app(AppDeps(...))`` returns a FastAPI app; ``AppDeps.from_settings``
builds the dependencies from ``Settings``. Nothing here starts a server or an
event loop (``cli/`` does).
"""

from teachloop.app.auth import CurrentPrincipal, Deps, get_deps, require_principal
from teachloop.app.deps import AppDeps
from teachloop.app.errors import error_response, install_error_handlers, render
from teachloop.app.factory import create_app
from teachloop.app.jobs import job_handlers

__all__ = [
    "AppDeps",
    "CurrentPrincipal",
    "Deps",
    "create_app",
    "error_response",
    "get_deps",
    "install_error_handlers",
    "job_handlers",
    "render",
    "require_principal",
]

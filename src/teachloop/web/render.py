"""Rendering the console: the Jinja2 environment, page responses, HTML errors and security headers.

- ``templates``: one ``jinja2.Environment`` over ``web/templates`` with
  autoescape **always on** (every ``{{ }}`` is HTML-escaped, quotes included,
  so text can sit in an attribute) and ``StrictUndefined`` (a typo in a template
  fails its test instead of printing nothing). Templates never use ``|safe``
  or ``|tojson``; structured values are shown with the ``pretty`` filter, which
  returns plain text that autoescape escapes like any other.
- ``page(request, template, **context)``: a ``text/html`` response of
  ``template``; every template also gets ``viewer`` (the signed-in ``Viewer`` or
  None), ``csrf_token``, ``nav`` and ``path``.
- ``ConsoleRoute``: the route class of every console router. It turns
  ``SignInRequired`` into a redirect to ``/signin?next=...``, any
  ``TeachloopError`` or request-validation error into an HTML error page with
  the error's status (a 404 reads the same whether the object is missing or
  another organisation's), sets the CSRF cookie a page needs, and adds the
  security headers below to every console response.

Security headers: a Content-Security-Policy that allows no script at all (the
console has none) and styles, images and form posts from this origin only;
``X-Frame-Options: DENY``; ``Referrer-Policy: no-referrer`` (sign-in links
carry their token in the path); ``nosniff``; ``Cache-Control: no-store`` on
pages (they carry tenant data).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from teachloop.core.errors import InvalidInput, TeachloopError
from teachloop.web.auth import SignInRequired, csrf_token, set_pending_cookies

#: the main navigation: (label, path); later pages append here (see docs/console.md)
NAV: list[tuple[str, str]] = [
    ("Overview", "/"),
    ("Traces", "/traces"),
    ("Deployments", "/deployments"),
    ("Loops", "/loops"),
    ("Runs", "/runs"),
    ("Environments", "/environments"),
    ("Datasets", "/datasets"),
    ("Market", "/market"),
    ("Work", "/work"),
    ("Settings", "/settings"),
]

CSP = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _pretty(value: Any) -> str:
    """A JSON value as indented text (escaped by autoescape like any string)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def _number(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


templates = Environment(
    loader=PackageLoader("teachloop.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["pretty"] = _pretty
templates.filters["when"] = _when
templates.filters["number"] = _number


def page(request: Request, template: str, /, *, status: int = 200, **context: Any) -> HTMLResponse:
    """The HTML response of ``template`` (see the module docstring for what every template gets)."""
    viewer = getattr(request.state, "viewer", None)
    html = templates.get_template(template).render(
        viewer=viewer, csrf_token=csrf_token(request), nav=NAV, path=request.url.path, **context
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def error_page(request: Request, err: TeachloopError) -> HTMLResponse:
    """The HTML page for an error, with its status."""
    response = page(request, "error.html", status=err.status, error=err)
    if err.status == 429:
        response.headers["Retry-After"] = "60"
    return response


def _validation(err: RequestValidationError) -> InvalidInput:
    first: dict[str, Any] = next(iter(err.errors()), {})
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
    field = ".".join(loc) or "input"
    return InvalidInput(f"{field}: {first.get('msg', 'invalid value')}", param=field)


class ConsoleRoute(APIRoute):
    """An ``APIRoute`` whose errors are HTML pages and whose responses carry the console's headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
            except TeachloopError as err:
                response = error_page(request, err)
            except RequestValidationError as err:
                response = error_page(request, _validation(err))
            for key, value in SECURITY_HEADERS.items():
                response.headers.setdefault(key, value)
            set_pending_cookies(request, response)
            return response

        return handle


__all__ = ["CSP", "NAV", "SECURITY_HEADERS", "ConsoleRoute", "error_page", "page", "templates"]

"""``RequestGuard``: authenticate, then bound the body -- before any route reads a byte of it.

FastAPI parses a route's JSON body before it solves the route's dependencies,
so a dependency alone would answer a keyless request with a malformed body
400 (and would let anyone make the server buffer and parse any body). This ASGI
middleware runs first, for every HTTP request except the public paths
(``/healthz``), in this order:

1. **Authentication.** The ``Authorization: Bearer`` key is checked
   (``auth.authenticate_request``: no thread hop on SQLite); a missing, malformed, unknown or revoked key is
   answered 401 whatever the method, path or body -- unknown paths included,
   so a caller without a key learns nothing about which routes exist. The
   ``Principal`` is left on the request's state (the Tinker SDK's ``X-API-Key: tml-<key>`` counts as
   ``Bearer <key>``, ``auth.bearer_header``), where ``require_principal``
   picks it up instead of checking the key again.
2. **Body size.** A body larger than ``Settings.max_body_bytes``
   (``TEACHLOOP_MAX_BODY_BYTES``) is refused with 413 ``request_too_large``:
   at once when ``Content-Length`` says so, otherwise as soon as the bytes read
   pass the limit. The body is read here in full (routes read it in full
   anyway) and handed on, so no handler ever starts on a body that is refused,
   and a refused request changes nothing.

Page routes (the console of ``web/``, handed to ``create_app`` as ``pages``)
skip step 1 only: they authenticate with their own session cookie and CSRF
token, and answer whatever a page answers. A key is never read from a cookie,
and no page route may live under ``/v1``, ``/api`` or ``/metrics`` (refused at
start-up), so a browser session never reaches the API. The body bound applies
to pages too.

Errors render through ``errors.render``, in the same OpenAI shape as the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from teachloop.app.auth import authenticate_request, bearer_header
from teachloop.app.deps import AppDeps
from teachloop.app.errors import render
from teachloop.core.errors import PayloadTooLarge, TeachloopError

#: path prefixes of the key-authenticated API; no page route may claim one
API_PREFIXES = ("/v1", "/api", "/metrics")


class BodyTooLarge(PayloadTooLarge):
    """The request body is larger than the server accepts (HTTP 413)."""

    code = "request_too_large"


def _too_large(size: int | None, limit: int) -> BodyTooLarge:
    got = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return BodyTooLarge(
        f"the request body is {got}; this server accepts at most {limit} bytes (TEACHLOOP_MAX_BODY_BYTES)"
    )


class RequestGuard:
    """ASGI middleware: 401 before anything else, then 413 for an oversized body (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, deps: AppDeps, public_paths: Iterable[str], page_routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.deps = deps
        self.public = frozenset(public_paths)
        for route in page_routes:
            path = str(getattr(route, "path", ""))
            if path.startswith(API_PREFIXES) or not path.startswith("/"):
                raise ValueError(f"page route {path!r}: paths under {API_PREFIXES} need an API key")
        self.pages = tuple(page_routes)

    def _is_page(self, scope: Scope) -> bool:
        if str(scope.get("path", "")).startswith(API_PREFIXES):
            return False
        return any(route.matches(scope)[0] is not Match.NONE for route in self.pages)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public:
            await self.app(scope, receive, send)
            return
        if not self._is_page(scope):
            header = bearer_header(_header(scope, b"authorization"), _header(scope, b"x-api-key"))
            try:
                principal = await authenticate_request(self.deps, header)
            except TeachloopError as err:
                await render(err)(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        limit = self.deps.settings.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await render(_too_large(declared, limit))(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; there is no one to answer
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await render(_too_large(declared, limit))(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None  # the server rejects a malformed length; count the bytes instead


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the buffered body once, then the client's later messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


__all__ = ["API_PREFIXES", "BodyTooLarge", "RequestGuard"]

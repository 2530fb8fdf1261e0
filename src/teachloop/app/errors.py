"""The one place HTTP errors are rendered, in OpenAI's error shape.

Every error response is ``{"error": {"message", "type", "param", "code"}}``:

- a ``TeachloopError`` renders with its own ``status`` and ``to_dict()``;
- request validation errors (bad field, malformed JSON) are 400, naming the
  parameter in ``param``;
- unknown routes are 404 and wrong methods 405, in the same shape;
- anything else is a 500 that says only that the server log has the details
  (the traceback is logged, never sent).

``ErrorResponse`` is that shape as a model, and ``ERROR_RESPONSES`` documents it once
for every 4xx and 5xx status: ``create_app`` mounts every router with it, so the
OpenAPI document describes each error body (and FastAPI's 422 model, which this
app never sends, is left out).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from teachloop.core.errors import InvalidInput, NotFound, QuotaExceeded, TeachloopError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    """What went wrong (OpenAI's error object)."""

    message: str = Field(description="A sentence for a person: what was wrong and, where it helps, what to do.")
    type: str = Field(description="The error's kind, e.g. invalid_request_error, not_found, internal_error.")
    param: str | None = Field(description="The request parameter at fault (dotted path), when there is one.")
    code: str | None = Field(description="A stable machine-readable code (the same as type here).")


class ErrorResponse(BaseModel):
    """Every error body: ``{"error": {...}}``."""

    error: ErrorDetail


#: ``responses=`` for a router: the error body of every 4xx and 5xx answer.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "A refused request (400 names the parameter in error.param)."},
    "5XX": {"model": ErrorResponse, "description": "A server error, or serving unavailable (503)."},
}


def error_response(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error response with body ``{"error": error}``."""
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def render(err: TeachloopError) -> JSONResponse:
    """The response for a teachloop error."""
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    if isinstance(err, QuotaExceeded) and err.retry_after is not None:
        headers = {"Retry-After": str(err.retry_after)}
    return error_response(err.status, err.to_dict(), headers)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "dict", "list", "tuple", "set"})


def _is_tag(part: Any) -> bool:
    """Whether a location part names a union alternative (``str``, ``list[str]``, ``TextPart``), not a field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part[:1].isupper())


def _split(loc: tuple[Any, ...], errors: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    """(the field path up to the first union alternative, that alternative or None).

    A part is a union alternative when it looks like one and another error has the same
    path up to it but a different alternative there (pydantic reports one error per alternative).
    """
    parts: list[str] = []
    for i, part in enumerate(loc):
        if parts and _is_tag(part):
            head = tuple(loc[:i])
            if any(tuple(e.get("loc", ()))[:i] == head and len(e.get("loc", ())) > i and e["loc"][i] != part
                   and _is_tag(e["loc"][i]) for e in errors):
                return parts, str(part)
        parts.append(str(part))
    return parts, None


def _validation_error(errors: list[dict[str, Any]]) -> InvalidInput:
    if not errors:
        return InvalidInput("invalid request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", first.get("msg", ""))
        where = f" at character {loc[1]}" if len(loc) > 1 and loc[1].isdigit() else ""
        return InvalidInput(f"malformed JSON body: {reason}{where}")
    path, tag = _split(tuple(first.get("loc", ())), errors)
    param = ".".join(path[1:]) if len(path) > 1 else None
    where = path[0] if path else "request"
    subject = param or ("request body" if where == "body" else where)
    problem = first.get("msg", "invalid value")
    same = [first]
    if tag is not None:  # a value none of a union's alternatives accepts: say which ones there are
        same = [e for e in errors if _split(tuple(e.get("loc", ())), errors)[0] == path]
        tags = list(dict.fromkeys(t for e in same if (t := _split(tuple(e.get("loc", ())), errors)[1])))
        problem = f"must be {' or '.join(tags)}" if len(tags) > 1 else problem
    others = len(errors) - len(same)
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    return InvalidInput(f"{subject}: {problem}{more}", param=param)


async def _on_teachloop_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TeachloopError)
    return render(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return render(_validation_error(list(exc.errors())))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return render(NotFound(f"no route {request.method} {request.url.path}"))
    if exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(405, InvalidInput(message).to_dict(), dict(exc.headers or {}))
    message = str(exc.detail) if exc.detail else "request failed"
    kind = "invalid_request_error" if exc.status_code < 500 else "internal_error"
    body = {"message": message, "type": kind, "param": None, "code": kind}
    return error_response(exc.status_code, body, dict(exc.headers or {}))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {
        "message": "internal server error; the server log has the details",
        "type": "internal_error",
        "param": None,
        "code": "internal_error",
    }
    return error_response(500, body)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(TeachloopError, _on_teachloop_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


__all__ = ["ERROR_RESPONSES", "ErrorDetail", "ErrorResponse", "error_response", "install_error_handlers", "render"]

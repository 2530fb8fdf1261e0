"""Every (method, path) an app answers, read from the app itself (so a new route shows up in the tests)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute


def _walk(routes: list[Any], prefix: str) -> list[tuple[str, str]]:
    out = []
    for route in routes:
        if isinstance(route, APIRoute):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", prefix + route.path)  # {model:path} -> {model}
            out += [(method, path) for method in sorted(route.methods) if method != "HEAD"]
        elif hasattr(route, "original_router"):  # FastAPI's included router (routes are resolved lazily)
            extra = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            out += _walk(list(route.original_router.routes), prefix + extra)
        elif hasattr(route, "routes"):  # a mount
            out += _walk(list(route.routes), prefix + getattr(route, "path", ""))
    return out


def app_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(METHOD, path template as OpenAPI writes it) of every API route of ``app``; checked against the OpenAPI document."""
    found = _walk(list(app.routes), "")
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    missing = documented - set(found)
    assert not missing, f"the route walk missed {sorted(missing)}"
    return sorted(set(found))


__all__ = ["app_routes"]

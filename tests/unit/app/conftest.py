"""App test helpers: an in-process client of each module's ``app`` fixture, bearer headers, OpenAI error bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client of the requesting module's ``app`` fixture; server errors come back as 500s."""
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    """The bearer header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error answer, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])

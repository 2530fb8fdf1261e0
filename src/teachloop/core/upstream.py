"""Upstream arms: a deployment arm answered by another OpenAI-compatible server (issue 17).

A deployment's primary, canary or shadow arm may be an **upstream**: a base URL,
the model to ask there and the API key to send. ``UpstreamSpec`` is that
configuration as a client gives it (the key in a ``SecretStr``, so neither its
``repr`` nor a validation error ever shows it); ``ModelPrice`` prices tokens of
one model in integer minor units per million tokens, so the cost of a call is
an exact integer of *micro* minor units (``cost_micro``).

Failures of an upstream are ``TeachloopError``s carrying the status the caller
gets: ``UpstreamError`` relays the upstream's own status (500, 400, ...) or
502 when it sent none (connection refused, a stream cut mid-way), an
``UpstreamTimeout`` is 504, and ``UpstreamRateLimited`` is a 429 with the
upstream's ``Retry-After``. Messages never contain the key (``scrub``).
This module is pure: stdlib and pydantic only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from teachloop.core.errors import QuotaExceeded, TeachloopError

#: The arms of a deployment a request (or its shadow) can go to.
ARMS = ("primary", "canary", "shadow")


class ModelPrice(BaseModel):
    """What one model's tokens cost, in integer minor units (cents for USD) per million tokens."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt_per_1m: int = Field(ge=0, le=10**9, description="Minor units per 1,000,000 prompt tokens.")
    completion_per_1m: int = Field(ge=0, le=10**9, description="Minor units per 1,000,000 completion tokens.")
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of the minor units.")


def cost_micro(price: ModelPrice | dict[str, Any] | None, prompt_tokens: int, completion_tokens: int) -> int | None:
    """The cost of a call in millionths of a minor unit (exact), or None when the model has no price."""
    if price is None:
        return None
    p = price if isinstance(price, ModelPrice) else ModelPrice.model_validate(price)
    return prompt_tokens * p.prompt_per_1m + completion_tokens * p.completion_per_1m


def check_base_url(value: str) -> str:
    """``value`` without a trailing slash if it is an http(s) URL with a host; ``ValueError`` otherwise."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. https://api.openai.com/v1")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    return value.strip().rstrip("/")


class UpstreamSpec(BaseModel):
    """An upstream OpenAI-compatible endpoint as a client configures it (the key is write-only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(min_length=1, max_length=2000,
                          description="The upstream's OpenAI base URL, e.g. https://api.openai.com/v1 "
                                      "(chat completions are POSTed to BASE/chat/completions).")
    model: str = Field(min_length=1, max_length=300, description="The model to ask upstream.")
    api_key: SecretStr = Field(description="Sent as `Authorization: Bearer`; stored encrypted, never returned.")
    timeout_s: float = Field(default=60.0, gt=0, le=600,
                             description="Longest wait for the upstream's first byte and between two bytes.")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Longest wait to connect.")
    max_retries: int = Field(default=2, ge=0, le=5,
                             description="Retries of a refused connection, a 429, a 5xx or a timeout before the "
                                         "first byte (exponential backoff from 0.1 s, at most 2 s each).")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError("must not be empty")
        if len(secret) > 4000 or any(c in secret for c in "\r\n"):
            raise ValueError("must be one line of at most 4000 characters")
        return value


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (and of its 8-character edges) replaced by ``***``."""
    if not secret:
        return text
    out = text.replace(secret, "***")
    if len(secret) >= 16:  # providers echo keys abbreviated: sk-abc...wxyz
        out = out.replace(secret[:8], "***").replace(secret[-8:], "***")
    return out


class UpstreamError(TeachloopError):
    """The upstream failed: its own 4xx/5xx status relayed, or 502 when it gave none (HTTP as ``status``)."""

    status = 502
    code = "upstream_error"

    def __init__(self, message: str, *, param: str | None = None, status: int = 502,
                 code: str | None = None) -> None:
        super().__init__(message, param=param)
        self.status = status  # type: ignore[misc]  # per instance: the upstream's status
        self.code = code or type(self).code  # type: ignore[misc]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.param, self.status, self.code))


def _rebuild(cls: type[UpstreamError], message: str, param: str | None, status: int, code: str) -> UpstreamError:
    return cls(message, param=param, status=status, code=code)


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or send its first byte in time (HTTP 504)."""

    status = 504
    code = "upstream_timeout"

    def __init__(self, message: str, *, param: str | None = None, status: int = 504, code: str | None = None) -> None:
        super().__init__(message, param=param, status=status, code=code)


class UpstreamRateLimited(QuotaExceeded):
    """The upstream answered 429: relayed with its ``Retry-After`` (HTTP 429)."""

    code = "rate_limit_exceeded"


__all__ = [
    "ARMS",
    "ModelPrice",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamSpec",
    "UpstreamTimeout",
    "check_base_url",
    "cost_micro",
    "scrub",
]

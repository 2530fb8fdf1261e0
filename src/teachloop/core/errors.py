"""The one exception tree of teachloop.

Every error a user can cause or meet is a ``TeachloopError``. Each class also
subclasses the stdlib exception it resembles, so callers that catch
``ValueError`` or ``LookupError`` keep working, and carries the HTTP status it
renders to. The app renders them in exactly one place (``app/errors.py``); the
CLI prints ``str(err)`` on one line and exits non-zero.

    TeachloopError                       500  (RuntimeError)
    ├── InvalidInput                     400  (ValueError)      bad request / bad config field
    │   ├── ConfigurationError           400                    settings, URLs, missing extras
    │   ├── PayloadTooLarge              413                    prompt longer than the context, body too big
    │   └── InvalidConfig                422                    a training config the runs API refuses
    ├── Unauthorized                     401  (PermissionError) missing, unknown or revoked API key
    ├── Forbidden                        403  (PermissionError) authenticated but not allowed
    ├── NotFound                         404  (LookupError)     unknown id *in the caller's organisation*
    │   └── Gone                         410                    it existed and has ended (a finished Tinker session)
    ├── Conflict                         409  (ValueError)      immutable version clash, duplicate name
    │   ├── InsufficientFunds            409                    a non-negative account would go below zero
    │   └── IdempotencyConflict          409                    an idempotency key reused with another request
    ├── QuotaExceeded                    429  (RuntimeError)    an organisation's quota (tokens/day, runs, spend) is used up
    ├── ServiceUnavailable               503  (RuntimeError)    database unreachable, engine not loaded
    └── ModelError                       500  (RuntimeError)    a model cache that is corrupt or half-written

Errors are picklable (they cross process boundaries in the job queue) and keep
the name of the offending parameter in ``param`` so HTTP renders it in the
OpenAI error shape.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TeachloopError(RuntimeError):
    """Base of every teachloop error.

    Attributes:
        message: one line that says what is wrong and, where possible, what to do.
        param: the name of the offending input field, if any (e.g. ``"max_tokens"``).
        status: the HTTP status this error renders to.
        code: a stable machine-readable code (e.g. ``"not_found"``).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.param))

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-able dict in the OpenAI error shape's inner object."""
        return {"message": self.message, "type": self.code, "param": self.param, "code": self.code}


def _rebuild(cls: type[TeachloopError], message: str, param: str | None) -> TeachloopError:
    return cls(message, param=param)


class InvalidInput(TeachloopError, ValueError):
    """The request or configuration is malformed or out of range (HTTP 400)."""

    status = 400
    code = "invalid_request_error"


class ConfigurationError(InvalidInput):
    """A setting, URL or optional dependency is wrong or missing (HTTP 400)."""

    code = "configuration_error"


class PayloadTooLarge(InvalidInput):
    """The input is larger than allowed, e.g. a prompt longer than the context window (HTTP 413)."""

    status = 413
    code = "context_length_exceeded"


class InvalidConfig(InvalidInput):
    """A training config sent to the API has a missing, unknown or out-of-range field (HTTP 422)."""

    status = 422
    code = "invalid_config"


class Unauthorized(TeachloopError, PermissionError):
    """No API key, an unknown one, or a revoked one (HTTP 401)."""

    status = 401
    code = "invalid_api_key"


class Forbidden(TeachloopError, PermissionError):
    """The caller is authenticated but their role does not allow this (HTTP 403)."""

    status = 403
    code = "permission_denied"


class NotFound(TeachloopError, LookupError):
    """The named thing does not exist in the caller's organisation (HTTP 404).

    Raised identically whether the thing is absent or belongs to another
    organisation, so the existence of other tenants' objects cannot be inferred.
    """

    status = 404
    code = "not_found"


class Gone(NotFound):
    """The named thing existed in the caller's organisation and has ended for good (HTTP 410).

    A finished Tinker session: the SDK stops its heartbeat loop on a 410, as with Thinking Machines' server.
    """

    status = 410
    code = "gone"


class Conflict(TeachloopError, ValueError):
    """The write clashes with existing state, e.g. an immutable version with other content (HTTP 409)."""

    status = 409
    code = "conflict"


class InsufficientFunds(Conflict):
    """A non-negative ledger account would hold less than zero; nothing was posted (HTTP 409)."""

    code = "insufficient_funds"


class IdempotencyConflict(Conflict):
    """An idempotency key was already used with a different request; nothing was posted (HTTP 409)."""

    code = "idempotency_conflict"


class QuotaExceeded(TeachloopError):
    """An organisation's quota is used up; nothing was done (HTTP 429).

    ``param`` names the quota (``tokens_per_day``, ``concurrent_runs``, ``spend_per_month``), the
    message says when it resets, and ``retry_after`` (seconds, or None when the reset is an event such
    as a run ending) becomes the ``Retry-After`` header.
    """

    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_quota, (self.message, self.param, self.retry_after))


def _rebuild_quota(message: str, param: str | None, retry_after: int | None) -> QuotaExceeded:
    return QuotaExceeded(message, param=param, retry_after=retry_after)


class ServiceUnavailable(TeachloopError):
    """A dependency (database, engine, worker) cannot be reached right now (HTTP 503)."""

    status = 503
    code = "service_unavailable"


class ModelError(TeachloopError):
    """A model cannot be loaded: corrupt cache, unsupported architecture (HTTP 500)."""

    status = 500
    code = "model_error"


def first_line(err: object) -> str:
    """The first line of ``str(err)`` (a library's multi-line message in a one-line error), else its type's name."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


__all__ = [
    "ConfigurationError",
    "Conflict",
    "Forbidden",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidConfig",
    "InvalidInput",
    "ModelError",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "ServiceUnavailable",
    "TeachloopError",
    "Unauthorized",
    "first_line",
]

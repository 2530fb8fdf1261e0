"""Log lines: plain text or one JSON object per line, each stamped with the request's trace id.

``bind_trace_id(trace_id)`` puts a trace id in a ``ContextVar`` for the rest of
the current context: serving calls it when a chat run starts (``ChatRun``), so
every line logged afterwards by the request's task -- and by the tasks and
``asyncio.to_thread`` calls it starts, which copy the context -- carries that
id. Lines logged on the shared worker threads (the scheduler, the trace
writer) belong to no single request and carry none. A request's task ends
with the request, so the id never leaks onto the next one.

``configure_logging(fmt)`` installs one root handler: ``"text"`` keeps the
human-readable ``time level logger: message`` lines; ``"json"`` writes one JSON
object per line with ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, ``trace_id`` (when bound), any ``extra={...}`` fields the caller
passed, and ``exception`` (the formatted traceback) when there is one.
Chosen by ``Settings.log_format`` (``TEACHLOOP_LOG_FORMAT``) or
``teachloop serve --log-format``. Stdlib only; knows nothing of HTTP.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_OURS = "_teachloop_handler"
_TRACE_ID: ContextVar[str | None] = ContextVar("teachloop_trace_id", default=None)

#: attributes every ``LogRecord`` has; anything else on a record came from ``extra={...}``
#: (and ``color_message``: uvicorn's message with terminal colours, noise in JSON)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "trace_id", "color_message"}


def bind_trace_id(trace_id: str | None) -> Token[str | None]:
    """Stamp every line logged from now on in this context with ``trace_id`` (None: with none)."""
    return _TRACE_ID.set(trace_id)


def current_trace_id() -> str | None:
    """The trace id bound in this context, if any."""
    return _TRACE_ID.get()


class TraceIdFilter(logging.Filter):
    """Sets ``record.trace_id`` from the emitting context (None outside a request); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            record.trace_id = _TRACE_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None) or _TRACE_ID.get()
        if trace_id is not None:
            out["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (never a stream closed since)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def log_handler(fmt: LogFormat = "text", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler writing ``fmt`` lines, with the trace id stamped on each record.

    Without ``stream`` it writes to the current ``sys.stderr`` at each record, so a process that
    swaps stderr (a test runner capturing output, a CLI runner) never logs into a closed stream.
    """
    handler: logging.StreamHandler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()  # type: ignore[type-arg]
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(TraceIdFilter())
    return handler


def configure_logging(fmt: LogFormat = "text", *, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Give the root logger one ``log_handler(fmt, stream)`` at ``level`` (replacing one installed earlier)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    handler = log_handler(fmt, stream)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration context otherwise


__all__ = [
    "TEXT_FORMAT",
    "JsonFormatter",
    "LogFormat",
    "TraceIdFilter",
    "bind_trace_id",
    "configure_logging",
    "current_trace_id",
    "log_handler",
]

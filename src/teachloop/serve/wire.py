"""Wire helpers both OpenAI endpoints share: ``/v1/chat/completions`` and ``/v1/completions``.

Request checks that are the same in both bodies (``stop``, ``logit_bias``),
server-sent-event frames (a JSON ``data:`` line, the ``[DONE]`` line, and the
error frame sent when a stream fails after its first byte), the ``usage``
object, and the header that carries the trace id. Pure functions: no HTTP
framework, no engine, no storage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from teachloop.core.errors import InvalidInput, TeachloopError

#: Response header naming the stored trace(s) of a completion (comma-separated for several prompts).
TRACE_HEADER = "x-teachloop-trace-id"

#: The last frame of a stream that ended well.
SSE_DONE = b"data: [DONE]\n\n"

#: Most stop sequences a request may send (OpenAI's limit).
MAX_STOPS = 4

#: Largest magnitude of a ``logit_bias`` value (OpenAI's range).
MAX_BIAS = 100.0


def sse(body: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying ``body`` as JSON."""
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def sse_error(err: TeachloopError) -> bytes:
    """The frame of a failure after the stream began (OpenAI's error shape; no ``[DONE]`` follows)."""
    return sse({"error": err.to_dict()})


def usage_json(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def parse_stop(stop: str | list[str] | None) -> tuple[str, ...]:
    """``stop`` as a tuple of at most four non-empty strings; ``InvalidInput`` naming ``stop`` otherwise."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise InvalidInput(f"stop takes at most {MAX_STOPS} sequences, got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise InvalidInput("stop sequences must be non-empty", param="stop")
    return tuple(stops)


def parse_logit_bias(logit_bias: Mapping[str, float] | None) -> tuple[tuple[int, float], ...]:
    """``{"token id": bias}`` as sorted ``(token id, bias)`` pairs.

    ``InvalidInput`` naming ``logit_bias`` for a key that is not a token id or a
    bias outside [-100, 100]. Whether an id is in the vocabulary is known only
    where the model is (``service.check_logit_bias``).
    """
    pairs: dict[int, float] = {}
    for key, bias in (logit_bias or {}).items():
        text = key.strip()
        if not text.isdigit() or not text.isascii():
            raise InvalidInput(f"logit_bias keys are token ids (\"198\"), got {key!r}", param="logit_bias")
        if not -MAX_BIAS <= bias <= MAX_BIAS:
            raise InvalidInput(f"logit_bias for token {text} is {bias}; biases are in [-100, 100]", param="logit_bias")
        pairs[int(text)] = float(bias)
    return tuple(sorted(pairs.items()))


__all__ = [
    "MAX_BIAS", "MAX_STOPS", "SSE_DONE", "TRACE_HEADER", "parse_logit_bias", "parse_stop", "sse", "sse_error",
    "usage_json",
]

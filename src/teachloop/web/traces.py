"""Trace pages: ``/traces`` (filtered list) and ``/traces/{id}`` (the conversation, its feedback, feedback forms).

The list filters by deployment (the ``model`` a client asked for), time range
(UTC), client metadata ``key=value`` pairs and whether feedback exists -- the
filters of ``GET /api/traces``, run through the same ``store.Traces`` query --
and pages with ``before``. Empty form fields mean "no filter".

The detail page renders each message with its tool calls (function name and
arguments), the replies, metadata and sampling parameters, and the feedback
given so far. Its forms write feedback exactly as ``POST /api/traces/{id}/feedback``
does (``Traces.add_feedback``, author = the member's user id): thumbs (score 1
or 0 with label ``thumbs_up`` / ``thumbs_down``), a score, a label, a comment
and a corrected reply (stored as an assistant message; a correction equal to
the reply is no correction). Reading needs the viewer role, writing member.
Another organisation's trace is a 404 page like a missing one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from starlette.responses import RedirectResponse, Response

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput
from teachloop.core.tenancy import Role
from teachloop.store.repos.deployments import Deployments
from teachloop.store.repos.traces import TraceFilter, Traces
from teachloop.web.auth import SignedIn, app_deps, require, require_csrf
from teachloop.web.render import ConsoleRoute, page

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

PAGE_SIZE = 50
THUMBS = {"up": (1.0, "thumbs_up"), "down": (0.0, "thumbs_down")}


@dataclass(frozen=True)
class ToolCallView:
    """One tool call of a message, ready to print."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class MessageView:
    """One chat message, ready to print (text, tool calls, the call a tool message answers)."""

    role: str
    text: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallView] = field(default_factory=list)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        parts = [p.get("text", "") if isinstance(p, dict) and p.get("type") == "text" else json.dumps(p)
                 for p in content]
        return "\n".join(str(p) for p in parts)
    return json.dumps(content, ensure_ascii=False)


def _arguments(raw: Any) -> str:
    if isinstance(raw, str):
        try:
            return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
        except ValueError:
            return raw
    return json.dumps(raw, indent=2, ensure_ascii=False)


def message_view(message: Any) -> MessageView:
    """A stored OpenAI-shaped message as a ``MessageView`` (tolerates any JSON)."""
    if not isinstance(message, dict):
        return MessageView("unknown", _text(message))
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        calls.append(ToolCallView(str(call.get("id", "")) if isinstance(call, dict) else "",
                                  str(fn.get("name", "")), _arguments(fn.get("arguments", ""))))
    return MessageView(str(message.get("role", "unknown")), _text(message.get("content")),
                       message.get("name"), message.get("tool_call_id"), calls)


def _time(value: str, param: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{param} must be a date and time (YYYY-MM-DDTHH:MM), got {value!r}", param=param) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _metadata(items: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        if not item.strip():
            continue
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise InvalidInput(f"metadata filters read key=value, got {item!r}", param="metadata")
        pairs[key] = value
    return pairs


@router.get("/traces")
def trace_list(
    request: Request,
    viewer: SignedIn,
    deployment: str = "",
    since: str = "",
    until: str = "",
    metadata: Annotated[list[str] | None, Query()] = None,
    feedback: str = "",
    before: str = "",
) -> Response:
    """The organisation's traces, newest first, filtered."""
    require(viewer, Role.VIEWER, "reading traces")
    if feedback not in ("", "yes", "no"):
        raise InvalidInput("feedback must be yes, no or empty", param="feedback")
    pairs = _metadata(metadata or [])
    filt = TraceFilter(
        model=deployment.strip() or None, since=_time(since, "since"), until=_time(until, "until"), metadata=pairs,
        has_feedback={"yes": True, "no": False}.get(feedback), before=before.strip() or None, limit=PAGE_SIZE,
    )
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as session:
        repo = Traces(session)
        rows = repo.list(org, filt)
        counts = {t: len(f) for t, f in repo.feedback(org, [r.id for r in rows]).items()}
        names = [d.name for d in Deployments(session).list(org)]
    items = [(r, message_view(r.choices[0].get("message") if r.choices else None), counts.get(r.id, 0)) for r in rows]
    filters = {"deployment": deployment, "since": since, "until": until, "metadata": "; ".join(metadata or []),
               "metadata_items": [m for m in metadata or [] if m.strip()], "feedback": feedback}
    return page(request, "traces.html", items=items, deployments=names, filters=filters,
                next_before=rows[-1].id if len(rows) == PAGE_SIZE else None)


def _trace_context(request: Request, viewer: SignedIn, trace_id: str) -> dict[str, Any]:
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as session:
        repo = Traces(session)
        trace = repo.get(org, trace_id)
        feedback = repo.feedback(org, [trace.id])[trace.id]
    messages = [message_view(m) for m in trace.messages]
    replies = [(c.get("index", i), message_view(c.get("message")), c.get("finish_reason"))
               for i, c in enumerate(trace.choices)]
    return {"trace": trace, "messages": messages, "replies": replies, "feedback": feedback,
            "corrections": {f.id: message_view(f.corrected_output) for f in feedback if f.corrected_output}}


@router.get("/traces/{trace_id}")
def trace_detail(request: Request, viewer: SignedIn, trace_id: str, saved: str = "") -> Response:
    """One trace: the conversation with its tool calls, metadata, feedback and the feedback forms."""
    require(viewer, Role.VIEWER, "reading traces")
    return page(request, "trace.html", saved=bool(saved), can_write=viewer.can(Role.MEMBER),
                **_trace_context(request, viewer, trace_id))


def _score(raw: str) -> float | None:
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"score must be a number, got {raw!r}", param="score") from None
    if not math.isfinite(value):
        raise InvalidInput("score must be a finite number", param="score")
    return value


@router.post("/traces/{trace_id}/feedback")
def add_feedback(
    request: Request,
    viewer: SignedIn,
    trace_id: str,
    thumb: Annotated[str, Form(max_length=10)] = "",
    score: Annotated[str, Form(max_length=50)] = "",
    label: Annotated[str, Form(max_length=100)] = "",
    comment: Annotated[str, Form(max_length=20_000)] = "",
    corrected: Annotated[str, Form(max_length=100_000)] = "",
    choice_index: Annotated[int, Form(ge=0)] = 0,
) -> Response:
    """Store one feedback row from the page's forms (thumbs, or score/label/comment/correction)."""
    require(viewer, Role.MEMBER, "giving feedback")
    if thumb and thumb not in THUMBS:
        raise InvalidInput("thumb must be up or down", param="thumb")
    value, tag = THUMBS[thumb] if thumb else (_score(score), label.strip() or None)
    org = viewer.principal.org_id
    with app_deps(request).database.session() as session:
        repo = Traces(session)
        trace = repo.get(org, trace_id)
        correction = None
        if corrected.strip() and not thumb:
            original = trace.choices[choice_index].get("message", {}) if choice_index < len(trace.choices) else {}
            if corrected.replace("\r\n", "\n") != _text(original.get("content")).replace("\r\n", "\n"):
                correction = Message(role="assistant", content=corrected.replace("\r\n", "\n")).to_openai()
        repo.add_feedback(
            org, trace.id, score=value, label=tag, comment=(comment.strip() or None) if not thumb else None,
            corrected_output=correction, choice_index=choice_index,
            author=viewer.principal.user_id or viewer.principal.key_id,
        )
    return RedirectResponse(f"/traces/{trace.id}?saved=1#feedback", status_code=303)


__all__ = ["MessageView", "ToolCallView", "message_view", "router"]

"""Tool calls in plain text: the Hermes/Qwen ``<tool_call>`` convention, both ways.

Writing: for chat templates that do not take ``tools`` (SmolLM2's among them), the
tools are described in a system section (``tool_system_section``, the text Qwen2.5
and Hermes models are trained on), earlier assistant tool calls are written into
the content as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks,
and tool results become a user turn of ``<tool_response>...</tool_response>`` blocks.

Reading: ``parse_tool_calls`` finds ``<tool_call>`` blocks (a final unclosed block
too) and, when tools were offered, a reply that is nothing but a JSON call object
(or a list of them) naming an offered tool. A block whose JSON is malformed stays
in the content as text; parsing never raises.

This module knows nothing about tokens or templates: strings and core messages only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from teachloop.core.chat import Message, ToolCall, ToolSpec
from teachloop.core.ids import new_id

TOOL_SYSTEM_SECTION = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def tool_system_section(tools: Sequence[ToolSpec]) -> str:
    """The system-prompt text that describes ``tools`` to a model whose template cannot."""
    lines = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    return TOOL_SYSTEM_SECTION.format(tools=lines)


def format_tool_call(call: ToolCall) -> str:
    """One call as a ``<tool_call>`` block (arguments as an object when they are valid JSON)."""
    body = json.dumps({"name": call.name, "arguments": arguments_object(call.arguments)}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def arguments_object(arguments: str) -> Any:
    """A call's JSON-encoded arguments as an object; the raw string if they are not valid JSON."""
    try:
        return json.loads(arguments)
    except (TypeError, ValueError):
        return arguments


def inline_tools(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[Message]:
    """``messages`` rewritten for a template without tool support (see the module docstring).

    The tool section is appended to the first system message, or becomes one. Runs
    of tool messages merge into one user message, so roles keep alternating.
    """
    out: list[Message] = []
    responses: list[str] = []

    def flush() -> None:
        if responses:
            out.append(Message(role="user", content="\n".join(responses)))
            responses.clear()

    for m in messages:
        if m.role == "tool":
            responses.append(f"<tool_response>\n{m.content}\n</tool_response>")
            continue
        flush()
        if m.role == "assistant" and m.tool_calls:
            blocks = "\n".join(format_tool_call(c) for c in m.tool_calls)
            out.append(Message(role="assistant", content=f"{m.content}\n{blocks}" if m.content else blocks))
        else:
            out.append(Message(role=m.role, content=m.content, name=m.name))
    flush()
    if tools:
        section = tool_system_section(tools)
        if out and out[0].role == "system":
            first = out[0]
            content = f"{first.content}\n\n{section}" if first.content else section
            out[0] = Message(role="system", content=content, name=first.name)
        else:
            out.insert(0, Message(role="system", content=section))
    return out


def parse_tool_calls(text: str, tools: Sequence[ToolSpec] | None = None) -> tuple[str, tuple[ToolCall, ...]]:
    """Split a reply into (content, tool calls); anything not a well-formed call stays in the content."""
    calls: list[ToolCall] = []

    def take(match: re.Match[str]) -> str:
        call = _call_from_json(match.group(1), names=None)
        if call is None:
            return match.group(0)
        calls.append(call)
        return ""

    rest = _TOOL_CALL_RE.sub(take, text)
    if not calls and tools:
        bare = _bare_calls(rest, {t.name for t in tools})
        if bare:
            return "", bare
    return rest.strip(), tuple(calls)


def _bare_calls(text: str, names: set[str]) -> tuple[ToolCall, ...]:
    """A reply that is only a JSON call object (or a list of them) naming offered tools."""
    body = _unfence(text)
    if not body.startswith(("{", "[")):
        return ()
    try:
        data = json.loads(body)
    except ValueError:
        return ()
    items: Iterable[Any] = data if isinstance(data, list) else [data]
    calls = [_call_from_obj(item, names) for item in items]
    if not calls or any(c is None for c in calls):
        return ()
    return tuple(c for c in calls if c is not None)


def _call_from_json(text: str, names: set[str] | None) -> ToolCall | None:
    try:
        data = json.loads(_unfence(text))
    except ValueError:
        return None
    return _call_from_obj(data, names)


def _call_from_obj(data: Any, names: set[str] | None) -> ToolCall | None:
    """A ToolCall from ``{"name": str, "arguments": object | JSON string}`` (``parameters`` also accepted)."""
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if not isinstance(name, str) or not name or (names is not None and name not in names):
        return None
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            if not isinstance(json.loads(args), dict):
                return None
        except ValueError:
            return None
        encoded = args
    elif isinstance(args, dict):
        encoded = json.dumps(args, ensure_ascii=False)
    else:
        return None
    return ToolCall(id=new_id("call"), name=name, arguments=encoded)


def _unfence(text: str) -> str:
    body = text.strip()
    m = _FENCE_RE.match(body)
    return m.group(1).strip() if m else body


__all__ = [
    "TOOL_SYSTEM_SECTION",
    "arguments_object",
    "format_tool_call",
    "inline_tools",
    "parse_tool_calls",
    "tool_system_section",
]

"""The body of ``POST /v1/chat/completions`` and its conversion to the service's ``ChatInput``.

``ChatCompletionRequest`` is OpenAI's request shape, validated strictly by
pydantic (an unknown field, or a field of the wrong type, is a 400 naming it, as
OpenAI does). ``to_chat_input`` checks the cross-field rules (e.g.
``top_logprobs`` needs ``logprobs``, ``tool_choice`` names an offered tool) and
raises ``InvalidInput`` naming the parameter, so a refused request never reaches
the scheduler and writes no trace. The router lives in ``app/routes/openai.py``;
this module knows the request format only (no HTTP framework).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.chat import Message, ToolCall, ToolSpec
from teachloop.core.errors import InvalidInput
from teachloop.serve.service import ChatInput
from teachloop.serve.wire import parse_logit_bias, parse_stop


class _Strict(BaseModel):
    """Unknown fields and wrong types are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """A text part of a multi-part message content."""

    type: Literal["text"]
    text: str


class FunctionCallIn(_Strict):
    """A function call in an assistant message: its name and JSON-encoded arguments."""

    name: str = Field(min_length=1)
    arguments: str


class ToolCallIn(_Strict):
    """A tool call an earlier assistant message made."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Strict):
    """One message of the conversation (OpenAI shape; ``developer`` is taken as ``system``)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class FunctionDef(_Strict):
    """A function the model may call: name, description and a JSON Schema of its parameters."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_Strict):
    """A tool offered to the model (functions only)."""

    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    """Names one function."""

    name: str


class NamedToolChoice(_Strict):
    """``tool_choice`` forcing one named function."""

    type: Literal["function"]
    function: FunctionName


class StreamOptions(_Strict):
    """Options of a streamed reply (``include_usage`` adds a last chunk with usage)."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class JsonSchemaFormat(_Strict):
    """``response_format.json_schema``: a named schema the reply must validate against."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """``text`` (default), ``json_object`` or ``json_schema`` (with ``json_schema``)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_Strict):
    """The body of ``POST /v1/chat/completions``."""

    model: str = Field(min_length=1, max_length=300)
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    store: bool | None = None
    service_tier: str | None = None


def _message(i: int, m: ChatMessageIn) -> Message:
    if isinstance(m.content, list):
        content: str | None = "\n".join(part.text for part in m.content)
    else:
        content = m.content
    if content is None and m.role in ("system", "developer", "user", "tool"):
        raise InvalidInput(f"messages[{i}].content is required for a {m.role} message", param=f"messages.{i}.content")
    if m.tool_calls and m.role != "assistant":
        raise InvalidInput(f"messages[{i}]: only assistant messages carry tool_calls", param=f"messages.{i}.tool_calls")
    if m.role == "tool" and not m.tool_call_id:
        raise InvalidInput(f"messages[{i}]: a tool message needs tool_call_id", param=f"messages.{i}.tool_call_id")
    calls = tuple(ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in m.tool_calls or ())
    role = "system" if m.role == "developer" else m.role
    return Message(
        role=role, content=content or "", tool_calls=calls,
        tool_call_id=m.tool_call_id if m.role == "tool" else None, name=m.name,
    )


def _response_format(rf: ResponseFormat | None) -> dict[str, Any] | None:
    """``response_format`` as ``ChatInput`` takes it: None for text, else its dict (``serve.grammar`` enforces it)."""
    if rf is None:
        return None
    if (rf.json_schema is None) == (rf.type == "json_schema"):
        problem = "needs json_schema" if rf.type == "json_schema" else "takes no json_schema"
        raise InvalidInput(f"response_format type {rf.type} {problem}", param="response_format.json_schema")
    if rf.json_schema is None:
        return None if rf.type == "text" else {"type": rf.type}
    return {"type": "json_schema", "json_schema": rf.json_schema.model_dump(by_alias=True, exclude_none=True)}


def to_chat_input(req: ChatCompletionRequest) -> ChatInput:
    """The validated ``ChatInput`` of a request; ``InvalidInput`` naming the parameter otherwise."""
    logit_bias = parse_logit_bias(req.logit_bias)
    response_format = _response_format(req.response_format)
    if req.top_logprobs and not req.logprobs:
        raise InvalidInput("top_logprobs needs logprobs: true", param="top_logprobs")
    if req.stream_options is not None and not req.stream:
        raise InvalidInput("stream_options is only allowed with stream: true", param="stream_options")
    if req.max_tokens is not None and req.max_completion_tokens is not None and req.max_tokens != req.max_completion_tokens:
        raise InvalidInput("max_tokens and max_completion_tokens disagree; send one", param="max_completion_tokens")
    stops = parse_stop(req.stop)
    metadata = dict(req.metadata or {})
    if len(metadata) > 16:
        raise InvalidInput(f"metadata takes at most 16 keys, got {len(metadata)}", param="metadata")
    for key, value in metadata.items():
        if not 1 <= len(key) <= 64 or len(value) > 512:
            raise InvalidInput("metadata keys are 1-64 characters and values at most 512", param=f"metadata.{key}")
    messages = [_message(i, m) for i, m in enumerate(req.messages)]
    specs = [ToolSpec(name=t.function.name, description=t.function.description or "",
                      parameters=t.function.parameters or {"type": "object", "properties": {}}) for t in req.tools or []]
    choice = req.tool_choice
    if choice is not None and choice != "none" and not specs:
        raise InvalidInput("tool_choice needs tools", param="tool_choice")
    offered: list[ToolSpec] | None = specs or None
    if choice == "none":
        offered = None
    elif isinstance(choice, NamedToolChoice):
        offered = [s for s in specs if s.name == choice.function.name]
        if not offered:
            raise InvalidInput(f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    logprobs = bool(req.logprobs)
    params = {
        "n": req.n or 1, "temperature": req.temperature, "top_p": req.top_p, "max_tokens": max_tokens,
        "stop": stops or None, "seed": req.seed, "logprobs": logprobs, "top_logprobs": req.top_logprobs,
        "presence_penalty": req.presence_penalty or None, "frequency_penalty": req.frequency_penalty or None,
        "logit_bias": {str(t): b for t, b in logit_bias} or None,
        "tool_choice": choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
        "response_format": response_format, "parallel_tool_calls": req.parallel_tool_calls,
    }
    return ChatInput(
        model=req.model, messages=messages, tools=offered, n=req.n or 1,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, max_tokens=max_tokens,
        max_tokens_param="max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens",
        stop=stops, seed=req.seed,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=logit_bias,
        logprobs=logprobs, top_logprobs=req.top_logprobs or 0, user=req.user, metadata=metadata,
        stream=bool(req.stream), include_usage=bool(req.stream_options and req.stream_options.include_usage),
        response_format=response_format,
        tool_choice={"name": choice.function.name} if isinstance(choice, NamedToolChoice) else choice,
        strict_tools=tuple(t.function.name for t in req.tools or [] if t.function.strict),
        parallel_tool_calls=req.parallel_tool_calls is not False,
        trace_messages=[m.to_openai() for m in messages],
        trace_tools=[s.to_openai() for s in specs] or None, trace_params={k: v for k, v in params.items() if v is not None},
    )


__all__ = [
    "ChatCompletionRequest",
    "ChatMessageIn",
    "FunctionCallIn",
    "FunctionDef",
    "FunctionName",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "ResponseFormat",
    "StreamOptions",
    "TextPart",
    "ToolCallIn",
    "ToolIn",
    "to_chat_input",
]

"""The OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Requests are validated strictly by pydantic (an unknown field, or a field of
the wrong type, is a 400 naming it, as OpenAI does); cross-field rules (e.g.
``top_logprobs`` needs ``logprobs``) raise ``InvalidInput`` naming the
parameter. Errors render through the app's single error handler in OpenAI's
shape. A refused request never reaches the scheduler and writes no trace.

Non-streaming: the JSON completion is sent after the trace is committed.
Streaming (SSE): a role chunk, content chunks as tokens arrive (text is held
back while it could still become a stop string), then -- after the trace is
committed -- one chunk per choice with its ``finish_reason``, the usage chunk
when ``stream_options.include_usage`` is set, and ``data: [DONE]``. When tools
are offered, a reply's text is only known to be content or a tool call at the
end, so content and ``tool_calls`` arrive together in the last delta. A
failure after the first byte is sent as ``data: {"error": ...}`` with no
``[DONE]``. A client that leaves mid-stream frees its batch rows at once, and
its trace records the tokens produced so far with ``finish_reason: "cancelled"``.
Every response carries ``x-teachloop-trace-id``; the completion
``id`` is ``chatcmpl-<trace id>``.

This module knows the wire format only; ``service.Serving`` does the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.chat import Message, ToolCall, ToolSpec
from teachloop.core.errors import InvalidInput, TeachloopError
from teachloop.serve.deps import Reader, ServingDep, Writer
from teachloop.serve.scheduler import TokenEvent
from teachloop.serve.service import ChatInput, ChatRun, ModelNotFound, Reply, Serving
from teachloop.serve.text import TokenText
from teachloop.serve.wire import (
    SSE_DONE,
    TRACE_HEADER,
    parse_logit_bias,
    parse_stop,
    sse,
    sse_error,
    usage_json,
)
from teachloop.store.repos.deployments import Deployments

router = APIRouter(prefix="/v1", tags=["openai"])



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """A text part of a multi-part message content."""

    type: Literal["text"]
    text: str


class FunctionCallIn(_Strict):
    name: str = Field(min_length=1)
    arguments: str


class ToolCallIn(_Strict):
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
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class JsonSchemaFormat(_Strict):
    """``response_format.json_schema``: a named schema the reply must validate against."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
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


def _unsupported(param: str, what: str) -> InvalidInput:
    return InvalidInput(f"{param}: {what} is not supported by this server", param=param)


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
        "response_format": response_format,
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
        trace_messages=[m.to_openai() for m in messages],
        trace_tools=[s.to_openai() for s in specs] or None, trace_params={k: v for k, v in params.items() if v is not None},
    )


# ---------------------------------------------------------------------------------------------- responses


def _message_json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": message.content, "refusal": None}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if not message.content:
            out["content"] = None
    return out


def _logprob_entries(
    tokens: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]] | None, text: TokenText
) -> list[dict[str, Any]]:
    out = []
    for k, (token, lp) in enumerate(zip(tokens, logprobs, strict=True)):
        s, b = text(token)
        top = []
        if tops is not None and k < len(tops):
            for t, v in tops[k]:
                ts, tb = text(t)
                top.append({"token": ts, "logprob": v, "bytes": tb})
        out.append({"token": s, "logprob": lp, "bytes": b, "top_logprobs": top})
    return out


def _usage(run: ChatRun, replies: list[Reply]) -> dict[str, int]:
    return usage_json(run.prompt_tokens, sum(r.completion_tokens for r in replies))


def _token_text(serving: Serving) -> TokenText:
    assert serving.token_text is not None
    return serving.token_text


def completion_body(serving: Serving, run: ChatRun, replies: list[Reply]) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object."""
    text = _token_text(serving)
    choices = []
    for r in replies:
        lp = {"content": _logprob_entries(r.tokens, r.logprobs, r.top, text), "refusal": None} if run.chat.logprobs else None
        choices.append({"index": r.index, "message": _message_json(r.message), "logprobs": lp, "finish_reason": r.finish_reason})
    return {
        "id": run.completion_id, "object": "chat.completion", "created": int(run.created.timestamp()),
        "model": run.chat.model, "system_fingerprint": run.target.fingerprint, "choices": choices,
        "usage": _usage(run, replies),
    }


async def _sse(serving: Serving, run: ChatRun) -> AsyncIterator[bytes]:
    chat = run.chat
    include_usage = chat.include_usage
    base = {"id": run.completion_id, "object": "chat.completion.chunk", "created": int(run.created.timestamp()),
            "model": chat.model, "system_fingerprint": run.target.fingerprint}

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None, last: bool = False) -> bytes:
        body = {**base, "choices": choices}
        if include_usage:
            body["usage"] = usage if last else None
        return sse(body)

    buffered = chat.tools is not None
    streams = [serving.text_stream(chat) for _ in range(chat.n)]
    text = _token_text(serving)
    stop_ids = set(serving.stop_ids)
    try:
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                     for i in range(chat.n)])
        results: list[Any] = []
        async for kind, payload in run.events():
            if kind == "done":
                results = payload
                break
            by_index: dict[int, list[TokenEvent]] = {}
            for event in payload:
                by_index.setdefault(event[0], []).append(event)
            out = []
            for i, events in by_index.items():
                if buffered:
                    continue
                live = [e for e in events if e[1] not in stop_ids]
                text_delta = streams[i].push([e[1] for e in events])
                lp = None
                if chat.logprobs:
                    tops = [e[3] or [] for e in live] if chat.top_logprobs else None
                    lp = {"content": _logprob_entries([e[1] for e in live], [e[2] for e in live], tops, text),
                          "refusal": None}
                if text_delta or (lp and lp["content"]):
                    out.append({"index": i, "delta": {"content": text_delta}, "logprobs": lp, "finish_reason": None})
            if out:
                yield chunk(out)
        replies = [serving.reply(chat, i, seq) for i, seq in enumerate(results)]
        await run.record(replies)
        for r in replies:
            if buffered:
                delta: dict[str, Any] = {}
                if r.message.content:
                    delta["content"] = r.message.content
                if r.message.tool_calls:
                    delta["tool_calls"] = [
                        {"index": k, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                        for k, c in enumerate(r.message.tool_calls)
                    ]
                if delta:
                    yield chunk([{"index": r.index, "delta": delta, "logprobs": None, "finish_reason": None}])
            else:
                rest = streams[r.index].finish()
                if rest:
                    yield chunk([{"index": r.index, "delta": {"content": rest}, "logprobs": None, "finish_reason": None}])
        yield chunk([{"index": r.index, "delta": {}, "logprobs": None, "finish_reason": r.finish_reason} for r in replies])
        if include_usage:
            yield chunk([], _usage(run, replies), last=True)
        yield SSE_DONE
    except TeachloopError as err:
        yield sse_error(err)
    except (asyncio.CancelledError, GeneratorExit):  # the client left: free its rows now, trace what it got
        run.close()
        run.record_cancelled()  # never awaits (a cancelled task cannot); a no-op once the trace was written
        raise
    finally:
        run.close()


# ---------------------------------------------------------------------------------------------- routes


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, principal: Writer, serving: ServingDep) -> Any:
    """Create a chat completion (OpenAI-compatible; ``stream: true`` for server-sent events)."""
    chat = to_chat_input(body)
    run = await serving.open_chat(principal, chat)
    headers = {TRACE_HEADER: run.trace_id}
    if chat.stream:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(_sse(serving, run), media_type="text/event-stream", headers=headers)
    try:
        replies = await run.replies()
        await run.record(replies)
    finally:
        run.close()
    return JSONResponse(completion_body(serving, run, replies), headers=headers)


def _model_card(model_id: str, created: int, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


def _cards(serving: Serving, org_id: str) -> list[dict[str, Any]]:
    with serving.database.session(write=False) as session:
        deployments = Deployments(session).list(org_id)
    cards = [_model_card(d.name, int(d.created_at.timestamp()), "organization") for d in deployments]
    names = {d.name for d in deployments}
    cards += [_model_card(m, 0, "teachloop") for m in serving.served_models() if m not in names]
    return cards


@router.get("/models")
def list_models(principal: Reader, serving: ServingDep) -> dict[str, Any]:
    """The organisation's deployments, then the base models this server serves."""
    return {"object": "list", "data": _cards(serving, principal.org_id)}


@router.get("/models/{model:path}")
def get_model(model: str, principal: Reader, serving: ServingDep) -> dict[str, Any]:
    """One model card; 404 ``model_not_found`` for anything the organisation cannot call."""
    for card in _cards(serving, principal.org_id):
        if card["id"] == model:
            return card
    raise ModelNotFound(f"the model {model!r} does not exist or you do not have access to it", param="model")


__all__ = ["TRACE_HEADER", "ChatCompletionRequest", "completion_body", "router", "to_chat_input"]

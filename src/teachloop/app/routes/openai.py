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
``id`` is ``chatcmpl-<trace id>``. A deployment arm answered by an upstream
(``serve.upstream``) is relayed: the upstream's body (or stream) passes
through with the teachloop id and the deployment's name as ``model``, and its
errors keep the upstream's status; its trace is committed before the answer
unless ``ServingConfig.upstream_commit_first`` is off (then just after it). A deployment with a shadow arm also sends
the request there in the background (never seen by the caller).

The request body and its checks live in ``serve.chat``; ``service.Serving`` does the
work. This module knows HTTP and the response models only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from teachloop.app.auth import Member, ServingDep, Viewer
from teachloop.core.chat import Message
from teachloop.core.errors import TeachloopError
from teachloop.core.tenancy import Principal
from teachloop.serve.chat import ChatCompletionRequest, to_chat_input
from teachloop.serve.scheduler import TokenEvent
from teachloop.serve.service import ChatInput, ChatRun, ModelNotFound, Reply, Serving, Target
from teachloop.serve.text import TokenText
from teachloop.serve.upstream import Relayed
from teachloop.serve.wire import SSE_DONE, TRACE_HEADER, sse, sse_error, usage_json
from teachloop.store.repos.deployments import Deployments

router = APIRouter(prefix="/v1", tags=["openai"])


# ---------------------------------------------------------------------------------------------- models


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position."""

    token: str = Field(description="The token's text.")
    logprob: float = Field(description="Its log probability.")
    bytes: list[int] | None = Field(description="The token's UTF-8 bytes (a token may hold part of a character).")


class TokenLogprob(BaseModel):
    """A sampled token with its log probability and, with ``top_logprobs``, the most likely alternatives."""

    token: str = Field(description="The token's text.")
    logprob: float = Field(description="Its log probability under the model.")
    bytes: list[int] | None = Field(description="The token's UTF-8 bytes.")
    top_logprobs: list[TopLogprob] = Field(description="The top_logprobs most likely tokens (empty when not asked).")


class ChoiceLogprobs(BaseModel):
    """Log probabilities of a choice's tokens (``logprobs: true``)."""

    content: list[TokenLogprob] | None = Field(description="One entry per sampled content token.")
    refusal: list[TokenLogprob] | None = Field(description="Always null here (no refusals).")


class FunctionCallOut(BaseModel):
    """The function the model calls."""

    name: str = Field(description="The function's name (one of the offered tools).")
    arguments: str = Field(description="Its arguments, JSON-encoded, as the model wrote them.")


class ToolCallOut(BaseModel):
    """A tool call the model made; answer it with a tool message naming ``id``."""

    id: str = Field(description="The call's id (call_...).")
    type: Literal["function"] = Field(description="Always function.")
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    """The reply."""

    role: Literal["assistant"] = Field(description="Always assistant.")
    content: str | None = Field(description="The text; null when the reply is only tool calls.")
    refusal: str | None = Field(description="Always null here.")
    tool_calls: list[ToolCallOut] | None = Field(
        default=None, description="The tool calls of the reply (absent when it makes none)."
    )


class ChatChoice(BaseModel):
    """One of the ``n`` replies."""

    index: int = Field(description="Its position among the choices.")
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = Field(description="Token log probabilities, when logprobs was true.")
    finish_reason: str = Field(description="stop (end of turn or a stop string), length (token limit) or tool_calls.")


class Usage(BaseModel):
    """Tokens billed to the request."""

    prompt_tokens: int = Field(description="Tokens of the rendered prompt.")
    completion_tokens: int = Field(description="Tokens sampled, over all choices.")
    total_tokens: int = Field(description="Their sum.")


class ChatCompletion(BaseModel):
    """A chat completion (``object: "chat.completion"``), in OpenAI's shape."""

    id: str = Field(description="chatcmpl-<trace id>; feedback goes to /api/traces/{id}/feedback.")
    object: Literal["chat.completion"] = Field(description="Always chat.completion.")
    created: int = Field(description="Unix time (seconds) the request was accepted.")
    model: str = Field(description="The model (deployment or base model) the request named.")
    system_fingerprint: str | None = Field(description="Identifies the base model and adapter version that answered.")
    choices: list[ChatChoice] = Field(description="The replies, in index order.")
    usage: Usage


class ModelCard(BaseModel):
    """A model the organisation can call (OpenAI's model object)."""

    id: str = Field(description="What to pass as `model`: a deployment name or a base model id.")
    object: Literal["model"] = Field(description="Always model.")
    created: int = Field(description="Unix time the deployment was created (0 for a base model).")
    owned_by: str = Field(description="organization for a deployment, teachloop for a base model.")


class ModelCardList(BaseModel):
    """The models the organisation can call (``object: "list"``)."""

    object: Literal["list"] = Field(description="Always list.")
    data: list[ModelCard] = Field(description="Deployments first, then the base models this server serves.")


# ---------------------------------------------------------------------------------------------- responses


def _message(message: Message) -> AssistantMessage:
    calls = [ToolCallOut(id=c.id, type="function", function=FunctionCallOut(name=c.name, arguments=c.arguments))
             for c in message.tool_calls]
    if calls:
        return AssistantMessage(role="assistant", content=message.content or None, refusal=None, tool_calls=calls)
    return AssistantMessage(role="assistant", content=message.content, refusal=None)


def _logprob_entries(
    tokens: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]] | None, text: TokenText
) -> list[TokenLogprob]:
    out = []
    for k, (token, lp) in enumerate(zip(tokens, logprobs, strict=True)):
        s, b = text(token)
        top = []
        if tops is not None and k < len(tops):
            for t, v in tops[k]:
                ts, tb = text(t)
                top.append(TopLogprob(token=ts, logprob=v, bytes=tb))
        out.append(TokenLogprob(token=s, logprob=lp, bytes=b, top_logprobs=top))
    return out


def _usage(run: ChatRun, replies: list[Reply]) -> dict[str, int]:
    return usage_json(run.prompt_tokens, sum(r.completion_tokens for r in replies))


def _token_text(serving: Serving) -> TokenText:
    assert serving.token_text is not None
    return serving.token_text


def completion_body(serving: Serving, run: ChatRun, replies: list[Reply]) -> ChatCompletion:
    """The non-streaming ``chat.completion`` object."""
    text = _token_text(serving)
    choices = []
    for r in replies:
        lp = (ChoiceLogprobs(content=_logprob_entries(r.tokens, r.logprobs, r.top, text), refusal=None)
              if run.chat.logprobs else None)
        choices.append(ChatChoice(index=r.index, message=_message(r.message), logprobs=lp,
                                  finish_reason=r.finish_reason))
    return ChatCompletion(
        id=run.completion_id, object="chat.completion", created=int(run.created.timestamp()),
        model=run.chat.model, system_fingerprint=run.target.fingerprint, choices=choices,
        usage=Usage.model_validate(_usage(run, replies)),
    )


def _lp_json(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [e.model_dump() for e in entries]


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
                    lp = {"content": _lp_json(_logprob_entries([e[1] for e in live], [e[2] for e in live], tops, text)),
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


_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"description": "The completion; with stream: true, server-sent events of chat.completion.chunk objects "
                         "ending with data: [DONE].", "content": {"text/event-stream": {}}},
}


@router.post("/chat/completions", response_model=ChatCompletion, response_model_exclude_unset=True, responses=_STREAM)
async def chat_completions(body: ChatCompletionRequest, principal: Member, serving: ServingDep,
                           response: Response) -> Any:
    """Create a chat completion (OpenAI-compatible; ``stream: true`` for server-sent events)."""
    chat = to_chat_input(body)
    target = await serving.route(principal, chat)
    if target.upstream_id is not None:
        return await _relay(serving, principal, chat, body, target)
    run = await serving.open_chat(principal, chat, target=target)
    serving.shadow(principal, chat, body.model_dump(exclude_unset=True, by_alias=True), target, run.trace_id)
    headers = {TRACE_HEADER: run.trace_id}
    if chat.stream:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(_sse(serving, run), media_type="text/event-stream", headers=headers)
    try:
        replies = await run.replies()
        await run.record(replies)
    finally:
        run.close()
    response.headers[TRACE_HEADER] = run.trace_id
    return completion_body(serving, run, replies)


async def _relay(serving: Serving, principal: Principal, chat: ChatInput, body: ChatCompletionRequest,
                 target: Target) -> Response:
    """Answer from the target's upstream: its JSON (or stream) passed through, traced."""
    raw = body.model_dump(exclude_unset=True, by_alias=True)
    out = await serving.upstream_chat(principal, chat, raw, target)
    serving.shadow(principal, chat, raw, target, out.trace_id)
    if isinstance(out, Relayed):  # a trace not committed yet (upstream_commit_first off) is awaited after the body
        return JSONResponse(out.body, headers={TRACE_HEADER: out.trace_id},
                            background=BackgroundTask(out.await_commit) if out.committed is not None else None)
    return StreamingResponse(out.frames, media_type="text/event-stream",
                             headers={TRACE_HEADER: out.trace_id, "cache-control": "no-cache"})


def _cards(serving: Serving, org_id: str) -> list[ModelCard]:
    with serving.database.session(write=False) as session:
        deployments = Deployments(session).list(org_id)
    cards = [ModelCard(id=d.name, object="model", created=int(d.created_at.timestamp()), owned_by="organization")
             for d in deployments]
    names = {d.name for d in deployments}
    cards += [ModelCard(id=m, object="model", created=0, owned_by="teachloop")
              for m in serving.served_models() if m not in names]
    return cards


# coroutines reading through ``run_read``: a plain ``def`` route costs two thread hops (the handler, then its
# response model's validation), more CPU than the read itself; on SQLite the read runs inline
@router.get("/models", response_model=ModelCardList)
async def list_models(principal: Viewer, serving: ServingDep) -> ModelCardList:
    """The organisation's deployments, then the base models this server serves."""
    return ModelCardList(object="list", data=await serving.database.run_read(_cards, serving, principal.org_id))


@router.get("/models/{model:path}", response_model=ModelCard)
async def get_model(model: str, principal: Viewer, serving: ServingDep) -> ModelCard:
    """One model card; 404 ``model_not_found`` for anything the organisation cannot call."""
    for card in await serving.database.run_read(_cards, serving, principal.org_id):
        if card.id == model:
            return card
    raise ModelNotFound(f"the model {model!r} does not exist or you do not have access to it", param="model")


__all__ = [
    "AssistantMessage",
    "ChatChoice",
    "ChatCompletion",
    "ChoiceLogprobs",
    "FunctionCallOut",
    "ModelCard",
    "ModelCardList",
    "TokenLogprob",
    "ToolCallOut",
    "TopLogprob",
    "Usage",
    "completion_body",
    "router",
]

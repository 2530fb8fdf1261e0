"""The legacy OpenAI completions API: ``POST /v1/completions``.

The body is ``CompletionRequest`` (strict: an unknown field, or one of the wrong
type, is a 400 naming it); ``to_completion_input`` checks the rest (``suffix`` is
refused, ``best_of`` must equal ``n``, at most four ``stop`` strings, ``logit_bias``
keys are token ids with biases in [-100, 100]) and ``serve.completions`` checks what
needs the model (token ids in the vocabulary, the context length) before anything
is queued or stored. ``prompt`` is a string, a list of strings, a list of token ids
or a list of those lists; choice ``p * n + j`` is sample ``j`` of prompt ``p``.

``logprobs: k`` is the legacy form: ``tokens``, ``token_logprobs``, ``top_logprobs``
(the ``k`` most likely tokens, keyed by their text) and ``text_offset`` (character
offsets into the choice's ``text``). With ``echo`` the prompt comes first in
``text`` and in the logprobs; the prompt's first token has no logprob and prompt
tokens carry no top alternatives (null).

Streaming (SSE): with ``echo`` a first chunk per choice carries the prompt, then
text chunks as tokens arrive (never half a character, held back while it could
still become a stop string), then -- after the traces are committed -- one chunk
per choice with its ``finish_reason``, the usage chunk when
``stream_options.include_usage`` is set, and ``data: [DONE]``. Every response
carries ``x-teachloop-trace-id`` (one trace per prompt, comma-separated); the
completion ``id`` is ``cmpl-<first trace id>``. This module knows HTTP only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from teachloop.app.auth import Member, ServingDep
from teachloop.core.errors import InvalidInput, TeachloopError
from teachloop.serve.completions import (
    MAX_LOGPROBS,
    CompletionInput,
    CompletionRun,
    PromptInfo,
    open_completion,
)
from teachloop.serve.scheduler import TokenEvent
from teachloop.serve.service import Reply
from teachloop.serve.text import TextStream, TokenText
from teachloop.serve.wire import (
    SSE_DONE,
    TRACE_HEADER,
    parse_logit_bias,
    parse_stop,
    sse,
    sse_error,
    usage_json,
)

router = APIRouter(prefix="/v1", tags=["openai"])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CompletionStreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class CompletionRequest(_Strict):
    """The body of ``POST /v1/completions``."""

    model: str = Field(min_length=1, max_length=300)
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, texts, token ids, or lists of token ids; each prompt is completed n times."
    )
    suffix: str | None = Field(default=None, description="Not supported: a non-empty suffix is refused.")
    max_tokens: int | None = Field(default=None, ge=0, description="0 only with echo (scores the prompt).")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    best_of: int | None = Field(default=None, ge=1, description="Accepted only when equal to n.")
    stream: bool | None = None
    stream_options: CompletionStreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, description="Top-k count (legacy form).")
    echo: bool | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    user: str | None = Field(default=None, max_length=256)


class LegacyLogprobs(BaseModel):
    """Logprobs in the legacy completions form (parallel lists, one entry per token)."""

    tokens: list[str] = Field(description="Each token's text.")
    token_logprobs: list[float | None] = Field(description="Its logprob; null for the first prompt token.")
    top_logprobs: list[dict[str, float] | None] | None = Field(
        description="The k most likely tokens at each place (null for prompt tokens); null when logprobs is 0."
    )
    text_offset: list[int] = Field(description="Where each token starts in the choice's text (characters).")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: LegacyLogprobs | None
    finish_reason: str | None = Field(description="stop, length, or null in a chunk before the last.")


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """A ``text_completion`` (the whole response, or one chunk of a stream)."""

    id: str = Field(description="cmpl-<trace id of the first prompt>.")
    object: str = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


def to_completion_input(req: CompletionRequest) -> CompletionInput:
    """The validated ``CompletionInput`` of a request; ``InvalidInput`` naming the parameter otherwise."""
    if req.suffix:
        raise InvalidInput("suffix is not supported by this server (no fill-in-the-middle)", param="suffix")
    n = req.n or 1
    if req.best_of is not None and req.best_of != n:
        raise InvalidInput(f"best_of must equal n ({n}); choosing the best of more samples is not supported",
                           param="best_of")
    if req.stream_options is not None and not req.stream:
        raise InvalidInput("stream_options is only allowed with stream: true", param="stream_options")
    stops = parse_stop(req.stop)
    logit_bias = parse_logit_bias(req.logit_bias)
    raw = req.prompt
    prompts: list[str | list[int]]
    if isinstance(raw, str):
        prompts = [raw]
    elif raw and all(isinstance(t, int) for t in raw):
        prompts = [[int(t) for t in raw]]  # type: ignore[arg-type]
    else:
        prompts = list(raw)  # type: ignore[arg-type]
    params = {
        "n": n, "temperature": req.temperature, "top_p": req.top_p, "max_tokens": req.max_tokens,
        "stop": list(stops) or None, "seed": req.seed, "logprobs": req.logprobs, "echo": req.echo or None,
        "presence_penalty": req.presence_penalty or None, "frequency_penalty": req.frequency_penalty or None,
        "logit_bias": {str(t): b for t, b in logit_bias} or None,
    }
    return CompletionInput(
        model=req.model, prompts=prompts, n=n, temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, max_tokens=req.max_tokens, stop=stops, seed=req.seed,
        logprobs=req.logprobs, echo=bool(req.echo), presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0, logit_bias=logit_bias, user=req.user,
        stream=bool(req.stream), include_usage=bool(req.stream_options and req.stream_options.include_usage),
        trace_params={k: v for k, v in params.items() if v is not None},
    )


# ---------------------------------------------------------------------------------------------- responses


def legacy_logprobs(
    text: TokenText, tokens: Sequence[int], logprobs: Sequence[float | None],
    tops: Sequence[Sequence[tuple[int, float]] | None] | None, k: int, offset: int,
) -> LegacyLogprobs:
    """The legacy logprobs of ``tokens`` whose text starts at character ``offset``."""
    strings = [text(t)[0] for t in tokens]
    offsets, at = [], offset
    for s in strings:
        offsets.append(at)
        at += len(s)
    top: list[dict[str, float] | None] | None = None
    if k:
        top = []
        for place in range(len(tokens)):
            alts = tops[place] if tops is not None and place < len(tops) else None
            if alts is None:
                top.append(None)
                continue
            entry: dict[str, float] = {}
            for t, v in alts[:k]:
                entry.setdefault(text(t)[0], v)  # most likely first: a repeated text keeps its best logprob
            top.append(entry)
    return LegacyLogprobs(tokens=strings, token_logprobs=list(logprobs), top_logprobs=top, text_offset=offsets)


def _prompt_logprobs(text: TokenText, info: PromptInfo, k: int) -> LegacyLogprobs:
    assert info.logprobs is not None
    return legacy_logprobs(text, info.tokens, info.logprobs, [None] * len(info.tokens), k, 0)


def _joined(a: LegacyLogprobs | None, b: LegacyLogprobs) -> LegacyLogprobs:
    if a is None:
        return b
    top = None if a.top_logprobs is None or b.top_logprobs is None else a.top_logprobs + b.top_logprobs
    return LegacyLogprobs(tokens=a.tokens + b.tokens, token_logprobs=a.token_logprobs + b.token_logprobs,
                          top_logprobs=top, text_offset=a.text_offset + b.text_offset)


def _token_text(run: CompletionRun) -> TokenText:
    assert run.serving.token_text is not None
    return run.serving.token_text


def _usage(run: CompletionRun, replies: list[list[Reply]]) -> CompletionUsage:
    completion = sum(r.completion_tokens for per_prompt in replies for r in per_prompt)
    return CompletionUsage(**usage_json(run.prompt_tokens, completion))


def completion_body(run: CompletionRun, replies: list[list[Reply]]) -> Completion:
    """The non-streaming ``text_completion``."""
    inp, text = run.input, _token_text(run)
    choices = []
    for info, per_prompt in zip(run.prompts, replies, strict=True):
        head = info.text if inp.echo else ""
        for r in per_prompt:
            lp = None
            if inp.logprobs is not None:
                lp = _prompt_logprobs(text, info, inp.logprobs) if inp.echo else None
                lp = _joined(lp, legacy_logprobs(text, r.tokens, r.logprobs, r.top, inp.logprobs, len(head)))
            choices.append(CompletionChoice(text=head + (r.message.content or ""), index=info.index * inp.n + r.index,
                                            logprobs=lp, finish_reason=r.finish_reason))
    return Completion(id=run.completion_id, created=int(run.created.timestamp()), model=inp.model,
                      system_fingerprint=run.target.fingerprint, choices=choices, usage=_usage(run, replies))


class _Choice:
    """The streaming state of one choice: its text stream and where its next token's text starts."""

    def __init__(self, stream: TextStream, offset: int) -> None:
        self.stream = stream
        self.offset = offset


async def _sse(run: CompletionRun) -> AsyncIterator[bytes]:
    inp, text = run.input, _token_text(run)
    def chunk(choices: list[CompletionChoice], usage: CompletionUsage | None = None) -> bytes:
        body = Completion(id=run.completion_id, created=int(run.created.timestamp()), model=inp.model,
                          system_fingerprint=run.target.fingerprint, choices=choices, usage=usage).model_dump()
        if not inp.include_usage:
            del body["usage"]
        return sse(body)

    try:
        state: dict[int, _Choice] = {}
        for info in run.prompts:
            head = info.text if inp.echo else ""
            for j in range(inp.n):
                state[info.index * inp.n + j] = _Choice(run.text_stream(), len(head))
            if inp.echo:
                lp = _prompt_logprobs(text, info, inp.logprobs) if inp.logprobs is not None else None
                yield chunk([CompletionChoice(text=head, index=info.index * inp.n + j, logprobs=lp, finish_reason=None)
                             for j in range(inp.n)])
        async for p, events in run.events():
            out = _deltas(run, text, state, p, events)
            if out:
                yield chunk(out)
        replies = run.results()
        await run.record(replies)
        last = []
        for info, per_prompt in zip(run.prompts, replies, strict=True):
            for r in per_prompt:
                index = info.index * inp.n + r.index
                last.append(CompletionChoice(text=state[index].stream.finish(), index=index, logprobs=None,
                                             finish_reason=r.finish_reason))
        yield chunk(last)
        if inp.include_usage:
            yield chunk([], _usage(run, replies))
        yield SSE_DONE
    except TeachloopError as err:
        yield sse_error(err)
    except (asyncio.CancelledError, GeneratorExit):  # the client left: free its rows now, trace what it got
        run.close()
        run.record_cancelled()  # never awaits; a no-op for a prompt whose trace was written
        raise
    finally:
        run.close()


def _deltas(run: CompletionRun, text: TokenText, state: dict[int, _Choice], p: int,
            events: list[TokenEvent]) -> list[CompletionChoice]:
    """The text (and logprobs) each choice of prompt ``p`` may send after ``events``."""
    inp = run.input
    by_sample: dict[int, list[TokenEvent]] = {}
    for event in events:
        by_sample.setdefault(event[0], []).append(event)
    out = []
    for j, mine in sorted(by_sample.items()):
        choice = state[p * inp.n + j]
        if choice.stream.ended:
            continue
        delta = choice.stream.push([e[1] for e in mine])
        live = [e for e in mine if not run.is_stop(e[1])]
        lp = None
        if inp.logprobs is not None and live:
            tops = [e[3] for e in live] if inp.logprobs else None
            lp = legacy_logprobs(text, [e[1] for e in live], [e[2] for e in live], tops, inp.logprobs, choice.offset)
            choice.offset = lp.text_offset[-1] + len(lp.tokens[-1])
        if delta or lp is not None:
            out.append(CompletionChoice(text=delta, index=p * inp.n + j, logprobs=lp, finish_reason=None))
    return out


# ---------------------------------------------------------------------------------------------- route


_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"description": "The completion; with stream: true, server-sent events of text_completion objects "
                         "ending with data: [DONE].", "content": {"text/event-stream": {}}},
}


@router.post("/completions", response_model=Completion, responses=_STREAM)
async def create_completion(body: CompletionRequest, principal: Member, serving: ServingDep) -> Any:
    """Create a text completion (OpenAI's legacy API; ``stream: true`` for server-sent events)."""
    inp = to_completion_input(body)
    run = await open_completion(serving, principal, inp)
    headers = {TRACE_HEADER: ", ".join(run.trace_ids)}
    if inp.stream:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(_sse(run), media_type="text/event-stream", headers=headers)
    try:
        replies = await run.replies()
        await run.record(replies)
    finally:
        run.close()
    return JSONResponse(completion_body(run, replies).model_dump(), headers=headers)


__all__ = [
    "Completion", "CompletionChoice", "CompletionRequest", "CompletionUsage", "LegacyLogprobs", "completion_body",
    "legacy_logprobs", "router", "to_completion_input",
]

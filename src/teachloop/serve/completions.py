"""Legacy text completions (``/v1/completions``) as a service: raw prompts in, continuations and traces out.

No chat template: a text prompt is tokenized as it is (with the tokenizer's own
special tokens, such as a BOS, as vLLM does), a token prompt is taken verbatim
after its ids are checked against the vocabulary. A continuation stops at the
client's stop strings or the model's EOS -- never at a template's end-of-turn.
The model, deployment, canary arm and adapter are resolved exactly as for chat
(``Serving.generation_target``, the ``AdapterPool``); sampling parameters
(penalties, ``logit_bias``, ``seed``) mean what they mean there.

Each prompt is one scheduler job of ``n`` rows and one trace, run through a
``ChatRun`` (its events, adapter hold, metrics and trace): the prompt text is
stored as a single user message and the params carry ``"kind": "completion"``.
Choice ``p * n + j`` is sample ``j`` of prompt ``p``. ``echo`` with ``logprobs``
scores the prompt on the engine (``engine.logprobs`` runs on the engine's
compute thread, between scheduler ticks); ``max_tokens: 0`` with ``echo``
scores without generating. Everything is checked before anything is queued,
so a refused request stores nothing.

This module knows nothing of HTTP: ``CompletionInput`` in, ``CompletionRun`` out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput, PayloadTooLarge
from teachloop.core.sampling import SampledSequence, SamplingParams
from teachloop.core.tenancy import Principal
from teachloop.serve.scheduler import AsyncSink, GenerationJob, TokenEvent
from teachloop.serve.service import ChatInput, ChatRun, Reply, Serving, Target, check_logit_bias
from teachloop.serve.text import TextStream, cut_at_stops

#: Most prompts one request may carry (each is a job of ``n`` rows).
MAX_PROMPTS = 64

#: Largest legacy ``logprobs`` (top-k) count: the scheduler's top-logprobs limit.
MAX_LOGPROBS = 20


@runtime_checkable
class PromptScorer(Protocol):
    """An engine that scores token sequences (``TorchEngine.logprobs``; runs on its compute thread)."""

    def logprobs(self, sequences: Sequence[Sequence[int]], adapter: str | None = None) -> list[list[float]]: ...


@dataclass(frozen=True)
class CompletionInput:
    """A validated ``/v1/completions`` request, independent of the HTTP shape it came in.

    ``prompts`` holds text or token ids per prompt; ``logprobs`` is the legacy
    top-k count (None: no logprobs); ``max_tokens`` 0 is allowed with ``echo``.
    """

    model: str
    prompts: list[str | list[int]]
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    echo: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    user: str | None = None
    stream: bool = False
    include_usage: bool = False
    trace_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise InvalidInput("prompt is empty", param="prompt")
        if len(self.prompts) > MAX_PROMPTS:
            raise InvalidInput(f"prompt takes at most {MAX_PROMPTS} prompts, got {len(self.prompts)}", param="prompt")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise InvalidInput(f"logprobs is a count from 0 to {MAX_LOGPROBS}", param="logprobs")
        if self.max_tokens == 0 and not self.echo:
            raise InvalidInput("max_tokens 0 generates nothing; it needs echo: true", param="max_tokens")


@dataclass(frozen=True)
class PromptInfo:
    """One prompt as run: its tokens, its text (what ``echo`` returns) and, when asked, its logprobs.

    ``logprobs[t]`` is log p(tokens[t] | tokens[:t]); the first token has none (None).
    """

    index: int
    tokens: list[int]
    text: str
    logprobs: list[float | None] | None = None


@dataclass(frozen=True)
class _Prepared:
    target: Target
    prompts: list[PromptInfo]
    params: list[SamplingParams | None]  # None: echo only, nothing to generate
    adapters: list[str | None]  # one hold on the adapter per prompt


class CompletionRun:
    """One ``/v1/completions`` request in flight: one ``ChatRun`` per prompt; close it when done."""

    def __init__(self, serving: Serving, inp: CompletionInput, target: Target, prompts: list[PromptInfo],
                 runs: list[ChatRun], generating: list[bool], created: datetime) -> None:
        self.serving = serving
        self.input = inp
        self.target = target
        self.prompts = prompts
        self.created = created
        self._runs = runs
        self._generating = generating
        self._results: dict[int, list[SampledSequence]] = {}
        self._stop_ids = frozenset(_eos_ids(serving))
        self._stops = (*inp.stop, *_eos_texts(serving))

    @property
    def trace_ids(self) -> list[str]:
        """The trace of each prompt, in prompt order."""
        return [run.trace_id for run in self._runs]

    @property
    def completion_id(self) -> str:
        """The OpenAI completion id: ``cmpl-<trace id of the first prompt>``."""
        return f"cmpl-{self._runs[0].trace_id}"

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of every prompt together."""
        return sum(len(p.tokens) for p in self.prompts)

    async def events(self) -> AsyncIterator[tuple[int, list[TokenEvent]]]:
        """Token batches as ``(prompt index, events)`` until every prompt is done (or raises its error)."""
        iters = {p: run.events() for p, run in enumerate(self._runs) if self._generating[p]}
        pending = {asyncio.ensure_future(anext(it)): p for p, it in iters.items()}
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    p = pending.pop(fut)
                    try:
                        kind, payload = fut.result()
                    except StopAsyncIteration:
                        continue
                    if kind == "done":
                        self._results[p] = payload
                        continue
                    pending[asyncio.ensure_future(anext(iters[p]))] = p
                    yield p, payload
        finally:
            for fut in pending:
                fut.cancel()

    async def replies(self) -> list[list[Reply]]:
        """Wait for every prompt; its ``n`` replies per prompt."""
        async for _ in self.events():
            pass
        return self.results()

    def results(self) -> list[list[Reply]]:
        """The replies per prompt once ``events`` is exhausted."""
        out = []
        for p in range(len(self._runs)):
            if not self._generating[p]:
                out.append([Reply(j, Message(role="assistant", content=""), "length", [], [], None, 0)
                            for j in range(self.input.n)])
            else:
                out.append([self._reply(j, seq) for j, seq in enumerate(self._results[p])])
        return out

    def _reply(self, index: int, seq: SampledSequence) -> Reply:
        assert self.serving.renderer is not None
        tokens = list(seq.tokens)
        cut = next((i for i, t in enumerate(tokens) if t in self._stop_ids), len(tokens))
        text, _ = cut_at_stops(self.serving.renderer.decode(tokens[:cut]), self._stops)
        top = seq.extras.get("top_logprobs") if seq.extras else None
        tops: list[list[tuple[int, float]]] | None = list(top)[:cut] if isinstance(top, list) else None
        return Reply(index=index, message=Message(role="assistant", content=text), finish_reason=seq.stop_reason,
                     tokens=tokens[:cut], logprobs=list(seq.logprobs)[:cut], top=tops, completion_tokens=len(tokens))

    def text_stream(self) -> TextStream:
        """A ``TextStream`` that stops where this request's continuations stop."""
        assert self.serving.renderer is not None and self.serving.token_text is not None
        return TextStream(self.serving.renderer.decode, stop_ids=self._stop_ids, stops=self._stops,
                          partial=self.serving.token_text.byte_piece)

    def is_stop(self, token: int) -> bool:
        """Whether ``token`` ends a continuation (it is not part of the text)."""
        return token in self._stop_ids

    async def record(self, replies: list[list[Reply]]) -> None:
        """Write every prompt's trace and wait for the commits (call before answering)."""
        await asyncio.gather(*(run.record(r) for run, r in zip(self._runs, replies, strict=True)))

    def record_cancelled(self) -> None:
        """Trace what each prompt produced before the client left (``ChatRun.record_cancelled``; never awaits)."""
        for run in self._runs:
            run.record_cancelled()

    def close(self) -> None:
        """Cancel what still runs and let go of the adapter (idempotent, never blocks)."""
        for run in self._runs:
            run.close()


def _eos_ids(serving: Serving) -> list[int]:
    return list(serving.engine.eos_token_ids) if serving.engine is not None else []


def _eos_texts(serving: Serving) -> list[str]:
    assert serving.renderer is not None
    return [text for text in dict.fromkeys(serving.renderer.decode([t]) for t in _eos_ids(serving)) if text]


async def open_completion(serving: Serving, principal: Principal, inp: CompletionInput) -> CompletionRun:
    """Check, tokenize, hold the adapter, score the prompts if asked, queue the jobs; the caller must ``close``."""
    started = time.perf_counter()
    created = datetime.now(UTC)
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(None, _prepare, serving, principal.org_id, inp)
    try:
        prepared = await asyncio.shield(pending)
    except asyncio.CancelledError:  # the caller left while the adapter loaded: let go of it once it is held
        pending.add_done_callback(lambda done: _release_done(serving, done))
        raise
    runs: list[ChatRun] = []
    try:
        prompts = prepared.prompts
        if inp.echo and inp.logprobs is not None:
            prompts = await loop.run_in_executor(None, _score, serving, prompts, prepared.adapters[0])
        assert serving.scheduler is not None
        for info, params, adapter in zip(prompts, prepared.params, prepared.adapters, strict=True):
            sink = AsyncSink()
            job = GenerationJob(info.tokens, inp.n, params or SamplingParams(max_tokens=1), adapter, sink,
                                top_logprobs=inp.logprobs or 0)
            if params is not None:
                serving.scheduler.submit(job)
            serving.usage.started(principal.org_id)
            runs.append(ChatRun(serving, principal, _chat_input(inp, info, len(prompts)), prepared.target,
                                info.tokens, job, sink, adapter, started, created))
    except BaseException:
        for run in runs:
            run.close()
        _release(serving, prepared.adapters[len(runs):])
        raise
    return CompletionRun(serving, inp, prepared.target, prompts, runs, [p is not None for p in prepared.params],
                         created)


def _chat_input(inp: CompletionInput, info: PromptInfo, prompts: int) -> ChatInput:
    """What the prompt's ``ChatRun`` records: the prompt as one user message, ``kind: completion``."""
    params = {**inp.trace_params, "kind": "completion"}
    if prompts > 1:
        params["prompt_index"] = info.index
    return ChatInput(
        model=inp.model, messages=[Message(role="user", content=info.text)], n=inp.n, stop=inp.stop, seed=inp.seed,
        user=inp.user, stream=inp.stream, include_usage=inp.include_usage,
        trace_messages=[{"role": "user", "content": info.text}], trace_params=params,
    )


def _release(serving: Serving, adapters: Sequence[str | None]) -> None:
    for adapter in adapters:
        if adapter is not None and serving.pool is not None:
            serving.pool.release(adapter)


def _release_done(serving: Serving, done: asyncio.Future[_Prepared]) -> None:
    if not done.cancelled() and done.exception() is None:
        _release(serving, done.result().adapters)


def _tokens(serving: Serving, i: int, prompt: str | list[int]) -> tuple[list[int], str]:
    assert serving.renderer is not None
    if isinstance(prompt, str):
        return list(serving.renderer.tokenizer.encode(prompt, add_special_tokens=True)), prompt
    vocab = serving.vocab_size
    bad = next((t for t in prompt if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidInput(f"prompt {i} has token id {bad}; this model's token ids are 0 to {vocab - 1}", param="prompt")
    return list(prompt), serving.renderer.decode(prompt)


def _prepare(serving: Serving, org_id: str, inp: CompletionInput) -> _Prepared:
    target = serving.generation_target(org_id, inp.model, inp.user)
    assert serving.engine is not None
    context = serving.engine.context_length
    most = min(serving.config.max_n, serving.config.max_rows)
    if inp.n > most:
        raise InvalidInput(f"n must be at most {most}", param="n")
    if inp.max_tokens is not None and inp.max_tokens > context:
        raise InvalidInput(f"max_tokens is {inp.max_tokens}; this model's context is {context} tokens",
                           param="max_tokens")
    if inp.echo and inp.logprobs is not None and not isinstance(serving.engine, PromptScorer):
        raise InvalidInput("this server's engine cannot score prompts, so echo with logprobs is unavailable",
                           param="echo")
    check_logit_bias(inp.logit_bias, serving.vocab_size)
    eos = _eos_ids(serving)
    stop: tuple[str, ...] | tuple[int, ...] = (*inp.stop, *_eos_texts(serving)) if inp.stop else tuple(eos)
    prompts, params = [], []
    for i, prompt in enumerate(inp.prompts):
        tokens, text = _tokens(serving, i, prompt)
        if not tokens:
            raise InvalidInput(f"prompt {i} is empty", param="prompt")
        generating = inp.max_tokens != 0
        if len(tokens) + int(generating) > context:
            raise PayloadTooLarge(
                f"this model's maximum context length is {context} tokens; prompt {i} takes {len(tokens)} tokens",
                param="prompt",
            )
        wanted = inp.max_tokens if inp.max_tokens is not None else serving.config.default_max_tokens
        prompts.append(PromptInfo(i, tokens, text))
        params.append(SamplingParams(
            max_tokens=min(wanted, context - len(tokens)),
            temperature=inp.temperature if inp.top_p > 0 else 0.0,
            top_p=inp.top_p if inp.top_p > 0 else 1.0,
            stop=stop, seed=inp.seed, presence_penalty=inp.presence_penalty,
            frequency_penalty=inp.frequency_penalty, logit_bias=inp.logit_bias,
        ) if generating else None)
    adapters: list[str | None] = []
    if target.digest is not None and target.blob_key is not None:
        assert serving.pool is not None
        try:
            for _ in prompts:
                adapters.append(serving.pool.acquire(target.digest, target.blob_key))
        except BaseException:
            _release(serving, adapters)
            raise
    else:
        adapters = [None] * len(prompts)
    return _Prepared(target, prompts, params, adapters)


def _score(serving: Serving, prompts: list[PromptInfo], adapter: str | None) -> list[PromptInfo]:
    """Each prompt with its token logprobs under ``adapter`` (one engine call for all of them)."""
    engine = serving.engine
    assert isinstance(engine, PromptScorer)
    scored = [p for p in prompts if len(p.tokens) > 1]
    values = iter(engine.logprobs([p.tokens for p in scored], adapter) if scored else [])
    out = []
    for p in prompts:
        lps: list[float | None] = [None]
        if len(p.tokens) > 1:
            lps += list(next(values))
        out.append(PromptInfo(p.index, p.tokens, p.text, lps))
    return out


__all__ = ["MAX_LOGPROBS", "MAX_PROMPTS", "CompletionInput", "CompletionRun", "PromptInfo", "PromptScorer",
           "open_completion"]

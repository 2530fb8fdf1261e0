"""``Serving``: a chat request from model name to sampled replies and a durable trace.

``Serving`` ties the parts together: it resolves the ``model`` a client names
(a deployment of the caller's organisation, or the served base model id) to
what serves it, renders the messages with the model's chat template, holds
the adapter version on the engine (``AdapterPool``), runs the job on the
``Scheduler`` and, once the replies are complete, writes the trace through the
``TraceWriter`` and waits for its commit. ``open_chat`` returns a ``ChatRun``;
the OpenAI layer reads its events (streaming) or its results, builds the
response, and calls ``record`` before answering (``record_cancelled`` when the
client left mid-stream: a trace of the tokens so far, ``finish_reason: cancelled``).

Deployments are read from the database on every request, so a change made by
any process (REST, ``teachloop deploy``, the loop) applies to the next request
without a restart; requests already running keep the adapter they started
with, which is unloaded once none holds it. A canary arm is chosen by a hash of
(deployment, ``user``) -- the same user always gets the same arm at a given
percentage -- or at random when the request has no ``user``.

Each organisation's accepted requests, tokens and traces are counted apart in
``usage`` (``serve.usage``); that is what the stats route shows a caller.

An arm may be an **upstream** (``Target.upstream_id``, issue 17): ``route``
resolves the target once, and ``upstream_chat`` relays the request through
``serve.upstream`` instead of the scheduler (only chat completions relay; the
other endpoints refuse such a deployment naming ``model``). A deployment with a
shadow arm sends ``shadow_percent`` % of requests there as well, in the
background (``shadow``, run by ``serve.shadow``): the caller only sees the primary's answer, the
shadow's is traced with ``arm: "shadow"`` and ``shadow_of`` naming the trace it
shadowed. Each trace carries ``cost_micro`` when the deployment prices the
model that answered (``prices``: upstream model id, adapter ``NAME@N`` or
``NAME``, or the base model id).

Without an engine (``engine=None``) the registry, traces and feedback work and
chat completions answer 503. Threads start in ``start`` and stop in ``close``;
nothing starts on construction. This module knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from teachloop.core.chat import Message, ToolSpec
from teachloop.core.errors import InvalidInput, NotFound, PayloadTooLarge, ServiceUnavailable, TeachloopError
from teachloop.core.ids import new_id
from teachloop.core.logs import bind_trace_id
from teachloop.core.sampling import SampledSequence, SamplingParams
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Principal
from teachloop.core.upstream import cost_micro
from teachloop.render.renderer import Renderer
from teachloop.serve.adapters import AdapterPool
from teachloop.serve.grammar import GrammarConstraint, Grammars, StructureKind, plan, structure_kind
from teachloop.serve.metrics import ServingMetrics
from teachloop.serve.scheduler import (
    AsyncSink,
    BatchingEngine,
    GenerationJob,
    Scheduler,
    SinkEvent,
    TokenEvent,
)
from teachloop.serve.shadow import Shadows
from teachloop.serve.text import TextStream, TokenText, cut_at_stops
from teachloop.serve.traces import TraceWriter
from teachloop.serve.upstream import KeyBox, Relayed, Streamed, Upstream, UpstreamRelay, UpstreamRequest
from teachloop.serve.usage import Usage
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.repos.deployments import AdapterVersions, Deployments, find_deployment_row
from teachloop.store.schema.deployments import Deployment, UpstreamEndpoint

log = logging.getLogger(__name__)


class ModelNotFound(NotFound):
    """The ``model`` is neither a deployment of the caller's organisation nor a served base model (404)."""

    code = "model_not_found"


@dataclass(frozen=True)
class ServingConfig:
    """Limits and knobs of a serving process.

    Attributes:
        max_rows: rows (sequences) decoded together at most; a request takes ``n`` rows.
        max_queue: requests waiting for rows at most; more are refused with 503.
        max_n: largest ``n`` accepted.
        default_max_tokens: reply length when the request sets none (capped by the context).
        max_loaded_adapters: adapter versions kept on the engine at once.
        sync_interval_s: how often deployments are re-read to preload and unload adapters.
        capture_traces: store every completion (turn off only to measure its cost).
        prefix_cache: reuse the keys/values of prompt prefixes seen before (``engine/prefix.py``).
        upstream_commit_first: an upstream arm's answer waits for its trace's commit, as a local one does; off,
            the trace is queued before the answer and committed just after it (``serve.upstream``).
    """

    max_rows: int = 32
    max_queue: int = 256
    max_n: int = 16
    default_max_tokens: int = 512
    max_loaded_adapters: int = 8
    sync_interval_s: float = 2.0
    capture_traces: bool = True
    prefix_cache: bool = True
    upstream_commit_first: bool = True


@dataclass(frozen=True)
class Target:
    """What serves a request: the base model, and for a deployment its adapter version and arm."""

    model: str
    base_model: str
    deployment_id: str | None = None
    deployment_revision: int | None = None
    arm: str | None = None
    adapter_version_id: str | None = None
    adapter_ref: str | None = None
    digest: str | None = None
    blob_key: str | None = None
    #: the upstream endpoint answering this arm (then no adapter), and the model asked there
    upstream_id: str | None = None
    upstream_model: str | None = None
    #: the price of the answering model (``core.upstream.ModelPrice`` fields), when the deployment sets one
    price: dict[str, Any] | None = None
    #: where this request is also sent in shadow (None: not this time)
    shadow: Target | None = None

    @property
    def fingerprint(self) -> str:
        """``system_fingerprint``: ``tl-base`` or ``tl-`` and 12 hex digits of the adapter digest."""
        return "tl-base" if self.digest is None else "tl-" + self.digest.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class ChatInput:
    """A validated chat request, independent of the HTTP shape it came in."""

    model: str
    messages: list[Message]
    tools: list[ToolSpec] | None = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # which field the client set it with (named in errors)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    user: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {...}}``; None is free text
    response_format: dict[str, Any] | None = None
    #: ``"auto"`` (or None), ``"required"``, or ``{"name": ...}`` forcing one offered function
    tool_choice: str | dict[str, str] | None = None
    #: names of the offered functions declared ``strict`` (their calls are grammar-constrained; serve.grammar)
    strict_tools: tuple[str, ...] = ()
    #: OpenAI's ``parallel_tool_calls``: False allows at most one tool call per reply (a grammar enforces it)
    parallel_tool_calls: bool = True
    trace_messages: list[dict[str, Any]] = field(default_factory=list)
    trace_tools: list[dict[str, Any]] | None = None
    trace_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """One finished choice: the parsed assistant message and its tokens (stop token removed)."""

    index: int
    message: Message
    finish_reason: str
    tokens: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]] | None
    completion_tokens: int


def check_logit_bias(logit_bias: tuple[tuple[int, float], ...], vocab_size: int) -> None:
    """``InvalidInput`` naming ``logit_bias`` unless every token id is in ``[0, vocab_size)``."""
    for token, _ in logit_bias:
        if not 0 <= token < vocab_size:
            raise InvalidInput(
                f"logit_bias names token {token}; this model's token ids are 0 to {vocab_size - 1}", param="logit_bias"
            )


def canary_bucket(deployment_id: str, user: str) -> int:
    """The user's bucket 0-99 for a deployment's canary split (stable across processes)."""
    digest = hashlib.sha256(f"{deployment_id}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


#: what ``Serving._prepare`` hands ``open_chat``: target, prompt, sampling params, adapter, grammar constraint
_Prepared = tuple[Target, list[int], SamplingParams, str | None, Callable[[int], GrammarConstraint] | None]


class Serving:
    """The serving runtime of one process (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        blobs: BlobStore,
        *,
        engine: BatchingEngine | None = None,
        renderer: Renderer | None = None,
        base_model: str | None = None,
        config: ServingConfig | None = None,
        admission: Callable[[str, str, Connection], None] | None = None,
        upstream_key: str | None = None,
    ) -> None:
        if engine is not None and (renderer is None or not base_model):
            raise InvalidInput("serving an engine needs its renderer and base model id", param="renderer")
        self.database = database
        self.blobs = blobs
        self.engine = engine
        self.renderer = renderer
        self.base_model = base_model if engine is not None else None
        self.config = config or ServingConfig()
        # (org_id, model, conn) -> None, raising e.g. QuotaExceeded (429) before anything is queued or traced, reading
        # on ``conn`` (the resolve's read transaction); the app wires the market's quotas in here (serve cannot
        # import market)
        self.admission = admission
        self.scheduler = (
            Scheduler(engine, max_rows=self.config.max_rows, max_queue=self.config.max_queue,
                      prefix_cache=self.config.prefix_cache and hasattr(engine, "prefix"))
            if engine is not None else None
        )
        self.pool = AdapterPool(engine, blobs, max_loaded=self.config.max_loaded_adapters) if engine else None
        self.traces = TraceWriter(database)
        self.usage = Usage()
        self.metrics = ServingMetrics()  # per-request Prometheus figures (serve.metrics)
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._stop_ids: list[int] = []
        self._stop_texts: list[str] = []
        self.token_text = TokenText(renderer.tokenizer) if renderer is not None else None
        if renderer is not None and engine is not None:
            self._stop_ids = sorted(set(renderer.stop_token_ids()) | set(engine.eos_token_ids))
            self._stop_texts = list(dict.fromkeys([*renderer.stop_sequences(), *map(self._decode1, self._stop_ids)]))
        # structured outputs (serve.grammar): the tokenizer's grammars, compiled on first use and cached
        self.grammars = Grammars(renderer.tokenizer, self._stop_ids) if renderer is not None else None
        # upstream arms (serve.upstream): the Fernet key (None: TEACHLOOP_UPSTREAM_KEY), decrypted endpoints by id
        self._upstream_key = upstream_key
        self._keys: KeyBox | None = None
        self._upstreams: dict[str, tuple[str, Upstream]] = {}  # id -> (org id, endpoint); rows are immutable
        self.relay = UpstreamRelay()
        self.shadows = Shadows(self)

    @property
    def vocab_size(self) -> int:
        """Token ids this model can take and sample: ``[0, vocab_size)`` (the engine's, else the tokenizer's)."""
        size = getattr(self.engine, "vocab_size", None)
        if isinstance(size, int):
            return size
        return len(self.renderer.tokenizer) if self.renderer is not None else 0

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a reply (the template's end-of-turn and the model's EOS)."""
        return list(self._stop_ids)

    def _decode1(self, token: int) -> str:
        assert self.renderer is not None
        return self.renderer.decode([token])

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the trace writer, the scheduler and the adapter maintenance thread."""
        self.traces.start()
        if self.scheduler is not None:
            self.scheduler.start()
            self._stop.clear()
            self._maintenance = threading.Thread(target=self._maintain, name="teachloop-adapters", daemon=True)
            self._maintenance.start()

    def close(self) -> None:
        """Stop accepting work: fail what is queued or running, flush the traces, stop the threads."""
        self._stop.set()
        if self.pool is not None:
            self.pool.needs_sync.set()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._maintenance is not None:
            self._maintenance.join(10)
        self.traces.close()

    @property
    def can_generate(self) -> bool:
        """Whether chat completions can run (an engine is loaded and the scheduler runs)."""
        return self.scheduler is not None and self.scheduler.running

    def _maintain(self) -> None:
        assert self.pool is not None
        while not self._stop.is_set():
            try:
                self.sync_adapters()
            except TeachloopError as err:
                log.warning("adapter sync failed: %s", err)
            except Exception:
                log.exception("adapter sync failed")
            self.pool.needs_sync.wait(self.config.sync_interval_s)

    def sync_adapters(self) -> None:
        """Load the adapter versions deployments serve now; unload idle ones nothing serves any more."""
        if self.pool is None or self.base_model is None:
            return
        with self.database.session(write=False) as session:
            wanted = {v.digest: v.blob_key for v in Deployments(session).served_versions(self.base_model)}
        self.pool.sync(wanted)

    # ------------------------------------------------------------------ resolution
    def served_models(self) -> list[str]:
        """Base model ids this process serves without an adapter."""
        return [self.base_model] if self.base_model else []

    def resolve(self, org_id: str, model: str, user: str | None = None, conn: Connection | None = None) -> Target:
        """What serves ``model`` for this organisation; ``ModelNotFound`` (404) when nothing does. Reads on ``conn``
        (in its transaction), else in a read transaction of its own: Core, no ORM session (every request reads it)."""
        if conn is None:
            with self.database.connection(write=False) as conn:
                return self.resolve(org_id, model, user, conn)
        dep = find_deployment_row(conn, org_id, model)
        if dep is None:
            if model in self.served_models():
                return Target(model=model, base_model=model)
            raise ModelNotFound(f"the model {model!r} does not exist or you do not have access to it", param="model")
        version_id, upstream_id, arm = dep.adapter_version_id, dep.upstream_id, "primary"
        if (dep.canary_version_id or dep.canary_upstream_id) and dep.canary_percent > 0:
            bucket = canary_bucket(dep.id, user) if user else random.randrange(100)
            if bucket < dep.canary_percent:
                version_id, upstream_id, arm = dep.canary_version_id, dep.canary_upstream_id, "canary"
        target = _arm(conn, org_id, dep, model, arm, version_id, upstream_id, self._upstreams)
        shadowing = dep.shadow_version_id or dep.shadow_upstream_id
        if shadowing and dep.shadow_percent > 0 and random.randrange(100) < dep.shadow_percent:
            shadow = _arm(conn, org_id, dep, model, "shadow", dep.shadow_version_id, dep.shadow_upstream_id,
                          self._upstreams)
            target = replace(target, shadow=shadow)
        return target

    # ------------------------------------------------------------------ upstream arms and shadows
    def keybox(self) -> KeyBox:
        """The key that encrypts upstream API keys (``ConfigurationError`` when this server has none)."""
        if self._keys is None:
            secret = self._upstream_key
            if secret is None:
                secret = Settings.from_env().upstream_key.get_secret_value()
            self._keys = KeyBox(secret)
        return self._keys

    def upstream(self, org_id: str, upstream_id: str) -> Upstream:
        """The organisation's upstream endpoint, key decrypted (rows are immutable: cached by id)."""
        cached = self._upstreams.get(upstream_id)
        if cached is None:
            with self.database.session(write=False) as session:
                row = session.get(UpstreamEndpoint, upstream_id)
                if row is None or row.org_id != org_id:
                    raise NotFound(f"upstream {upstream_id!r} not found", param="model")
                cached = (row.org_id, Upstream.of(row, self.keybox()))
            self._upstreams[upstream_id] = cached
        if cached[0] != org_id:
            raise NotFound(f"upstream {upstream_id!r} not found", param="model")
        return cached[1]

    def admit(self, org_id: str, model: str, user: str | None) -> Target:
        """Quotas first (an organisation past its limit is refused before any work), then ``resolve``: one read
        transaction for both."""
        with self.database.connection(write=False) as conn:
            if self.admission is not None:
                self.admission(org_id, model, conn)
            return self.resolve(org_id, model, user, conn)

    async def route(self, principal: Principal, chat: ChatInput) -> Target:
        """``admit`` ``chat.model`` (resolved once: pass it to ``open_chat`` or ``upstream_chat``)."""
        # reads only: no thread hop on SQLite
        return await self.database.run_read(self.admit, principal.org_id, chat.model, chat.user)

    def upstream_request(self, principal: Principal, chat: ChatInput, body: dict[str, Any], target: Target,
                         shadow_of: str | None = None) -> UpstreamRequest:
        """The relay of ``body`` to the target's upstream, with its trace columns (may read the database once)."""
        assert target.upstream_id is not None
        upstream = self.upstream(principal.org_id, target.upstream_id)
        trace = {
            "org_id": principal.org_id, "key_id": principal.key_id, "model": chat.model,
            "deployment_id": target.deployment_id, "deployment_revision": target.deployment_revision,
            "arm": target.arm, "adapter_version_id": None, "base_model": target.base_model,
            "messages": chat.trace_messages, "tools": chat.trace_tools, "params": chat.trace_params,
            "stream": bool(body.get("stream")), "user": chat.user, "request_metadata": dict(chat.metadata),
            "shadow_of": shadow_of,
        }
        return UpstreamRequest(upstream, body, trace, target.price, chat.include_usage, self.relay, self.traces,
                               self.config.upstream_commit_first, self.metrics.observe_trace)

    async def upstream_chat(self, principal: Principal, chat: ChatInput, body: dict[str, Any],
                            target: Target) -> Relayed | Streamed:
        """Relay ``body`` (the caller's request, as sent) to the target's upstream; traced like a local call."""
        if target.upstream_id in self._upstreams:  # the endpoint is cached: no thread hop for the database
            request = self.upstream_request(principal, chat, body, target)
        else:
            loop = asyncio.get_running_loop()
            request = await loop.run_in_executor(None, self.upstream_request, principal, chat, body, target)
        org_id = principal.org_id
        self.usage.started(org_id)
        answered = False
        try:
            if chat.stream:
                streamed = await request.open_stream()
                answered = True
                return streamed
            relayed = await request.complete()
            answered = True
            usage = relayed.body.get("usage") or {}
            self.usage.traced(org_id)
            self.usage.tokens(org_id, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            return relayed
        finally:
            self.usage.finished(org_id, answered=answered)

    def shadow(self, principal: Principal, chat: ChatInput, body: dict[str, Any], target: Target,
               trace_id: str) -> None:
        """Send the request to ``target.shadow`` in the background (if set); its trace names ``trace_id``."""
        self.shadows.send(principal, chat, body, target, trace_id)

    # ------------------------------------------------------------------ chat
    async def open_chat(self, principal: Principal, chat: ChatInput, target: Target | None = None) -> ChatRun:
        """Resolve (unless ``target`` is given: see ``route``), render, hold the adapter and queue the job.

        The caller must ``close`` the run.
        """
        started = time.perf_counter()
        created = datetime.now(UTC)
        pending = asyncio.get_running_loop().run_in_executor(None, self._prepare, principal.org_id, chat, target)
        try:
            resolved, prompt, params, adapter, constraint = await asyncio.shield(pending)
        except asyncio.CancelledError:  # the caller left while the adapter loaded: let go of it when it is done
            pending.add_done_callback(self._release_prepared)
            raise
        sink = AsyncSink()
        job = GenerationJob(prompt, chat.n, params, adapter, sink, top_logprobs=chat.top_logprobs if chat.logprobs else 0,
                            constraint=constraint)
        try:
            assert self.scheduler is not None
            self.scheduler.submit(job)
        except BaseException:
            if adapter is not None and self.pool is not None:
                self.pool.release(adapter)
            raise
        self.usage.started(principal.org_id)
        return ChatRun(self, principal, chat, resolved, prompt, job, sink, adapter, started, created)

    def _release_prepared(self, done: asyncio.Future[_Prepared]) -> None:
        if not done.cancelled() and done.exception() is None and self.pool is not None:
            adapter = done.result()[3]
            if adapter is not None:
                self.pool.release(adapter)

    def generation_target(self, org_id: str, model: str, user: str | None) -> Target:
        """``admit``, then ``ServiceUnavailable`` (503) unless this process can generate for the target."""
        target = self.admit(org_id, model, user)
        if target.upstream_id is not None:
            raise InvalidInput(f"model {model!r} is answered by an upstream; only /v1/chat/completions relays to it",
                               param="model")
        if self.engine is None or self.renderer is None or not self.can_generate:
            raise ServiceUnavailable("no model is loaded on this server; completions are unavailable")
        if target.base_model != self.base_model:
            raise ServiceUnavailable(
                f"model {model!r} runs on base model {target.base_model!r}, which this server does not serve "
                f"(it serves {self.base_model!r})"
            )
        return target

    def _prepare(self, org_id: str, chat: ChatInput, target: Target | None = None) -> _Prepared:
        if target is None:
            target = self.admit(org_id, chat.model, chat.user)
        if target.upstream_id is not None:
            raise InvalidInput(f"model {chat.model!r} is answered by an upstream; only /v1/chat/completions relays "
                               "to it", param="model")
        if self.engine is None or self.renderer is None or not self.can_generate:
            raise ServiceUnavailable("no model is loaded on this server; chat completions are unavailable")
        if target.base_model != self.base_model:
            raise ServiceUnavailable(
                f"model {chat.model!r} runs on base model {target.base_model!r}, which this server does not serve "
                f"(it serves {self.base_model!r})"
            )
        context = self.engine.context_length
        if chat.n > min(self.config.max_n, self.config.max_rows):
            raise InvalidInput(f"n must be at most {min(self.config.max_n, self.config.max_rows)}", param="n")
        if chat.max_tokens is not None and chat.max_tokens > context:
            name = chat.max_tokens_param
            raise InvalidInput(f"{name} is {chat.max_tokens}; this model's context is {context} tokens", param=name)
        check_logit_bias(chat.logit_bias, self.vocab_size)
        prompt = self.renderer.build_prompt(chat.messages, chat.tools)
        if len(prompt) >= context:
            raise PayloadTooLarge(
                f"this model's maximum context length is {context} tokens; the messages take {len(prompt)} tokens",
                param="messages",
            )
        room = context - len(prompt)
        wanted = chat.max_tokens if chat.max_tokens is not None else self.config.default_max_tokens
        stop: tuple[str, ...] | tuple[int, ...]
        stop = (*chat.stop, *self._stop_texts) if chat.stop else tuple(self._stop_ids)
        params = SamplingParams(
            max_tokens=min(wanted, room),
            temperature=chat.temperature if chat.top_p > 0 else 0.0,
            top_p=chat.top_p if chat.top_p > 0 else 1.0,
            stop=stop,
            seed=chat.seed,
            presence_penalty=chat.presence_penalty,
            frequency_penalty=chat.frequency_penalty,
            logit_bias=chat.logit_bias,
        )
        constraint = self._constraint(chat)  # compiled before the adapter is held or anything queued: a 400 stores nothing
        adapter = None
        if target.digest is not None and target.blob_key is not None:
            assert self.pool is not None
            adapter = self.pool.acquire(target.digest, target.blob_key)
        return target, prompt, params, adapter, constraint

    def _constraint(self, chat: ChatInput) -> Callable[[int], GrammarConstraint] | None:
        """The grammar the request's ``response_format`` / ``tool_choice`` / strict tools ask for (serve.grammar)."""
        structure = plan(chat.response_format, chat.tools, chat.tool_choice, chat.strict_tools,
                         parallel_tool_calls=chat.parallel_tool_calls)
        if structure is None or self.grammars is None:
            return None
        return self.grammars.factory(structure)

    def text_stream(self, chat: ChatInput) -> TextStream:
        """A ``TextStream`` with this request's stop tokens and strings."""
        assert self.renderer is not None
        assert self.token_text is not None
        return TextStream(self.renderer.decode, stop_ids=self._stop_ids, stops=(*chat.stop, *self._stop_texts),
                          partial=self.token_text.byte_piece)

    def reply(self, chat: ChatInput, index: int, seq: SampledSequence) -> Reply:
        """The assistant message of one sampled sequence (tool calls parsed when tools were offered)."""
        assert self.renderer is not None
        tokens, logprobs = list(seq.tokens), list(seq.logprobs)
        top = seq.extras.get("top_logprobs") if seq.extras else None
        tops: list[list[tuple[int, float]]] | None = list(top) if isinstance(top, list) else None
        stops = set(self._stop_ids)
        cut = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
        visible = tokens[:cut]
        text, _ = cut_at_stops(self.renderer.decode(visible), (*chat.stop, *self._stop_texts))
        kind = structure_kind(chat.response_format, chat.tools, chat.tool_choice, chat.strict_tools,
                              parallel_tool_calls=chat.parallel_tool_calls)
        if chat.tools and kind is not StructureKind.JSON:
            # under a tool grammar only <tool_call> blocks are calls: a bare JSON reply stays content
            message = self.renderer.parse_reply(text, chat.tools if kind is None else None)
        else:  # no tools offered, or a JSON response_format: the text is the content, exactly as streamed
            message = Message(role="assistant", content=text)
        finish: str = seq.stop_reason
        if finish != "length" and message.tool_calls:
            finish = "tool_calls"
        return Reply(
            index=index, message=message, finish_reason=finish, tokens=visible, logprobs=logprobs[:cut],
            top=tops[:cut] if tops is not None else None, completion_tokens=len(tokens),
        )


def _price(prices: dict[str, Any] | None, *names: str | None) -> dict[str, Any] | None:
    """The first price ``prices`` sets among ``names``."""
    for name in names:
        if name and prices and isinstance(prices.get(name), dict):
            return dict(prices[name])
    return None


def _arm(conn: Connection, org_id: str, dep: Deployment | Row[Any], model: str, arm: str, version_id: str | None,
         upstream_id: str | None, known: dict[str, tuple[str, Upstream]]) -> Target:
    """The target of one arm of ``dep``: an upstream (``known`` endpoints read no row), an adapter version, or
    the base model alone (reads on ``conn``, in the caller's transaction)."""
    target = Target(model=model, base_model=dep.base_model, deployment_id=dep.id, deployment_revision=dep.revision,
                    arm=arm)
    if upstream_id is not None:
        owner, endpoint = known.get(upstream_id, (None, None))
        upstream_model = endpoint.model if endpoint is not None and owner == org_id else None
        if upstream_model is None:
            row = conn.execute(select(UpstreamEndpoint.org_id, UpstreamEndpoint.model)
                               .where(UpstreamEndpoint.id == upstream_id)).first()
            if row is None or row.org_id != org_id:
                raise NotFound(f"upstream {upstream_id!r} not found", param="model")
            upstream_model = row.model
        return replace(target, upstream_id=upstream_id, upstream_model=upstream_model,
                       price=_price(dep.prices, upstream_model))
    if version_id is None:
        return replace(target, price=_price(dep.prices, dep.base_model))
    with Session(bind=conn) as session:  # joins the caller's transaction
        version = AdapterVersions(session).get(org_id, version_id)
    return replace(target, adapter_version_id=version.id, adapter_ref=version.ref, digest=version.digest,
                   blob_key=version.blob_key, price=_price(dep.prices, version.ref, version.name, dep.base_model))


class ChatRun:
    """One chat request in flight: its events, its replies, its trace."""

    def __init__(
        self,
        serving: Serving,
        principal: Principal,
        chat: ChatInput,
        target: Target,
        prompt: list[int],
        job: GenerationJob,
        sink: AsyncSink,
        adapter: str | None,
        started: float,
        created: datetime,
    ) -> None:
        self.serving = serving
        self.principal = principal
        self.chat = chat
        self.target = target
        self.prompt_tokens = len(prompt)
        self.trace_id = new_id("tr")
        bind_trace_id(self.trace_id)  # every log line of this request carries it (core.logs)
        self.created = created
        self.ttft_ms: float | None = None
        self._sink = sink
        self._started = started
        self._outcome = _Outcome()
        self._recorded = False  # a trace was submitted (record or record_cancelled): never a second one
        self._seen: dict[int, tuple[list[int], list[float]]] = {}  # tokens and logprobs per choice so far
        self.shadow_of: str | None = None  # the trace this run shadows (``Serving.shadow``)
        # runs on close(), or when the run is garbage-collected unclosed (a stream dropped before it began)
        self._release = weakref.finalize(
            self, _release, serving.scheduler, serving.pool, job, adapter, serving.usage, principal.org_id, self._outcome
        )

    @property
    def completion_id(self) -> str:
        """The OpenAI completion id: ``chatcmpl-<trace id>``."""
        return f"chatcmpl-{self.trace_id}"

    async def events(self) -> AsyncIterator[SinkEvent]:
        """Token batches, then one ``done`` (or raises the generation's error)."""
        while True:
            kind, payload = await self._sink.queue.get()
            if kind == "error":
                raise payload
            if kind == "tokens":
                self._note(payload)
            yield kind, payload
            if kind == "done":
                return

    async def replies(self) -> list[Reply]:
        """Wait for every choice and parse them."""
        async for kind, payload in self.events():
            if kind == "done":
                return [self.serving.reply(self.chat, i, seq) for i, seq in enumerate(payload)]
        raise AssertionError("unreachable")  # pragma: no cover

    def _note(self, events: list[TokenEvent]) -> None:
        """Keep the tokens of a batch of events (what ``record_cancelled`` stores)."""
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self._started) * 1000
        for index, token, logprob, _ in events:
            tokens, logprobs = self._seen.setdefault(index, ([], []))
            tokens.append(token)
            logprobs.append(logprob)

    def record_cancelled(self) -> None:
        """Store the trace of a request whose client left: the tokens produced so far, ``finish_reason: cancelled``.

        Synchronous and non-blocking, so a cancelled task (which cannot await) may call it: the row is
        queued on the trace writer and committed in the background. Tokens already delivered to this
        run but not yet read are included. A no-op once ``record`` (or this) has begun, and when
        capture is off or the writer is closed (logged). Call ``close`` too, as always.
        """
        if self._recorded or not self.serving.config.capture_traces:
            return
        self._recorded = True
        with suppress(asyncio.QueueEmpty):
            while True:
                kind, payload = self._sink.queue.get_nowait()
                if kind == "tokens":
                    self._note(payload)
        replies = []
        for i in range(self.chat.n):
            tokens, logprobs = self._seen.get(i, ([], []))
            seq = SampledSequence(list(tokens), list(logprobs), "cancelled")
            replies.append(replace(self.serving.reply(self.chat, i, seq), finish_reason="cancelled"))
        completion = sum(r.completion_tokens for r in replies)
        try:
            latency_ms = (time.perf_counter() - self._started) * 1000
            future = self.serving.traces.submit(self._trace_values(replies, latency_ms))
        except TeachloopError as err:
            log.warning("the trace of cancelled request %s was not stored: %s", self.trace_id, err)
            return
        usage, org_id, prompt = self.serving.usage, self.principal.org_id, self.prompt_tokens

        def committed(done: Future[None]) -> None:
            if done.exception() is None:
                usage.traced(org_id)
                usage.tokens(org_id, prompt, completion)

        future.add_done_callback(committed)

    async def record(self, replies: list[Reply]) -> None:
        """Write the trace and wait until it is committed (call before answering)."""
        self._recorded = True
        completion = sum(r.completion_tokens for r in replies)
        latency_ms = (time.perf_counter() - self._started) * 1000
        self.serving.metrics.observe(self, replies, latency_ms)
        usage, org_id = self.serving.usage, self.principal.org_id
        if not self.serving.config.capture_traces:
            usage.tokens(org_id, self.prompt_tokens, completion)
            self._outcome.answered = True
            return
        values = self._trace_values(replies, latency_ms)
        await self.serving.traces.write(values)
        usage.traced(org_id)
        usage.tokens(org_id, self.prompt_tokens, completion)
        self._outcome.answered = True

    def _trace_values(self, replies: list[Reply], latency_ms: float) -> dict[str, Any]:
        """The trace row of this request with ``replies``."""
        chat, target = self.chat, self.target
        return {
            "id": self.trace_id,
            "org_id": self.principal.org_id,
            "key_id": self.principal.key_id,
            "model": chat.model,
            "deployment_id": target.deployment_id,
            "deployment_revision": target.deployment_revision,
            "arm": target.arm,
            "adapter_version_id": target.adapter_version_id,
            "base_model": target.base_model,
            "messages": chat.trace_messages,
            "tools": chat.trace_tools,
            "choices": [
                {"index": r.index, "message": r.message.to_openai(), "finish_reason": r.finish_reason,
                 "completion_tokens": r.completion_tokens}
                for r in replies
            ],
            "params": chat.trace_params,
            "finish_reason": replies[0].finish_reason if replies else "stop",
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": sum(r.completion_tokens for r in replies),
            "latency_ms": latency_ms,
            "ttft_ms": self.ttft_ms,
            "stream": chat.stream,
            "user": chat.user,
            "request_metadata": dict(chat.metadata),
            "created_at": self.created,
            "cost_micro": cost_micro(target.price, self.prompt_tokens, sum(r.completion_tokens for r in replies)),
            "shadow_of": self.shadow_of,
        }

    def close(self) -> None:
        """Cancel the job if it is still running and let go of the adapter (idempotent, never blocks)."""
        self._release()


@dataclass
class _Outcome:
    answered: bool = False


def _release(
    scheduler: Scheduler | None, pool: AdapterPool | None, job: GenerationJob, adapter: str | None, usage: Usage,
    org_id: str, outcome: _Outcome,
) -> None:
    if scheduler is not None:
        scheduler.cancel(job)  # a no-op for a finished job
    if adapter is not None and pool is not None:
        pool.release(adapter)
    usage.finished(org_id, answered=outcome.answered)


__all__ = [
    "ChatInput", "ChatRun", "ModelNotFound", "Reply", "Serving", "ServingConfig", "Target", "canary_bucket",
    "check_logit_bias",
]

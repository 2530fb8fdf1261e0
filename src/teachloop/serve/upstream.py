"""Upstream arms: relay a chat completion to another OpenAI-compatible server and trace it like a local one.

``KeyBox`` encrypts upstream API keys at rest (Fernet, keyed by the
``TEACHLOOP_UPSTREAM_KEY`` setting); the plain key lives only in memory, in
the ``Upstream`` a request is sent with, whose ``repr`` hides it.
``register_upstream`` checks a configured upstream (``probe``: the upstream's
``GET /models/{model}``; a 404 is refused naming ``upstream.model``, a refused
key naming ``upstream.api_key`` without echoing it) and stores it encrypted.

``UpstreamRelay`` sends requests with one shared ``aiohttp.ClientSession`` per event loop (keep-alive;
aiohttp rather than httpx because the relay's own CPU is what the proxy adds to every call: about 0.3 ms
per call against httpx's 1.2-1.7 ms, see ``bench/README.md``, "Upstream proxy"):

* the caller's body passes through (``stream``, ``tools``, ``response_format``,
  ``n``, ``logprobs`` and the rest) with ``model`` replaced by the upstream's;
  the answer comes back with the teachloop ``id`` (``chatcmpl-<trace id>``) and
  the deployment's name as ``model``;
* a refused connection, a 429, a 5xx or a timeout before the first byte is
  retried ``max_retries`` times with backoff (0.1 s doubling, at most 2 s);
* failures become ``core.upstream`` errors in OpenAI's shape with the
  upstream's status (429 with its ``Retry-After``; a refused key is a 502, so
  the caller never takes it for a problem with *its* key; a timeout a 504); a
  stream that breaks after its first byte ends with an error frame and no
  ``[DONE]``;
* every call, answered or failed, writes one trace like a local call's (prompt,
  choices, tokens from the upstream's ``usage``, latency, time to first token)
  plus ``upstream_id``, ``cost_micro`` and, on failure, ``error`` (what
  happened, the status and the attempts) with ``finish_reason: "error"``,
  through the serving process's one ``TraceWriter``. By default the answer
  (or the stream's ``[DONE]``) waits for that trace's commit, as a local
  call's does; with ``commit_first=False`` (``ServingConfig.upstream_commit_first``)
  the row is queued first and its commit awaited right after the answer is
  sent, in the same request (``Relayed.committed``, or the stream's tail), so
  a graceful shutdown still writes it and a failed write is logged -- only a
  process killed in those few milliseconds loses the trace of an answered call.

Blocking work (the database) runs in threads; the relay itself is async. No
HTTP framework here: the OpenAI router turns what this returns into responses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
from cryptography.fernet import Fernet, InvalidToken

from teachloop.core.errors import ConfigurationError, InvalidInput, ServiceUnavailable, TeachloopError
from teachloop.core.ids import new_id
from teachloop.core.logs import bind_trace_id
from teachloop.core.upstream import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamSpec,
    UpstreamTimeout,
    cost_micro,
    scrub,
)
from teachloop.serve.traces import TraceWriter
from teachloop.serve.wire import SSE_DONE, sse, sse_error
from teachloop.store.schema.deployments import UpstreamEndpoint

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_BACKOFF_S = 2.0
_READ_BUFSIZE = 2**20
_RELAY_ERRORS = (aiohttp.ClientError, TimeoutError)


class KeyBox:
    """Encrypts and decrypts upstream API keys with one Fernet key (the ``TEACHLOOP_UPSTREAM_KEY`` setting)."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ConfigurationError("this server has no TEACHLOOP_UPSTREAM_KEY, so it cannot store upstream API keys; "
                                     "set it to a Fernet key and restart", param="upstream.api_key")
        try:
            self._fernet = Fernet(secret.encode())
        except (ValueError, TypeError):
            raise ConfigurationError("TEACHLOOP_UPSTREAM_KEY is not a Fernet key (urlsafe base64 of 32 bytes)",
                                     param="TEACHLOOP_UPSTREAM_KEY") from None

    def __repr__(self) -> str:
        return "KeyBox(***)"

    def encrypt(self, key: str) -> str:
        """The ciphertext of ``key`` (differs on every call)."""
        return self._fernet.encrypt(key.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The key ``token`` encrypts; ``ServiceUnavailable`` when this server's setting cannot decrypt it."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise ServiceUnavailable("an upstream API key was stored under another TEACHLOOP_UPSTREAM_KEY; "
                                     "restore that setting or configure the upstream again") from None


@dataclass(frozen=True)
class Upstream:
    """An upstream endpoint ready to call (the key decrypted, in memory only; ``repr`` hides it)."""

    id: str
    base_url: str
    model: str
    key: str = field(repr=False)
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 2

    @classmethod
    def of(cls, row: UpstreamEndpoint, keys: KeyBox) -> Upstream:
        """The endpoint of a stored row."""
        return cls(row.id, row.base_url, row.model, keys.decrypt(row.key_ciphertext), row.timeout_s,
                   row.connect_timeout_s, row.max_retries)

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        """Connect within ``connect_timeout_s``; every read (the first byte included) within ``timeout_s``."""
        return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.connect_timeout_s,
                                     sock_read=self.timeout_s)

    def headers(self) -> dict[str, str]:
        """The request headers (the key as a bearer token)."""
        return {"Authorization": f"Bearer {self.key}", "Accept": "application/json",
                "Content-Type": "application/json"}


def upstream_json(row: UpstreamEndpoint | None) -> dict[str, Any] | None:
    """An upstream as the API shows it: never the key, not even part of it."""
    if row is None:
        return None
    return {"id": row.id, "base_url": row.base_url, "model": row.model, "api_key": "set", "timeout_s": row.timeout_s,
            "connect_timeout_s": row.connect_timeout_s, "max_retries": row.max_retries}


# ---------------------------------------------------------------------------------------------- configuration


def probe(spec: UpstreamSpec, param: str = "upstream") -> None:
    """Check that the upstream serves ``spec.model`` (``GET BASE/models/MODEL``); ``InvalidInput`` naming the field.

    A 404 names ``<param>.model``; a refused key names ``<param>.api_key`` (the key is not repeated); no answer
    names ``<param>.base_url``. Another status (a server without that route) is accepted.
    """
    key = spec.api_key.get_secret_value()
    url = f"{spec.base_url}/models/{spec.model}"
    try:
        with httpx.Client(timeout=httpx.Timeout(spec.timeout_s, connect=spec.connect_timeout_s)) as client:
            resp = client.get(url, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as err:
        raise InvalidInput(f"{param}.base_url: the upstream at {spec.base_url} did not answer "
                           f"({type(err).__name__})", param=f"{param}.base_url") from None
    if resp.status_code == 404:
        raise InvalidInput(f"{param}.model: the upstream at {spec.base_url} has no model {spec.model!r} (404)",
                           param=f"{param}.model")
    if resp.status_code in (401, 403):
        raise InvalidInput(f"{param}.api_key: the upstream refused the key (HTTP {resp.status_code})",
                           param=f"{param}.api_key")


def register_upstream(session: Any, keys: KeyBox, org_id: str, spec: UpstreamSpec, *, actor: str,
                      check: bool = True, param: str = "upstream") -> UpstreamEndpoint:
    """Probe ``spec`` (unless ``check`` is off) and store it with its key encrypted; returns the new row."""
    if check:
        probe(spec, param)
    row = UpstreamEndpoint(org_id=org_id, base_url=spec.base_url, model=spec.model,
                           key_ciphertext=keys.encrypt(spec.api_key.get_secret_value()), timeout_s=spec.timeout_s,
                           connect_timeout_s=spec.connect_timeout_s, max_retries=spec.max_retries, created_by=actor)
    session.add(row)
    session.flush()
    return row


# ---------------------------------------------------------------------------------------------- errors


def _error_of(resp_status: int, body: bytes, retry_after: str | None, upstream: Upstream) -> TeachloopError:
    """The caller's error for an upstream's non-2xx answer (OpenAI shape, key scrubbed)."""
    detail: dict[str, Any] = {}
    try:
        parsed = json.loads(body or b"{}")
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            detail = parsed["error"]
    except ValueError:
        pass
    text = scrub(str(detail.get("message") or body[:300].decode("utf-8", "replace") or "no body"), upstream.key)
    param = detail.get("param") if isinstance(detail.get("param"), str) else None
    message = f"upstream {upstream.model!r} answered {resp_status}: {text}"
    if resp_status == 429:
        seconds = int(float(retry_after)) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
        return UpstreamRateLimited(message, param=param, retry_after=seconds)
    if resp_status in (401, 403):
        return UpstreamError(f"the upstream refused this deployment's API key (HTTP {resp_status}); "
                             "reconfigure the deployment's upstream", status=502, code="upstream_auth_error")
    code = detail.get("code") or detail.get("type")
    return UpstreamError(message, param=param, status=resp_status if 400 <= resp_status <= 599 else 502,
                         code=str(code) if code else None)


def _failure(err: BaseException, upstream: Upstream) -> TeachloopError:
    if isinstance(err, TeachloopError):
        return err
    if isinstance(err, TimeoutError):  # aiohttp's socket timeouts are TimeoutErrors too
        what = "connect" if isinstance(err, aiohttp.ConnectionTimeoutError) else "answer"
        return UpstreamTimeout(f"the upstream at {upstream.base_url} did not {what} in time "
                               f"({upstream.connect_timeout_s if what == 'connect' else upstream.timeout_s} s)")
    if isinstance(err, aiohttp.ClientConnectorError):
        return UpstreamError(f"could not connect to the upstream at {upstream.base_url} (connection refused)",
                             code="upstream_unreachable")
    return UpstreamError(f"the upstream at {upstream.base_url} failed: {type(err).__name__}")


def error_record(err: TeachloopError, attempts: int, what: str) -> dict[str, Any]:
    """The ``error`` column of a failed call's trace."""
    return {"what": what, "status": err.status, "code": err.code, "message": err.message, "attempts": attempts}


# ---------------------------------------------------------------------------------------------- the relay


@dataclass
class Call:
    """What one upstream call produced, for its trace."""

    choices: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    attempts: int = 0
    error: dict[str, Any] | None = None
    fingerprint: str | None = None


class UpstreamRelay:
    """Sends chat completions to upstreams (see the module docstring); one per ``Serving``."""

    def __init__(self) -> None:
        self._client: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> aiohttp.ClientSession:
        """The shared session of the running event loop (a session belongs to the loop that made it)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=30)
            # a streamed line (one SSE frame) may be long: logprobs of many tokens
            self._client = aiohttp.ClientSession(connector=connector, read_bufsize=_READ_BUFSIZE,
                                                 auto_decompress=True, skip_auto_headers=("User-Agent",))
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the shared session (when the loop that made it is the running one)."""
        client, self._client = self._client, None
        if client is not None and not client.closed and self._loop is asyncio.get_running_loop():
            await client.close()

    async def send(self, upstream: Upstream, body: dict[str, Any], call: Call) -> aiohttp.ClientResponse:
        """POST ``body`` (the response is left unread) with retries; raises the caller's error on failure."""
        client = self.client()
        url = f"{upstream.base_url}/chat/completions"
        data = json.dumps(body, ensure_ascii=False).encode()
        last: BaseException | None = None
        for attempt in range(upstream.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(_MAX_BACKOFF_S, 0.1 * 2 ** (attempt - 1)))
            call.attempts = attempt + 1
            try:
                resp = await client.post(url, data=data, headers=upstream.headers(), timeout=upstream.timeout)
            except (TimeoutError, aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as err:
                last = err
                continue
            except aiohttp.ClientError as err:
                raise _failure(err, upstream) from None
            if resp.status < 400:
                return resp
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                resp.release()
            last = _error_of(resp.status, raw, resp.headers.get("retry-after"), upstream)
            if resp.status not in _RETRY_STATUSES:
                break
        assert last is not None
        raise _failure(last, upstream) from None


def _merge_delta(choices: dict[int, dict[str, Any]], chunk: dict[str, Any]) -> None:
    """Fold one streamed chunk into the accumulated choices (content, tool calls, finish reason)."""
    for c in chunk.get("choices") or []:
        index = int(c.get("index", 0))
        acc = choices.setdefault(index, {"index": index, "message": {"role": "assistant", "content": ""},
                                         "finish_reason": None})
        delta = c.get("delta") or {}
        if delta.get("content"):
            acc["message"]["content"] += delta["content"]
        for tc in delta.get("tool_calls") or []:
            calls = acc["message"].setdefault("tool_calls", [])
            k = int(tc.get("index", len(calls)))
            while len(calls) <= k:
                calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            if tc.get("id"):
                calls[k]["id"] = tc["id"]
            fn = tc.get("function") or {}
            calls[k]["function"]["name"] += fn.get("name") or ""
            calls[k]["function"]["arguments"] += fn.get("arguments") or ""
        if c.get("finish_reason"):
            acc["finish_reason"] = c["finish_reason"]


def trace_choices(choices: list[dict[str, Any]], completion_tokens: int) -> list[dict[str, Any]]:
    """Upstream choices as a trace stores them (OpenAI message, finish reason, token count)."""
    out = []
    share = completion_tokens // max(1, len(choices))
    for c in sorted(choices, key=lambda c: int(c.get("index", 0))):
        message = dict(c.get("message") or {})
        message = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls")}
        message.setdefault("role", "assistant")
        if message.get("content") is None and not message.get("tool_calls"):
            message["content"] = ""
        out.append({"index": int(c.get("index", 0)), "message": message,
                    "finish_reason": c.get("finish_reason") or "error", "completion_tokens": share})
    return out


@dataclass
class Relayed:
    """An answered non-streaming call: the body to send, the trace id, and (``commit_first`` off) the trace's commit.

    ``committed`` is None when the trace was committed before this was returned; otherwise await it
    (``await_commit``) once the body has been sent.
    """

    body: dict[str, Any]
    trace_id: str
    committed: Future[None] | None = None

    async def await_commit(self) -> None:
        """Wait for the trace's commit (after the answer went out); a failed write is logged, never raised."""
        if self.committed is None:
            return
        try:
            await asyncio.wrap_future(self.committed)
        except Exception as err:  # the answer is already sent: nothing left to fail
            log.error("the trace %s of an answered upstream call was not stored: %s", self.trace_id, err)


@dataclass
class Streamed:
    """An opened stream: the SSE frames to send and the trace id."""

    frames: AsyncIterator[bytes]
    trace_id: str


@dataclass
class UpstreamRequest:
    """One request to an upstream arm, with what its trace needs.

    ``trace`` holds the trace columns known before the call (prompt, params, deployment, arm, org, key);
    ``price`` the model's price or None; ``writer`` stores the trace row; ``commit_first`` whether an
    answer waits for its trace's commit (see the module docstring); ``observe`` is called with every
    trace row before it is stored (the serving process's Prometheus metrics).
    """

    upstream: Upstream
    body: dict[str, Any]
    trace: dict[str, Any]
    price: dict[str, Any] | None
    include_usage: bool
    relay: UpstreamRelay
    writer: TraceWriter
    commit_first: bool = True
    observe: Callable[[dict[str, Any]], None] | None = None
    trace_id: str = field(default_factory=lambda: new_id("tr"))
    started: float = field(default_factory=time.perf_counter)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    def outgoing(self) -> dict[str, Any]:
        """The body sent upstream: the caller's, with the upstream's model (and usage asked of a stream)."""
        body = {k: v for k, v in self.body.items() if k != "metadata" or self.body.get("store")}
        body["model"] = self.upstream.model
        if body.get("stream"):
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    def values(self, call: Call) -> dict[str, Any]:
        """The trace row of this call."""
        latency_ms = (time.perf_counter() - self.started) * 1000
        choices = trace_choices(call.choices, call.completion_tokens)
        finish = "error" if call.error is not None else (choices[0]["finish_reason"] if choices else "stop")
        return {**self.trace, "id": self.trace_id, "upstream_id": self.upstream.id, "choices": choices,
                "finish_reason": finish, "prompt_tokens": call.prompt_tokens,
                "completion_tokens": call.completion_tokens, "latency_ms": latency_ms, "ttft_ms": call.ttft_ms,
                "created_at": self.created, "error": call.error,
                "cost_micro": cost_micro(self.price, call.prompt_tokens, call.completion_tokens)}

    async def write(self, values: dict[str, Any]) -> None:
        """Store the trace row and wait for its commit."""
        await asyncio.wrap_future(self.submit(values))

    def submit(self, values: dict[str, Any]) -> Future[None]:
        """Queue the trace row (counted in the metrics first); the future resolves at its commit."""
        if self.observe is not None:
            self.observe(values)
        return self.writer.submit(values)

    async def _record_failure(self, call: Call, err: TeachloopError, what: str) -> None:
        call.error = error_record(err, call.attempts, what)
        err.message = f"{err.message} (trace {self.trace_id})"
        try:
            await self.write(self.values(call))
        except TeachloopError as werr:
            log.warning("the trace of failed upstream call %s was not stored: %s", self.trace_id, werr)

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "id": f"chatcmpl-{self.trace_id}", "model": self.trace["model"]}

    async def complete(self) -> Relayed:
        """Send, trace and return the answer (raises the caller's error after tracing a failure)."""
        bind_trace_id(self.trace_id)
        call = Call()
        try:
            resp = await self.relay.send(self.upstream, self.outgoing(), call)
            call.ttft_ms = (time.perf_counter() - self.started) * 1000
            try:
                raw = await resp.read()
            finally:
                resp.release()
            try:
                body = json.loads(raw)
            except ValueError:
                raise UpstreamError(f"the upstream at {self.upstream.base_url} answered with a body that is not "
                                    "JSON") from None
            if not isinstance(body, dict):
                raise UpstreamError(f"the upstream at {self.upstream.base_url} answered with JSON that is not an "
                                    "object")
        except (TeachloopError, *_RELAY_ERRORS) as err:
            failure = _failure(err, self.upstream)
            await self._record_failure(call, failure, _what(failure))
            raise failure from None
        usage = body.get("usage") or {}
        call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        call.completion_tokens = int(usage.get("completion_tokens") or 0)
        call.choices = list(body.get("choices") or [])
        if not self.commit_first:  # queued now (a closed writer still refuses here), committed after the answer
            return Relayed(self._answer(body), self.trace_id, self.submit(self.values(call)))
        await self.write(self.values(call))
        return Relayed(self._answer(body), self.trace_id)

    async def open_stream(self) -> Streamed:
        """Open the upstream stream (errors before its first byte raise, traced) and return its frames."""
        bind_trace_id(self.trace_id)
        call = Call()
        try:
            resp = await self.relay.send(self.upstream, self.outgoing(), call)
        except TeachloopError as err:
            await self._record_failure(call, err, _what(err))
            raise
        return Streamed(self._frames(resp, call), self.trace_id)

    async def _frames(self, resp: aiohttp.ClientResponse, call: Call) -> AsyncIterator[bytes]:
        choices: dict[int, dict[str, Any]] = {}
        done = False
        committed: Relayed | None = None  # the trace queued before [DONE] (``commit_first`` off)
        try:
            async for raw_line in resp.content:
                if not raw_line.startswith(b"data:"):
                    continue
                data = raw_line[5:].decode().strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                    detail = chunk.get("error") or {}
                    raise UpstreamError(scrub(f"the upstream failed mid-stream: {detail.get('message')}",
                                              self.upstream.key))
                if call.ttft_ms is None:
                    call.ttft_ms = (time.perf_counter() - self.started) * 1000
                _merge_delta(choices, chunk)
                usage = chunk.get("usage")
                if usage:
                    call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    call.completion_tokens = int(usage.get("completion_tokens") or 0)
                if not self.include_usage:
                    if not chunk.get("choices") and usage:
                        continue
                    chunk.pop("usage", None)
                yield sse(self._answer(chunk))
            call.choices = list(choices.values())
            if not done:
                raise UpstreamError(f"the upstream at {self.upstream.base_url} ended the stream before [DONE]",
                                    code="upstream_stream_cut")
            if self.commit_first:
                await self.write(self.values(call))
                yield SSE_DONE
            else:
                committed = Relayed({}, self.trace_id, self.submit(self.values(call)))
                yield SSE_DONE  # the caller has its answer; a cancel from here on keeps the queued trace
                await committed.await_commit()
        except (TeachloopError, *_RELAY_ERRORS, ValueError) as err:
            failure = err if isinstance(err, TeachloopError) else (
                _failure(err, self.upstream) if isinstance(err, TimeoutError) else
                UpstreamError(f"the upstream stream broke: {type(err).__name__}", code="upstream_stream_cut"))
            call.choices = list(choices.values())
            await self._record_failure(call, failure, "stream_cut" if call.ttft_ms is not None else _what(failure))
            yield sse_error(failure)
        except (asyncio.CancelledError, GeneratorExit):  # the caller left: trace what it got, cancelled
            if committed is not None:  # it left after [DONE]: the full trace is queued already
                raise
            call.choices = [{**c, "finish_reason": "cancelled"} for c in choices.values()]
            values = self.values(call)
            values["finish_reason"] = "cancelled"
            try:  # never awaits: a cancelled task cannot
                self.submit(values)
            except TeachloopError as err:
                log.warning("the trace of cancelled upstream call %s was not stored: %s", self.trace_id, err)
            raise
        finally:
            resp.release()


def _what(err: TeachloopError) -> str:
    """A short name of what happened, for the trace's ``error.what``."""
    if isinstance(err, UpstreamTimeout):
        return "timeout"
    if isinstance(err, UpstreamRateLimited):
        return "rate_limited"
    if err.code == "upstream_unreachable":
        return "connection_refused"
    if err.code == "upstream_stream_cut":
        return "stream_cut"
    return "upstream_status"


__all__ = [
    "Call",
    "KeyBox",
    "Relayed",
    "Streamed",
    "Upstream",
    "UpstreamRelay",
    "UpstreamRequest",
    "error_record",
    "probe",
    "register_upstream",
    "trace_choices",
    "upstream_json",
]

"""``TinkerService``: the semantics of the Tinker training API over the engine, the catalog and the store.

One service per server process holds the live state: training models (one
engine LoRA adapter each, with its optimizer), sampling sessions (a base model,
or a frozen snapshot adapter), and the futures of every request
(``futures.FutureStore``). Durable records -- sessions, models as teachloop
training runs, checkpoints in the blob store -- go through ``records.Records``.
Everything is scoped to the caller's organisation (``Principal.org_id``):
another organisation's ids are ``NotFound``.

Request semantics:

* Training requests of one model (``forward_backward``, ``optim_step``,
  ``save_weights``, ``save_weights_for_sampler``, ``save_weights_external``,
  ``load_weights`` on an existing model) run in ``seq_id`` order, once each
  (``ordering.ModelQueue``); gradients accumulate across ``forward_backward``
  calls until ``optim_step``. A request that is wrong (unknown loss, bad tensor,
  bad name) still takes its turn and fails with a ``user`` error without
  touching the model.
* ``create_model`` and create-from-state ``load_weights`` register the model
  under the SDK's own id ``{session_id}:train:{model_seq_id}``; a repeated
  request returns the first one's future.
* ``save_weights_for_sampler`` freezes the adapter's current weights into a
  snapshot adapter (re-used while no ``optim_step`` or load changed them), so a
  sampler keeps sampling the weights of its save while training continues.
  At most ``max_snapshots`` ephemeral snapshots per model stay loaded (the
  oldest go first; a sampler of a named checkpoint reloads it from the store).
* Sampling returns, per sample, its tokens and logprobs under the unscaled
  model (the engine's convention, ``core/sampling.py``), which agree with
  ``forward`` and ``compute_logprobs`` within ``engine.base.LOGPROB_TOLERANCE``.

The HTTP layer (``app/routes/tinker.py``) parses bodies into plain dicts and
calls the methods here; nothing here knows about HTTP.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teachloop.core.errors import InvalidInput, NotFound, TeachloopError
from teachloop.core.sampling import SamplingParams
from teachloop.core.tenancy import Principal
from teachloop.core.tinker import LoraShape, TinkerPath, check_name, model_id, sampler_id
from teachloop.core.training import AdamParams, LoraSpec
from teachloop.engine.base import Engine
from teachloop.tinker.futures import Future, FutureStore, settle
from teachloop.tinker.losses import loss_config, to_engine
from teachloop.tinker.ordering import ModelQueue
from teachloop.tinker.proto import (
    EncodedSequence,
    decode_forward_backward,
    decompress,
    encode_forward_backward,
    encode_sample,
)
from teachloop.tinker.records import Records

#: LoRA alpha of every Tinker adapter (the SDK sends no alpha).
LORA_ALPHA = 32.0
#: Ephemeral sampler snapshots kept loaded per model.
MAX_SNAPSHOTS = 8
#: Top-k logprobs at most.
MAX_TOPK = 20


@dataclass(frozen=True)
class HostedModel:
    """A base model this server trains and samples.

    Attributes:
        name: the name clients use (``base_model``) and ``get_info`` reports.
        engine: the loaded engine.
        tokenizer_id: what the SDK loads its tokenizer from (the model's own folder, so it works offline).
        aliases: other names that select it (e.g. its folder).
    """

    name: str
    engine: Engine
    tokenizer_id: str
    aliases: frozenset[str] = frozenset()


@dataclass
class _Training:
    model_id: str
    org_id: str
    session_id: str
    hosted: HostedModel
    adapter: str
    lora: LoraShape
    queue: ModelQueue
    version: int = 0
    snapshots: deque[tuple[int, str]] = field(default_factory=deque)


@dataclass
class _Sampler:
    sampler_id: str
    org_id: str
    session_id: str
    hosted: HostedModel
    adapter: str | None
    model_path: str | None
    clients: int = 0
    requests: deque[str] = field(default_factory=lambda: deque(maxlen=10_000))


def _int(body: dict[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{key} must be an integer, got {value!r}", param=key)
    return value


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{key} must be a non-empty string", param=key)
    return value


def _ttl(body: dict[str, Any]) -> int | None:
    ttl = body.get("ttl_seconds")
    if ttl is None:
        return None
    return _int(body, "ttl_seconds")


def _meta(body: dict[str, Any]) -> dict[str, str]:
    meta = body.get("user_metadata") or {}
    if not isinstance(meta, dict):
        raise InvalidInput("user_metadata must be an object of strings", param="user_metadata")
    return {str(k): str(v) for k, v in meta.items()}


def prompt_tokens(prompt: Any) -> list[int]:
    """The token ids of a JSON ``ModelInput`` (``{"chunks": [{"type": "encoded_text", "tokens": [...]}]}``)."""
    if not isinstance(prompt, dict) or not isinstance(prompt.get("chunks"), list):
        raise InvalidInput("prompt must be a ModelInput object with a chunks list", param="prompt")
    tokens: list[int] = []
    for i, chunk in enumerate(prompt["chunks"]):
        kind = chunk.get("type", "encoded_text") if isinstance(chunk, dict) else None
        if kind != "encoded_text":
            raise InvalidInput(f"prompt chunk {i} is {kind!r}; this server samples text models only", param="prompt")
        toks = chunk.get("tokens")
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise InvalidInput(f"prompt chunk {i} must hold a list of integer tokens", param="prompt")
        tokens.extend(toks)
    if not tokens:
        raise InvalidInput("the prompt is empty", param="prompt")
    return tokens


class TinkerService:
    """The Tinker API of one server process (see the module docstring).

    Args:
        records: the durable records.
        models: the base models served (the first is the default).
        workers: threads running requests (engine work itself runs on each engine's compute thread).
        long_poll: seconds ``retrieve_future`` waits before answering ``try_again`` (SDK limit: 45).
        max_chunk_len: ``fwdbwd_max_chunk_len`` advertised to clients (tests force chunking with 1).
        session_timeout: seconds without a heartbeat after which a session is ended as ``interrupted``
            (its runs cancelled, saying why; its adapters unloaded). The SDK heartbeats every few
            seconds while a client lives; a client that exits without finishing its session (the
            cookbook's recipes do) is noticed here, at the next session call of any client.
    """

    def __init__(
        self, records: Records, models: Sequence[HostedModel], *, workers: int = 4, long_poll: float = 25.0,
        max_chunk_len: int = 1024, max_snapshots: int = MAX_SNAPSHOTS, session_timeout: float = 300.0,
    ) -> None:
        if not models:
            raise InvalidInput("the Tinker API needs at least one base model", param="models")
        self.records = records
        self.models = list(models)
        self.futures = FutureStore()
        self.long_poll = long_poll
        self.max_chunk_len = max_chunk_len
        self.max_snapshots = max_snapshots
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinker")
        self._lock = threading.RLock()
        self._training: dict[str, _Training] = {}
        self._samplers: dict[str, _Sampler] = {}
        self._creating: dict[str, Future] = {}
        self._path_adapters: dict[str, str] = {}
        self.session_timeout = session_timeout
        self._reaped_at = 0.0

    def close(self) -> None:
        """Stop taking work (running requests finish)."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ lookup
    def hosted(self, name: str | None) -> HostedModel:
        """The hosted model called ``name`` (None: the default); ``InvalidInput`` listing the ones served."""
        if not name:
            return self.models[0]
        if not isinstance(name, str):
            raise InvalidInput("base_model must be a string", param="base_model")
        for model in self.models:
            if name == model.name or name in model.aliases:
                return model
        served = ", ".join(m.name for m in self.models)
        raise InvalidInput(f"base model {name!r} is not served here; this server serves {served}",
                           param="base_model")

    def _model(self, org_id: str, mid: str) -> _Training:
        with self._lock:
            model = self._training.get(mid)
        if model is None or model.org_id != org_id:
            raise NotFound(f"model {mid!r} is not loaded on this server (unknown, another organisation's, or "
                           "created before a restart: create a training client from its checkpoint)",
                           param="model_id")
        return model

    def _sampler(self, org_id: str, sid: str) -> _Sampler:
        with self._lock:
            sampler = self._samplers.get(sid)
        if sampler is None or sampler.org_id != org_id:
            raise NotFound(f"sampling session {sid!r} not found", param="sampling_session_id")
        return sampler

    def fail(self, org_id: str, kind: str, err: TeachloopError) -> Future:
        """A future that fails at once with ``err`` (for requests refused before any work)."""
        return self._run(org_id, kind, functools.partial(_raise, err))

    def session_samplers(self, org_id: str, session_id: str) -> list[str]:
        """Ids of a session's live sampling sessions."""
        with self._lock:
            return sorted(s.sampler_id for s in self._samplers.values()
                          if s.session_id == session_id and s.org_id == org_id)

    def sampler_pending(self, org_id: str, sid: str, seen: set[str]) -> list[Future]:
        """A sampling session's requests not in ``seen``, still pending."""
        out = []
        for rid in list(self._sampler(org_id, sid).requests):
            if rid not in seen:
                try:
                    fut = self.futures.get(org_id, rid)
                except NotFound:
                    continue
                if not fut.done:
                    out.append(fut)
        return out

    def _run(self, org_id: str, kind: str, work: Callable[[], dict[str, Any] | bytes]) -> Future:
        fut = self.futures.create(org_id, kind)
        self.executor.submit(settle, self.futures, fut, work)
        return fut

    def _ordered(self, p: Principal, body: dict[str, Any], kind: str,
                 work: Callable[[_Training], dict[str, Any] | bytes]) -> Future:
        """Queue ``work`` on the model named in ``body`` at its ``seq_id``; unknown models fail at once."""
        fut = self.futures.create(p.org_id, kind)
        try:
            model = self._model(p.org_id, _str(body, "model_id"))
            seq = _int(body, "seq_id", 0)
        except TeachloopError as err:
            settle(self.futures, fut, functools.partial(_raise, err))
            return fut
        try:
            return model.queue.submit(seq, fut, lambda: work(model))
        except TeachloopError as err:
            settle(self.futures, fut, functools.partial(_raise, err))
            return fut

    # ---------------------------------------------------------------- sessions
    def client_config(self) -> dict[str, Any]:
        """``/client/config``: the flags the SDK reads at start."""
        return {
            "pjwt_auth_enabled": False,
            "credential_default_source": "api_key",
            "parallel_fwdbwd_chunks": True,
            "proto_compress_fwdbwd": False,
            "fwdbwd_max_chunk_len": self.max_chunk_len,
            "sample_use_retrieve_futures": False,
            "custom_loss_server_side": False,
            "sample_join_sampling_session": True,
        }

    def create_session(self, p: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """A new session."""
        tags = body.get("tags") or []
        if not isinstance(tags, list):
            raise InvalidInput("tags must be a list of strings", param="tags")
        meta = _meta(body)
        if body.get("display_name"):
            meta.setdefault("display_name", str(body["display_name"]))
        sid = self.records.create_session(p.org_id, tags=[str(t) for t in tags], user_metadata=meta,
                                          sdk_version=str(body.get("sdk_version") or "") or None)
        self.reap()
        return {"type": "create_session", "session_id": sid}

    def heartbeat(self, p: Principal, session_id: str) -> dict[str, Any]:
        """Record that the session's client is alive (and end the sessions whose clients went away)."""
        self.records.touch_session(p.org_id, session_id)
        self.reap()
        return {"type": "session_heartbeat"}

    def reap(self, *, now: float | None = None, force: bool = False) -> list[str]:
        """End, as ``interrupted``, the active sessions silent for ``session_timeout`` s; their ids.

        Runs at most every 30 s unless ``force`` (called from heartbeats and new sessions).
        """
        import time
        from datetime import timedelta

        from teachloop.store.schema.base import utc_now

        clock = time.monotonic() if now is None else now
        if not force and clock - self._reaped_at < 30.0:
            return []
        self._reaped_at = clock
        ended = []
        for org_id, sid in self.records.stale_sessions(utc_now() - timedelta(seconds=self.session_timeout)):
            self._finish(org_id, sid, "interrupted",
                         f"no heartbeat for {self.session_timeout:.0f} s: the client went away without finishing")
            ended.append(sid)
        return ended

    def finish_session(self, p: Principal, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """End the session: its runs become completed, failed or cancelled; its samplers and models unload."""
        reason = body.get("reason") or {}
        status = reason.get("type") if isinstance(reason, dict) else reason
        if status not in ("success", "errored", "interrupted"):
            raise InvalidInput("reason.type must be success, errored or interrupted", param="reason")
        detail = body.get("detail")
        return {"session_id": session_id,
                "status": self._finish(p.org_id, session_id, status, str(detail) if detail is not None else None)}

    def _finish(self, org_id: str, session_id: str, status: str, detail: str | None) -> str:
        """Finish the session (the first finish wins) and unload what it holds; the status that stands."""
        status, _ = self.records.finish_session(org_id, session_id, status, detail)
        with self._lock:
            samplers = [s for s in self._samplers.values() if s.session_id == session_id and s.org_id == org_id]
            for s in samplers:
                del self._samplers[s.sampler_id]
            models = [m for m in self._training.values() if m.session_id == session_id and m.org_id == org_id]
            for m in models:
                del self._training[m.model_id]
            names = {name for m in models for name in (m.adapter, *(snap for _, snap in m.snapshots))}
            self._path_adapters = {k: v for k, v in self._path_adapters.items() if v not in names}
        for m in models:  # free the engine's memory: adapters, optimizer state, snapshots
            for name in (m.adapter, *(snap for _, snap in m.snapshots)):
                if m.hosted.engine.has_adapter(name):
                    m.hosted.engine.delete_adapter(name)
        return status

    # ------------------------------------------------------------------ models
    def _spec(self, lora: LoraShape) -> LoraSpec:
        return LoraSpec(rank=lora.rank, alpha=LORA_ALPHA, train_attn=lora.train_attn, train_mlp=lora.train_mlp,
                        train_unembed=lora.train_unembed, seed=lora.seed)

    def _register(self, p: Principal, mid: str, session_id: str, hosted: HostedModel, lora: LoraShape,
                  meta: dict[str, str], load: Callable[[str], Any]) -> dict[str, Any]:
        adapter = f"tk-{mid.replace(':', '-')}"
        load(adapter)
        try:
            self.records.create_model(p.org_id, mid, session_id=session_id, base_model=hosted.name,
                                      lora=lora.model_dump(), user_metadata=meta)
        except BaseException:
            hosted.engine.delete_adapter(adapter)
            raise
        queue = ModelQueue(mid, self.futures, self.executor)
        with self._lock:
            self._training[mid] = _Training(mid, p.org_id, session_id, hosted, adapter, lora, queue)
        return {"model_id": mid}

    def _create_once(self, p: Principal, mid: str, kind: str, work: Callable[[], dict[str, Any]]) -> Future:
        with self._lock:
            known = self._creating.get(mid)
            if known is not None and known.org_id == p.org_id:
                return known
            fut = self.futures.create(p.org_id, kind)
            self._creating[mid] = fut
        self.executor.submit(settle, self.futures, fut, work)
        return fut

    def create_model(self, p: Principal, body: dict[str, Any]) -> Future:
        """``create_model``: a fresh LoRA adapter as model ``{session_id}:train:{model_seq_id}``."""
        try:
            session_id = _str(body, "session_id")
            mid = model_id(session_id, _int(body, "model_seq_id"))
        except TeachloopError as err:
            return self.fail(p.org_id, "create_model", err)

        def work() -> dict[str, Any]:
            self.records.session(p.org_id, session_id)
            hosted = self.hosted(body.get("base_model"))
            try:
                lora = LoraShape.model_validate(body.get("lora_config") or {})
            except ValueError as err:
                raise InvalidInput(f"lora_config is invalid: {err}".splitlines()[0], param="lora_config") from None
            optimizer = (body.get("optimizer_config") or {}).get("type", "adamw")
            if optimizer != "adamw":
                raise InvalidInput(f"optimizer {optimizer!r} is not supported; this server trains with adamw",
                                   param="optimizer_config")
            spec = self._spec(lora)
            result = self._register(p, mid, session_id, hosted, lora, _meta(body),
                                    lambda name: hosted.engine.create_adapter(name, spec))
            return {**result, "type": "create_model"}

        return self._create_once(p, mid, "create_model", work)

    def get_info(self, p: Principal, mid: str) -> dict[str, Any]:
        """``get_info``: the model's base model, tokenizer and LoRA rank."""
        model = self._model(p.org_id, mid)
        return {
            "type": "get_info", "model_id": mid, "is_lora": True, "lora_rank": model.lora.rank,
            "model_name": model.hosted.name,
            "model_data": {"arch": "lora", "model_name": model.hosted.name,
                           "tokenizer_id": model.hosted.tokenizer_id},
            "optimizer_config": {"type": "adamw"},
        }

    # ---------------------------------------------------------------- training
    def forward_backward(self, p: Principal, body: bytes, encoding: str | None) -> Future:
        """``forward_backward`` (``forward_only`` for ``forward``) from a protobuf body."""
        try:
            call = decode_forward_backward(decompress(body, encoding))
        except TeachloopError as err:
            return self.fail(p.org_id, "forward_backward", err)
        fields = {"model_id": call.model_id, "seq_id": call.seq_id}

        def work(model: _Training) -> bytes:
            if call.error is not None:
                raise call.error
            loss, cfg = loss_config(call.loss_fn, call.loss_fn_config)
            datums = to_engine(loss, call.data, model.hosted.engine.vocab_size)
            engine = model.hosted.engine
            if call.forward_only:
                result = engine.forward(datums, loss, cfg, adapter=model.adapter)
            else:
                result = engine.forward_backward(datums, loss, cfg, adapter=model.adapter)
            return encode_forward_backward({"logprobs": result.logprobs}, result.metrics)

        return self._ordered(p, fields, "forward_backward", work)

    def optim_step(self, p: Principal, body: dict[str, Any]) -> Future:
        """``optim_step``: AdamW on the accumulated gradients."""

        def work(model: _Training) -> dict[str, Any]:
            raw = body.get("adam_params") or {}
            if body.get("optimizer_params") and not raw:
                raise InvalidInput("only Adam optimizer parameters are supported (adam_params)", param="optimizer")
            try:
                params = AdamParams.model_validate(
                    {k: raw[k] for k in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm")
                     if k in raw and raw[k] is not None})
            except ValueError as err:
                raise InvalidInput(f"adam_params are invalid: {err}".splitlines()[0], param="adam_params") from None
            result = model.hosted.engine.optim_step(model.adapter, params)
            model.version += 1
            metrics = {"grad_norm:mean": result.grad_norm, "learning_rate:mean": params.learning_rate,
                       "step:max": float(result.step)}
            self.records.record_step(model.org_id, model.model_id, result.step, metrics)
            return {"type": "optim_step", "metrics": metrics}

        return self._ordered(p, body, "optim_step", work)

    def save_weights(self, p: Principal, body: dict[str, Any]) -> Future:
        """``save_weights`` (``save_state``): adapter + optimizer state as ``tinker://{model}/weights/{name}``."""

        def work(model: _Training) -> dict[str, Any]:
            path = TinkerPath(model.model_id, "weights", check_name(_str(body, "path")))
            with tempfile.TemporaryDirectory(prefix="teachloop-tinker-") as tmp:
                folder = model.hosted.engine.save_checkpoint(model.adapter, Path(tmp) / "ckpt")
                self.records.save_checkpoint(p.org_id, path, folder, ttl_seconds=_ttl(body),
                                             overwrite=bool(body.get("overwrite")), user_metadata=_meta(body))
            return {"type": "save_weights", "path": str(path)}

        return self._ordered(p, body, "save_weights", work)

    def _snapshot(self, model: _Training) -> str:
        """A frozen copy of the model's current weights (re-used while they are unchanged)."""
        if model.snapshots and model.snapshots[-1][0] == model.version:
            return model.snapshots[-1][1]
        name = f"tks-{uuid.uuid4().hex[:16]}"
        model.hosted.engine.copy_adapter(model.adapter, name)
        model.snapshots.append((model.version, name))
        while len(model.snapshots) > self.max_snapshots:
            _, old = model.snapshots.popleft()
            with self._lock:
                keep = old in self._path_adapters.values()
            if not keep:
                model.hosted.engine.delete_adapter(old)
        return name

    def save_weights_for_sampler(self, p: Principal, body: dict[str, Any]) -> Future:
        """Named (``tinker://{model}/sampler_weights/{name}``) or ephemeral (a new sampling session)."""

        def work(model: _Training) -> dict[str, Any]:
            inflight = body.get("kind") == "inflight"
            if body.get("path"):
                path = TinkerPath(model.model_id, "sampler_weights", check_name(_str(body, "path")))
                with tempfile.TemporaryDirectory(prefix="teachloop-tinker-") as tmp:
                    folder = model.hosted.engine.save_adapter(model.adapter, Path(tmp) / "adapter")
                    self.records.save_checkpoint(p.org_id, path, folder, ttl_seconds=_ttl(body),
                                                 overwrite=True, user_metadata=_meta(body))
                snap = self._snapshot(model)
                with self._lock:
                    self._path_adapters[str(path)] = snap
                return {"type": "save_weights_for_sampler", "path": str(path)}
            if body.get("sampling_session_seq_id") is None:
                raise InvalidInput("save_weights_for_sampler needs a path or a sampling_session_seq_id", param="path")
            sid = sampler_id(model.session_id, _int(body, "sampling_session_seq_id"))
            adapter = model.adapter if inflight else self._snapshot(model)
            with self._lock:
                self._samplers[sid] = _Sampler(sid, p.org_id, model.session_id, model.hosted, adapter, None)
            return {"type": "save_weights_for_sampler", "sampling_session_id": sid}

        return self._ordered(p, body, "save_weights_for_sampler", work)

    def save_weights_external(self, p: Principal, body: dict[str, Any]) -> Future:
        """``save_weights_external``: base + adapter merged into a Hugging Face folder."""

        def work(model: _Training) -> dict[str, Any]:
            path = TinkerPath(model.model_id, "external_weights", check_name(_str(body, "path")))
            with tempfile.TemporaryDirectory(prefix="teachloop-tinker-") as tmp:
                folder = model.hosted.engine.merge_adapter(model.adapter, Path(tmp) / "merged")
                record = self.records.save_checkpoint(p.org_id, path, folder, ttl_seconds=_ttl(body),
                                                      overwrite=True, user_metadata=None)
            return {"type": "save_weights_external", "path": str(path), "size_bytes": record.size_bytes}

        return self._ordered(p, body, "save_weights_external", work)

    def _load_into(self, p: Principal, engine: Engine, adapter: str, path: TinkerPath, optimizer: bool) -> None:
        if path.kind == "external_weights":
            raise InvalidInput(f"{path} is a merged model; load a weights or sampler_weights checkpoint", param="path")
        if optimizer and path.kind != "weights":
            raise InvalidInput(f"{path} holds no optimizer state; only weights checkpoints (save_state) do",
                               param="path")
        with tempfile.TemporaryDirectory(prefix="teachloop-tinker-") as tmp:
            folder = self.records.fetch(p.org_id, path, Path(tmp) / "ckpt")
            if optimizer:
                engine.load_checkpoint(adapter, folder)
            else:
                engine.load_adapter(adapter, folder / "adapter" if (folder / "adapter").is_dir() else folder)

    def load_weights(self, p: Principal, body: dict[str, Any]) -> Future:
        """Create-from-state (``session_id`` + ``model_seq_id``) or the legacy load into a model (``model_id``)."""
        optimizer = bool(body.get("optimizer"))
        if body.get("model_id") and body.get("model_seq_id") is None:

            def into(model: _Training) -> dict[str, Any]:
                path = TinkerPath.parse(_str(body, "path"))
                self._check_base(p, path, model.hosted)
                self._load_into(p, model.hosted.engine, model.adapter, path, optimizer)
                model.version += 1
                return {"type": "load_weights", "path": str(path), "model_id": model.model_id}

            return self._ordered(p, body, "load_weights", into)
        try:
            session_id = _str(body, "session_id")
            mid = model_id(session_id, _int(body, "model_seq_id"))
        except TeachloopError as err:
            return self.fail(p.org_id, "load_weights", err)

        def create() -> dict[str, Any]:
            self.records.session(p.org_id, session_id)
            path = TinkerPath.parse(_str(body, "path"))
            source = self.records.source_model(p.org_id, path)
            hosted = self.hosted(source.base_model)
            if body.get("base_model") and self.hosted(body["base_model"]) is not hosted:
                raise InvalidInput(f"{path} was trained on {source.base_model}, not {body['base_model']}",
                                   param="base_model")
            lora = LoraShape.model_validate(source.lora)
            self._register(p, mid, session_id, hosted, lora, _meta(body) or dict(source.user_metadata),
                           lambda name: self._load_into(p, hosted.engine, name, path, optimizer))
            return {"type": "load_weights", "model_id": mid, "path": str(path)}

        return self._create_once(p, mid, "load_weights", create)

    def copy_weights(self, p: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """``copy_weights``: the checkpoint at ``source_path`` (own or published) copied, same kind and name, into
        a new training run of a new session of the caller's (a run that holds the copy and is not trained)."""
        source = TinkerPath.parse(_str(body, "source_path"))
        model = self.records.source_model(p.org_id, source)
        session_id = self.records.create_session(p.org_id, tags=["copy"], user_metadata={"copied_from": str(source)},
                                                 sdk_version=None)
        mid = model_id(session_id, 0)
        self.records.create_model(p.org_id, mid, session_id=session_id, base_model=model.base_model,
                                  lora=model.lora, user_metadata={"copied_from": str(source)})
        dest = TinkerPath(mid, source.kind, source.name)
        with tempfile.TemporaryDirectory(prefix="teachloop-tinker-copy-") as tmp:
            folder = self.records.fetch(p.org_id, source, Path(tmp) / "ckpt")
            self.records.save_checkpoint(p.org_id, dest, folder, ttl_seconds=_ttl(body), overwrite=False,
                                         user_metadata=None)
        return {"tinker_path": str(dest)}

    def _check_base(self, p: Principal, path: TinkerPath, hosted: HostedModel) -> None:
        source = self.records.source_model(p.org_id, path)
        if self.hosted(source.base_model) is not hosted:
            raise InvalidInput(f"{path} was trained on {source.base_model}, this model on {hosted.name}",
                               param="path")

    # ---------------------------------------------------------------- sampling
    def _adapter_for_path(self, p: Principal, path: TinkerPath, hosted: HostedModel) -> str:
        with self._lock:
            name = self._path_adapters.get(str(path))
        if name is not None and hosted.engine.has_adapter(name):
            return name
        name = f"tks-{uuid.uuid4().hex[:16]}"
        self._load_into(p, hosted.engine, name, path, optimizer=False)
        with self._lock:
            self._path_adapters[str(path)] = name
        return name

    def create_sampling_session(self, p: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """A sampling session on a base model or on a ``tinker://`` checkpoint."""
        session_id = _str(body, "session_id")
        sid = sampler_id(session_id, _int(body, "sampling_session_seq_id"))
        self.records.session(p.org_id, session_id)
        with self._lock:
            known = self._samplers.get(sid)
        if known is not None and known.org_id == p.org_id:
            return {"type": "create_sampling_session", "sampling_session_id": sid}
        model_path = body.get("model_path")
        adapter = None
        if model_path:
            path = TinkerPath.parse(model_path)
            hosted = self.hosted(self.records.source_model(p.org_id, path).base_model)
            adapter = self._adapter_for_path(p, path, hosted)
        else:
            hosted = self.hosted(body.get("base_model"))
        with self._lock:
            self._samplers[sid] = _Sampler(sid, p.org_id, session_id, hosted, adapter, model_path or None)
        return {"type": "create_sampling_session", "sampling_session_id": sid}

    def get_sampler(self, p: Principal, sid: str) -> dict[str, Any]:
        """``GET /samplers/{id}``."""
        sampler = self._sampler(p.org_id, sid)
        return {"sampler_id": sid, "base_model": sampler.hosted.name, "model_path": sampler.model_path}

    def join_sampling_session(self, p: Principal, sid: str) -> dict[str, Any]:
        """A new clone number for an unpickled ``SamplingClient`` (its seq_ids start at 1e9 times it)."""
        sampler = self._sampler(p.org_id, sid)
        with self._lock:
            sampler.clients += 1
            return {"type": "join_sampling_session", "client_counter": sampler.clients}

    def sample(self, p: Principal, body: dict[str, Any]) -> tuple[Future, list[str]]:
        """``asample``: the future and the ``sample_sequence_ids`` (one per sample)."""
        fut = self.futures.create(p.org_id, "sample")
        n = body.get("num_samples", 1)
        count = n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1024 else 0
        ids = [f"{fut.request_id}:{i}" for i in range(count)]

        def work() -> bytes:
            if not count:
                raise InvalidInput(f"num_samples must be an integer in 1..1024, got {n!r}", param="num_samples")
            sid = body.get("sampling_session_id")
            if sid:
                sampler = self._sampler(p.org_id, sid)
                sampler.requests.append(fut.request_id)
                hosted, adapter = sampler.hosted, sampler.adapter
                if adapter is not None and not hosted.engine.has_adapter(adapter):
                    if sampler.model_path is None:
                        raise NotFound(f"sampling session {sid} sampled a snapshot that has been unloaded (more "
                                       f"than {self.max_snapshots} newer ones); save the weights again",
                                       param="sampling_session_id")
                    adapter = sampler.adapter = self._adapter_for_path(
                        p, TinkerPath.parse(sampler.model_path), hosted)
            elif body.get("model_path"):
                path = TinkerPath.parse(body["model_path"])
                hosted = self.hosted(self.records.source_model(p.org_id, path).base_model)
                adapter = self._adapter_for_path(p, path, hosted)
            else:
                hosted, adapter = self.hosted(body.get("base_model")), None
            return self._sample(hosted, adapter, body, count)

        self.executor.submit(settle, self.futures, fut, work)
        return fut, ids

    def _sample(self, hosted: HostedModel, adapter: str | None, body: dict[str, Any], n: int) -> bytes:
        engine = hosted.engine
        tokens = prompt_tokens(body.get("prompt"))
        vocab = engine.vocab_size
        if min(tokens) < 0 or max(tokens) >= vocab:
            raise InvalidInput(f"the prompt has a token id outside [0, {vocab})", param="prompt")
        raw = dict(body.get("sampling_params") or {})
        room = engine.context_length - len(tokens)
        if room < 1:
            raise InvalidInput(f"the prompt has {len(tokens)} tokens; the context is {engine.context_length}",
                               param="prompt")
        max_tokens = raw.get("max_tokens")
        stop = raw.get("stop")
        try:
            params = SamplingParams(
                max_tokens=min(int(max_tokens), room) if max_tokens is not None else room,
                temperature=float(raw.get("temperature", 1.0)), top_p=float(raw.get("top_p", 1.0)),
                top_k=int(raw.get("top_k", -1)) if raw.get("top_k") not in (None, 0) else -1,
                stop=stop, seed=raw.get("seed"),
            )
        except (ValueError, TypeError) as err:
            raise InvalidInput(f"sampling_params are invalid: {err}".splitlines()[0], param="sampling_params") from None
        k_sample = int(body.get("topk_sample_logprobs") or 0)
        k_prompt = int(body.get("topk_prompt_logprobs") or 0)
        for name, k in (("topk_sample_logprobs", k_sample), ("topk_prompt_logprobs", k_prompt)):
            if not 0 <= k <= MAX_TOPK:
                raise InvalidInput(f"{name} must be between 0 and {MAX_TOPK}", param=name)
        if body.get("prompt_alt_tokens_k") or body.get("target_prompt_logprobs") is not None:
            raise InvalidInput("prompt_alt_tokens_k and target_prompt_logprobs are not supported by this server",
                               param="prompt_alt_tokens_k")
        last_n = body.get("prompt_logprobs_last_n")
        want_prompt = bool(body.get("prompt_logprobs"))
        if last_n is not None and (not isinstance(last_n, int) or not 1 <= last_n <= len(tokens) - 1):
            raise InvalidInput(f"prompt_logprobs_last_n must be between 1 and {len(tokens) - 1}",
                               param="prompt_logprobs_last_n")
        if max_tokens is not None and int(max_tokens) < 1:
            raise InvalidInput("max_tokens must be at least 1", param="max_tokens")
        kwargs: dict[str, Any] = {"top_logprobs": k_sample} if k_sample else {}
        seqs = engine.sample([tokens], n, params, adapter, **kwargs)[0]
        encoded = [
            EncodedSequence(s.tokens, s.logprobs, "length" if s.stop_reason == "length" else "stop",
                            [list(row) for row in s.extras.get("top_logprobs", [])]  # type: ignore[attr-defined]
                            if k_sample else [])
            for s in seqs
        ]
        prompt_lps: list[float | None] | None = None
        first = 1 if last_n is None else len(tokens) - last_n
        if want_prompt:
            values = engine.logprobs([tokens], adapter)[0] if len(tokens) > 1 else []
            prompt_lps = [None, *(v if i + 1 >= first else None for i, v in enumerate(values))]
        topk_prompt = None
        if k_prompt:
            rows = engine.prompt_top_logprobs(tokens, k_prompt, adapter)  # type: ignore[attr-defined]
            topk_prompt = [[]] + [row if i + 1 >= first else [] for i, row in enumerate(rows)]
        return encode_sample(encoded, prompt_logprobs=prompt_lps, topk_prompt=topk_prompt,
                             topk_k=max(k_sample, k_prompt))

    def completions(self, p: Principal, sid: str, seen: set[str]) -> list[dict[str, Any]]:
        """Finished requests of a sampling session not in ``seen`` (``retrieve_futures``)."""
        sampler = self._sampler(p.org_id, sid)
        out = []
        for rid in list(sampler.requests):
            if rid in seen:
                continue
            try:
                fut = self.futures.get(p.org_id, rid)
            except NotFound:
                continue
            if fut.done:
                out.append({"state": "failed" if fut.error else "finished", "request_id": rid})
        return out

    # -------------------------------------------------------------------- info
    def capabilities(self) -> dict[str, Any]:
        """``get_server_capabilities``: the base models served."""
        return {"supported_models": [
            {"model_name": m.name, "max_context_length": m.engine.context_length, "trainable": True,
             "sampleable": True}
            for m in self.models
        ]}

    def weights_info(self, p: Principal, tinker_path: str) -> dict[str, Any]:
        """``weights_info``: base model and LoRA shape of a checkpoint."""
        path = TinkerPath.parse(tinker_path)
        self.records.checkpoint(p.org_id, path)
        source = self.records.source_model(p.org_id, path)
        lora = LoraShape.model_validate(source.lora)
        return {"base_model": source.base_model, "is_lora": path.kind != "external_weights",
                "lora_rank": lora.rank, "train_unembed": lora.train_unembed, "train_mlp": lora.train_mlp,
                "train_attn": lora.train_attn, "optimizer_config": {"type": "adamw"}}


def _raise(err: BaseException) -> Any:
    raise err


__all__ = ["LORA_ALPHA", "MAX_SNAPSHOTS", "HostedModel", "TinkerService", "prompt_tokens"]

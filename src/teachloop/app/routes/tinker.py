"""The Tinker-compatible training API under ``/api/v1``: the routes the official ``tinker`` SDK calls.

The SDK authenticates with ``X-API-Key: tml-<key>``; ``app.auth`` reads a
teachloop API key behind the ``tml-`` prefix, so the key's organisation and
role apply (reads need viewer, everything that trains, samples or saves needs
member). Mutating calls answer ``{"request_id"}`` at once and their outcome is
fetched from ``/retrieve_future``: a long-poll of at most
``TinkerService.long_poll`` seconds that answers ``try_again`` while pending,
the protobuf result (``forward_backward``, ``asample``) or JSON, or a failure as
HTTP 200 ``{"error", "category"}`` (the SDK's ``RequestFailedError``). Direct
calls (``get_info``, ``create_sampling_session``, the REST listings) answer at
once and fail with teachloop's error shape and status.

The service (``tinker.TinkerService``) is built on first use from the app's
engine (``AppDeps.engine`` or the serving runtime's) and kept on
``app.state.tinker``; a server without an engine answers 503.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from teachloop.app.auth import Deps, Member, Viewer
from teachloop.core.errors import InvalidInput, ServiceUnavailable
from teachloop.core.tinker import CHECKPOINT_TYPES, CheckpointRecord, TinkerPath
from teachloop.store.schema.base import utc_now
from teachloop.tinker import HostedModel, Records, TinkerService

router = APIRouter(prefix="/api/v1", tags=["tinker"])
_build_lock = threading.Lock()


class _Reply(BaseModel):
    model_config = ConfigDict(extra="allow")


class ClientConfig(_Reply):
    """``/client/config``: flags the SDK reads at start (others keep the SDK's defaults)."""

    pjwt_auth_enabled: bool = False
    parallel_fwdbwd_chunks: bool = True
    proto_compress_fwdbwd: bool = False
    fwdbwd_max_chunk_len: int = 1024


class DynamicConfig(_Reply):
    """``/client/dynamic_config``."""

    refresh_interval_sec: int
    sample_cancel_enabled: bool


class Status(_Reply):
    """A status word."""

    status: str


class SupportedModel(_Reply):
    """A base model this server trains and samples."""

    model_name: str
    max_context_length: int | None = None
    trainable: bool = True
    sampleable: bool = True


class Capabilities(_Reply):
    """``get_server_capabilities``."""

    supported_models: list[SupportedModel]


class SessionCreated(_Reply):
    """A new session."""

    session_id: str
    type: str = "create_session"


class Typed(_Reply):
    """An acknowledgement carrying the request type."""

    type: str


class SessionFinished(_Reply):
    """A finished session."""

    session_id: str
    status: str


class SessionIds(_Reply):
    """Session ids, newest first."""

    sessions: list[str]


class SessionSearch(_Reply):
    """Sessions found (``SessionSummary`` objects)."""

    sessions: list[dict[str, Any]]
    next_cursor: dict[str, Any] | None = None


class SessionInfo(_Reply):
    """A session's runs and samplers."""

    training_run_ids: list[str]
    sampler_ids: list[str]
    user_metadata: dict[str, str] | None = None
    display_name: str | None = None


class Done(_Reply):
    """Done (the SDK reads no body)."""

    ok: bool = True


class TraceExport(_Reply):
    """A session trace export's state."""

    status: str
    url: str | None = None
    error: str | None = None


class ModelData(_Reply):
    """A model's base model and tokenizer."""

    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class InfoReply(_Reply):
    """``get_info``."""

    model_id: str
    model_data: ModelData
    is_lora: bool = True
    lora_rank: int | None = None
    model_name: str | None = None


class Copied(_Reply):
    """Where a copy of weights went."""

    tinker_path: str


class SamplingSession(_Reply):
    """A sampling session."""

    sampling_session_id: str


class Sampler(_Reply):
    """A sampler's base model and checkpoint."""

    sampler_id: str
    base_model: str
    model_path: str | None = None


class Joined(_Reply):
    """A clone number for a SamplingClient."""

    client_counter: int


class FutureOutcome(_Reply):
    """A future's outcome: the result object, ``{"type": "try_again"}``, or ``{"error", "category"}``."""

    type: str | None = None
    request_id: str | None = None
    error: str | None = None
    category: str | None = None


class Completions(_Reply):
    """Finished requests of a sampling session."""

    completions: list[dict[str, Any]]
    cursor: int


class Cancelled(_Reply):
    """Whether a pending request was cancelled."""

    cancelled: bool


class TrainingRunOut(_Reply):
    """A training run (a Tinker training model)."""

    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    corrupted: bool = False
    lora_rank: int | None = None
    last_request_time: datetime
    teachloop_run_id: str
    step: int


class Cursor(_Reply):
    """A page of a listing."""

    offset: int
    limit: int
    total_count: int


class TrainingRuns(_Reply):
    """Training runs, newest first."""

    training_runs: list[TrainingRunOut]
    cursor: Cursor


class CheckpointOut(_Reply):
    """A checkpoint."""

    checkpoint_id: str
    checkpoint_type: str
    time: datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False
    expires_at: datetime | None = None


class Checkpoints(_Reply):
    """Checkpoints, newest first."""

    checkpoints: list[CheckpointOut]
    cursor: Cursor | None = None


class Published(_Reply):
    """A published checkpoint and the adapter version it became."""

    adapter_version_id: str | None = None
    version: int | None = None


class ExternalUrls(_Reply):
    """Where a checkpoint's files are."""

    urls: dict[str, str]
    expires: datetime


class WeightsInfo(_Reply):
    """A checkpoint's base model and LoRA shape."""

    base_model: str
    is_lora: bool
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None


class FutureReply(BaseModel):
    """A submitted request: fetch its outcome with ``/retrieve_future``."""

    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


def tinker_service(request: Request, deps: Deps) -> TinkerService:
    """The app's ``TinkerService``, built on first use; 503 when the app has no engine."""
    service = getattr(request.app.state, "tinker", None)
    if isinstance(service, TinkerService):
        return service
    with _build_lock:
        service = getattr(request.app.state, "tinker", None)
        if isinstance(service, TinkerService):
            return service
        serving = getattr(request.app.state, "serving", None)
        engine = deps.engine or getattr(serving, "engine", None)
        if engine is None:
            raise ServiceUnavailable("the Tinker API needs a loaded model; start the server with one")
        name = getattr(serving, "base_model", None) or deps.settings.model
        folder = str(getattr(engine, "model_name", name))
        hosted = HostedModel(name=name, engine=engine, tokenizer_id=folder,
                             aliases=frozenset({folder, Path(folder).name, deps.settings.model}))
        service = TinkerService(Records(deps.database, deps.blobs), [hosted])
        request.app.state.tinker = service
        return service


Service = Annotated[TinkerService, Depends(tinker_service)]
JsonBody = Annotated[dict[str, Any], Body(default_factory=dict)]


def _future(fut: Any, **extra: Any) -> FutureReply:
    return FutureReply(request_id=fut.request_id, **extra)


# ------------------------------------------------------------------ client bootstrap
@router.post("/client/config", response_model=ClientConfig)
def client_config(principal: Viewer, svc: Service, body: JsonBody) -> dict[str, Any]:
    """The flags the SDK reads when it starts (chunking, transport, auth, feature gates)."""
    return svc.client_config()


@router.post("/client/dynamic_config", response_model=DynamicConfig)
def dynamic_config(principal: Viewer, body: JsonBody) -> dict[str, Any]:
    """Flags the SDK refreshes in the background."""
    return {"refresh_interval_sec": 300, "sample_cancel_enabled": False}


@router.get("/healthz", response_model=Status)
def healthz(principal: Viewer) -> dict[str, Any]:
    """The Tinker API answers."""
    return {"status": "ok"}


@router.post("/telemetry", response_model=Status)
def telemetry(principal: Viewer, body: JsonBody) -> dict[str, Any]:
    """SDK telemetry is accepted and dropped (set TINKER_TELEMETRY=0 to stop sending it)."""
    return {"status": "accepted"}


@router.get("/get_server_capabilities", response_model=Capabilities)
def capabilities(principal: Viewer, svc: Service) -> dict[str, Any]:
    """The base models this server trains and samples."""
    return svc.capabilities()


# ------------------------------------------------------------------------- sessions
@router.post("/create_session", response_model=SessionCreated)
def create_session(principal: Member, svc: Service, body: JsonBody) -> dict[str, Any]:
    """A new SDK session."""
    return svc.create_session(principal, body)


@router.post("/session_heartbeat", response_model=Typed)
def heartbeat(principal: Member, svc: Service, body: JsonBody) -> dict[str, Any]:
    """The session's client is alive."""
    return svc.heartbeat(principal, str(body.get("session_id", "")))


@router.post("/sessions/{session_id}/finish", response_model=SessionFinished)
def finish_session(session_id: str, principal: Member, svc: Service, body: JsonBody) -> dict[str, Any]:
    """End a session (``ServiceClient.close``); its training runs get their final status."""
    return svc.finish_session(principal, session_id, body)


@router.get("/sessions", response_model=SessionIds)
def list_sessions(principal: Viewer, svc: Service, limit: int = Query(20, ge=1, le=1000),
                  offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """The organisation's session ids, newest first."""
    rows, _ = svc.records.sessions(principal.org_id, limit=limit, offset=offset)
    return {"sessions": [r.session_id for r in rows]}


def _session_summary(svc: TinkerService, org_id: str, row: Any) -> dict[str, Any]:
    count, size = svc.records.checkpoint_count(org_id, row.session_id)
    status: dict[str, Any] = {"type": "active"} if row.status == "active" else {
        "type": "finished", "reason": {"type": row.status}}
    return {"session_id": row.session_id, "created_at": row.created_at, "owner": org_id, "project_id": "default",
            "status": status, "checkpoints_count": count, "checkpoint_storage_bytes": size,
            "display_name": row.user_metadata.get("display_name"),
            "user_metadata": {str(k): str(v) for k, v in row.user_metadata.items()} or None}


@router.post("/sessions/search", response_model=SessionSearch)
def search_sessions(principal: Viewer, svc: Service, body: JsonBody) -> dict[str, Any]:
    """Sessions by id, display name words or user metadata (own organisation only)."""
    limit = body.get("limit", 50)
    if not isinstance(limit, int) or not 1 <= limit <= 200:
        raise InvalidInput("limit must be between 1 and 200", param="limit")
    want_meta = body.get("user_metadata") or {}
    if not isinstance(want_meta, dict):
        raise InvalidInput("user_metadata must be an object of strings", param="user_metadata")
    rows, _ = svc.records.sessions(principal.org_id, limit=1000, offset=0)
    words = str(body.get("display_name") or "").lower().split()
    out = []
    for row in rows:
        name = str(row.user_metadata.get("display_name") or "").lower()
        by_id = body.get("session_id") is not None and row.session_id == body.get("session_id")
        by_name = bool(words) and all(w in name for w in words)
        if (body.get("session_id") is not None or words) and not (by_id or by_name):
            continue
        if any(str(row.user_metadata.get(k)) != str(v) for k, v in want_meta.items()):
            continue
        out.append(_session_summary(svc, principal.org_id, row))
    return {"sessions": out[:limit], "next_cursor": None}


@router.get("/sessions/{session_id}", response_model=SessionInfo)
def get_session(session_id: str, principal: Viewer, svc: Service) -> dict[str, Any]:
    """A session's training runs and samplers."""
    row = svc.records.session(principal.org_id, session_id)
    samplers = svc.session_samplers(principal.org_id, session_id)
    return {"training_run_ids": svc.records.session_models(principal.org_id, session_id),
            "sampler_ids": sorted(samplers), "user_metadata": row.user_metadata or None,
            "display_name": row.user_metadata.get("display_name")}


@router.put("/sessions/{session_id}/project", response_model=Done)
def assign_project(session_id: str, principal: Member, svc: Service, body: JsonBody) -> dict[str, Any]:
    """Projects: this server has one per organisation (``default``); other project ids are refused."""
    svc.records.session(principal.org_id, session_id)
    if body.get("project_id") not in (None, "default"):
        raise InvalidInput("this server has one project per organisation, 'default'", param="project_id")
    return {"ok": True}


@router.get("/sessions/{session_id}/trace_export", response_model=TraceExport)
def trace_export(session_id: str, principal: Viewer, svc: Service) -> dict[str, Any]:
    """Perfetto trace export is not offered by this server (answered as a failed export)."""
    svc.records.session(principal.org_id, session_id)
    return {"status": "failed", "error": "this server does not export session traces"}


# --------------------------------------------------------------------------- models
@router.post("/create_model", response_model=FutureReply)
def create_model(principal: Member, svc: Service, body: JsonBody) -> FutureReply:
    """A LoRA training model ``{session_id}:train:{model_seq_id}`` (future: ``{"model_id"}``)."""
    return _future(svc.create_model(principal, body))


@router.post("/get_info", response_model=InfoReply)
def get_info(principal: Viewer, svc: Service, body: JsonBody) -> dict[str, Any]:
    """A training model's base model, tokenizer (a local folder the SDK loads offline) and LoRA rank."""
    return svc.get_info(principal, str(body.get("model_id", "")))


@router.post("/forward_backward", response_model=FutureReply)
async def forward_backward(request: Request, principal: Member, svc: Service) -> FutureReply:
    """A protobuf ``ForwardBackwardRequest`` (zstd if ``Content-Encoding`` says so); future: protobuf output."""
    body = await request.body()
    ctype = request.headers.get("content-type", "")
    if "json" in ctype:
        raise InvalidInput("forward_backward takes a protobuf body (tinker SDK >= 0.25)", param="body")
    fut = await to_thread.run_sync(svc.forward_backward, principal, body, request.headers.get("content-encoding"))
    return _future(fut)


@router.post("/optim_step", response_model=FutureReply)
def optim_step(principal: Member, svc: Service, body: JsonBody) -> FutureReply:
    """AdamW on the accumulated gradients (future: ``{"metrics"}``)."""
    return _future(svc.optim_step(principal, body))


@router.post("/save_weights", response_model=FutureReply)
def save_weights(principal: Member, svc: Service, body: JsonBody) -> FutureReply:
    """Adapter + optimizer state as ``tinker://{model}/weights/{name}``."""
    return _future(svc.save_weights(principal, body))


@router.post("/save_weights_for_sampler", response_model=FutureReply)
def save_weights_for_sampler(principal: Member, svc: Service, body: JsonBody) -> FutureReply:
    """A sampler snapshot: named (a ``sampler_weights`` path) or ephemeral (a sampling session)."""
    return _future(svc.save_weights_for_sampler(principal, body))


@router.post("/save_weights_external", response_model=FutureReply)
def save_weights_external(principal: Member, svc: Service, body: JsonBody) -> FutureReply:
    """Base + adapter merged into a Hugging Face model folder (``external_weights``)."""
    return _future(svc.save_weights_external(principal, body))


@router.post("/load_weights", response_model=FutureReply)
def load_weights(principal: Member, svc: Service, body: JsonBody) -> FutureReply:
    """Create-from-state (``session_id`` + ``model_seq_id``) or load into a model (``model_id``)."""
    return _future(svc.load_weights(principal, body))


@router.post("/create_custom_loss", response_model=FutureReply)
def create_custom_loss(principal: Member, svc: Service, body: JsonBody) -> FutureReply:
    """Server-side custom losses are not run here: the future fails with a ``user`` error saying so."""
    err = InvalidInput("server-side custom losses are not supported by this server (custom_loss_server_side is "
                       "false); forward_backward_custom runs the loss client-side", param="graph")
    return _future(svc.fail(principal.org_id, "create_custom_loss", err))


@router.post("/copy_weights", response_model=Copied)
def copy_weights(principal: Member, svc: Service, body: JsonBody) -> dict[str, Any]:
    """Copy a checkpoint (own or published) into a new, untrainable training run of the caller's."""
    return svc.copy_weights(principal, body)


# ------------------------------------------------------------------------- sampling
@router.post("/create_sampling_session", response_model=SamplingSession)
def create_sampling_session(principal: Member, svc: Service, body: JsonBody) -> dict[str, Any]:
    """A sampling session on a base model or a ``tinker://`` checkpoint."""
    return svc.create_sampling_session(principal, body)


@router.get("/samplers/{sampler_id}", response_model=Sampler)
def get_sampler(sampler_id: str, principal: Viewer, svc: Service) -> dict[str, Any]:
    """A sampling session's base model and checkpoint."""
    return svc.get_sampler(principal, sampler_id)


@router.post("/join_sampling_session", response_model=Joined)
def join_sampling_session(principal: Member, svc: Service, body: JsonBody) -> dict[str, Any]:
    """A clone number for an unpickled SamplingClient."""
    return svc.join_sampling_session(principal, str(body.get("sampling_session_id", "")))


@router.post("/asample", response_model=FutureReply)
def asample(principal: Member, svc: Service, body: JsonBody) -> FutureReply:
    """Sample (future: protobuf ``SampleResponse``); one ``sample_sequence_id`` per sample."""
    fut, ids = svc.sample(principal, body)
    return _future(fut, sample_sequence_ids=ids)


# -------------------------------------------------------------------------- futures
@router.post("/retrieve_future", response_model=None,
             responses={200: {"description": "The result (JSON or `application/x-protobuf`), `try_again`, or "
                                             "`{error, category}`.", "model": FutureOutcome}})
async def retrieve_future(request: Request, principal: Viewer, svc: Service, body: JsonBody) -> Response:
    """Long-poll one request's outcome."""
    fut = svc.futures.get(principal.org_id, str(body.get("request_id", "")))
    if not await svc.futures.wait(fut, svc.long_poll):
        return JSONResponse({"type": "try_again", "request_id": fut.request_id, "queue_state": "active"})
    if fut.error is not None:
        return JSONResponse({"error": fut.error, "category": fut.category})
    if isinstance(fut.result, bytes):
        if "application/x-protobuf" not in request.headers.get("accept", ""):
            return JSONResponse({"error": "this server returns forward_backward and sample results as protobuf; "
                                          "use tinker SDK 0.25 or newer", "category": "user"})
        return Response(fut.result, media_type="application/x-protobuf")
    return JSONResponse(fut.result)


@router.post("/retrieve_futures", response_model=Completions)
async def retrieve_futures(principal: Viewer, svc: Service, body: JsonBody) -> dict[str, Any]:
    """Finished requests of a sampling session (cursor = how many were reported)."""
    target = body.get("target") or {}
    seen_ids = body.get("retrieved_request_ids") or []
    timeout = body.get("timeout") or svc.long_poll
    if not isinstance(target, dict) or not isinstance(seen_ids, list) or not isinstance(timeout, int | float):
        raise InvalidInput("target must be an object, retrieved_request_ids a list and timeout a number",
                           param="target")
    sid = str(target.get("sampling_session_id", ""))
    seen = {str(r) for r in seen_ids}
    done = svc.completions(principal, sid, seen)
    if not done:
        pending = svc.sampler_pending(principal.org_id, sid, seen)
        for fut in pending[:1]:
            await svc.futures.wait(fut, max(0.0, min(float(timeout), svc.long_poll)))
        done = svc.completions(principal, sid, seen)
    cursor = body.get("prev_cursor") or 0
    return {"completions": done, "cursor": (cursor if isinstance(cursor, int) else 0) + len(done)}


@router.post("/cancel_future", response_model=Cancelled)
def cancel_future(principal: Member, svc: Service, body: JsonBody) -> dict[str, Any]:
    """Fail a pending request as cancelled (a running one finishes)."""
    return {"cancelled": svc.futures.cancel(principal.org_id, str(body.get("request_id", "")))}


# ------------------------------------------------------------------ runs and checkpoints
def _checkpoint(c: CheckpointRecord) -> dict[str, Any]:
    path = TinkerPath.parse(c.path)
    return {"checkpoint_id": path.checkpoint_id, "checkpoint_type": CHECKPOINT_TYPES[c.kind], "time": c.created_at,
            "tinker_path": c.path, "size_bytes": c.size_bytes, "public": c.public, "user_metadata": c.user_metadata,
            "expires_at": c.expires_at}


def _run(svc: TinkerService, org_id: str, model_id: str) -> dict[str, Any]:
    row = svc.records.model(org_id, model_id)
    checkpoints, _ = svc.records.checkpoints(org_id, model_id)
    last = {kind: next((c for c in checkpoints if c.kind == kind), None) for kind in ("weights", "sampler_weights")}
    return {"training_run_id": row.model_id, "base_model": row.base_model, "model_owner": org_id, "is_lora": True,
            "corrupted": False, "lora_rank": row.lora.get("rank"), "last_request_time": row.updated_at,
            "last_checkpoint": _checkpoint(last["weights"]) if last["weights"] else None,
            "last_sampler_checkpoint": _checkpoint(last["sampler_weights"]) if last["sampler_weights"] else None,
            "user_metadata": {str(k): str(v) for k, v in row.user_metadata.items()} or None,
            "teachloop_run_id": row.run_id, "step": row.step}


@router.get("/training_runs", response_model=TrainingRuns)
def list_training_runs(principal: Viewer, svc: Service, limit: int = Query(20, ge=1, le=1000),
                       offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """The organisation's training runs (models), newest first."""
    rows, total = svc.records.models(principal.org_id, limit=limit, offset=offset)
    return {"training_runs": [_run(svc, principal.org_id, r.model_id) for r in rows],
            "cursor": {"offset": offset, "limit": limit, "total_count": total}}


@router.get("/training_runs/{run_id}", response_model=TrainingRunOut)
def get_training_run(run_id: str, principal: Viewer, svc: Service) -> dict[str, Any]:
    """One training run."""
    return _run(svc, principal.org_id, run_id)


@router.get("/training_runs/{run_id}/checkpoints", response_model=Checkpoints)
def list_checkpoints(run_id: str, principal: Viewer, svc: Service) -> dict[str, Any]:
    """A run's checkpoints, newest first."""
    rows, total = svc.records.checkpoints(principal.org_id, run_id)
    return {"checkpoints": [_checkpoint(c) for c in rows],
            "cursor": {"offset": 0, "limit": max(total, 1), "total_count": total}}


@router.get("/checkpoints", response_model=Checkpoints)
def list_user_checkpoints(principal: Viewer, svc: Service, limit: int = Query(100, ge=1, le=1000),
                          offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """Every checkpoint of the organisation, newest first."""
    rows, total = svc.records.checkpoints(principal.org_id, None, limit=limit, offset=offset)
    return {"checkpoints": [_checkpoint(c) for c in rows],
            "cursor": {"offset": offset, "limit": limit, "total_count": total}}


def _path(run_id: str, kind: str, name: str) -> TinkerPath:
    return TinkerPath.parse(f"tinker://{run_id}/{kind}/{name}")


@router.delete("/training_runs/{run_id}/checkpoints/{kind}/{name}", response_model=Done)
def delete_checkpoint(run_id: str, kind: str, name: str, principal: Member, svc: Service) -> dict[str, Any]:
    """Delete a checkpoint."""
    svc.records.delete_checkpoint(principal.org_id, _path(run_id, kind, name))
    return {"ok": True}


@router.post("/training_runs/{run_id}/checkpoints/{kind}/{name}/publish", response_model=Published)
def publish_checkpoint(run_id: str, kind: str, name: str, principal: Member, svc: Service) -> dict[str, Any]:
    """Make a checkpoint public and publish its adapter as the next version of a teachloop adapter.

    The adapter is named by the checkpoint's ``user_metadata["adapter_name"]``, else by the checkpoint's
    name; ``teachloop deploy <name>`` then serves it.
    """
    path = _path(run_id, kind, name)
    record = svc.records.checkpoint(principal.org_id, path, readable=False)
    adapter = None
    if kind != "external_weights":
        adapter_name = (record.user_metadata or {}).get("adapter_name") or name
        adapter = svc.records.publish_adapter(principal.org_id, path, name=adapter_name,
                                              actor=f"key:{principal.key_id}")
    svc.records.set_public(principal.org_id, path, True)
    return {"adapter_version_id": adapter[0] if adapter else None, "version": adapter[1] if adapter else None}


@router.delete("/training_runs/{run_id}/checkpoints/{kind}/{name}/publish", response_model=Done)
def unpublish_checkpoint(run_id: str, kind: str, name: str, principal: Member, svc: Service) -> dict[str, Any]:
    """Make a checkpoint private again (adapter versions already published stay)."""
    svc.records.set_public(principal.org_id, _path(run_id, kind, name), False)
    return {"ok": True}


@router.put("/training_runs/{run_id}/checkpoints/{kind}/{name}/ttl", response_model=Done)
def set_checkpoint_ttl(run_id: str, kind: str, name: str, principal: Member, svc: Service,
                       body: JsonBody) -> dict[str, Any]:
    """Expire a checkpoint ``ttl_seconds`` from now (null: keep it)."""
    ttl = body.get("ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
        raise InvalidInput("ttl_seconds must be an integer or null", param="ttl_seconds")
    svc.records.set_ttl(principal.org_id, _path(run_id, kind, name), ttl)
    return {"ok": True}


@router.get("/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls", response_model=ExternalUrls)
def external_weights_urls(run_id: str, kind: str, name: str, principal: Viewer, svc: Service) -> dict[str, Any]:
    """Where the checkpoint's files are (``file://`` URLs on a local blob store)."""
    path = _path(run_id, kind, name)
    svc.records.checkpoint(principal.org_id, path)
    with svc.records.db.session(write=False) as s:
        from sqlalchemy import select

        from teachloop.store.schema.tinker import TinkerCheckpoint

        key = s.scalars(select(TinkerCheckpoint.blob_key).where(
            TinkerCheckpoint.model_id == path.model_id, TinkerCheckpoint.kind == path.kind,
            TinkerCheckpoint.name == path.name)).one()
    blobs = svc.records.blobs
    root = blobs.root if "://" in blobs.root else f"file://{Path(blobs.root).resolve()}"
    urls = {k[len(key) + 1:]: f"{root}/{k}" for k in blobs.list(key + "/")}
    return {"urls": urls, "expires": utc_now() + timedelta(hours=1)}


@router.post("/weights_info", response_model=WeightsInfo)
def weights_info(principal: Viewer, svc: Service, body: JsonBody) -> dict[str, Any]:
    """Base model and LoRA shape of a checkpoint."""
    return svc.weights_info(principal, str(body.get("tinker_path", "")))


__all__ = ["router", "tinker_service"]

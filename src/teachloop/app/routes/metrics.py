"""What the platform operator watches: ``GET /metrics`` (Prometheus) and ``GET /api/operator/stats``.

Both are server-wide, so both need a platform operator key (``Role.OPERATOR``,
minted with ``teachloop admin keys operator``): a missing or bad key is 401
(``guard.RequestGuard``, as everywhere), any organisation's key -- its owner's
included -- is 403. Unlike vLLM's, this ``/metrics`` is not open: queue depth
and token rates would let anyone watch every organisation's traffic. Point
Prometheus at it with the key as a bearer token
(``authorization: {credentials_file: ...}`` in the scrape config).

``/metrics`` renders a ``CollectorRegistry`` of the app's own (never the
process-global one), holding one ``serve.metrics.ServingCollector`` over the
app's ``Serving``; series are labelled by deployment, and by ``org_id`` only
with ``Settings.metrics_org_labels``. ``/api/operator/stats`` is the same
picture as JSON for people and scripts: the scheduler, the trace writer, the
KV cache, and every organisation's usage on this server (``serve.usage``).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from teachloop.app.auth import Deps, Operator, current_serving
from teachloop.serve.metrics import ServingCollector, cache_stats
from teachloop.serve.service import Serving
from teachloop.store.repos.tenancy import Tenancy

router = APIRouter(tags=["operations"])


def registry_for(app: FastAPI, serving: Serving, *, org_labels: bool) -> CollectorRegistry:
    """The app's own registry over ``serving`` (built on first use, then kept on ``app.state``)."""
    registry: CollectorRegistry | None = getattr(app.state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServingCollector(serving, org_labels=org_labels))
        app.state.metrics_registry = registry
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition format."}},
)
def metrics(request: Request, principal: Operator, deps: Deps) -> Response:
    """This server's Prometheus metrics (platform operator key only; see ``docs/serving.md``)."""
    serving = current_serving(request)
    registry = registry_for(request.app, serving, org_labels=deps.settings.metrics_org_labels)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SchedulerView(_Frozen):
    """The batching scheduler now (``serve.scheduler.SchedulerStats``)."""

    running: bool = Field(description="Whether the scheduler thread runs.")
    queued: int = Field(description="Requests waiting for rows.")
    active_requests: int = Field(description="Requests with rows in the running batch.")
    active_rows: int = Field(description="Rows (sequences) of the running batch.")
    max_rows: int = Field(description="Rows the batch may hold.")
    max_queue: int = Field(description="Requests that may wait; more are refused with 503.")
    tokens_per_s: float = Field(description="Tokens generated per second, recently.")
    tokens_total: int = Field(description="Tokens generated since start.")
    steps_total: int = Field(description="Decode steps since start.")
    step_ms_mean: float = Field(description="Mean duration of a decode step (ms).")
    prefills_total: int = Field(description="Prefills since start.")
    prefill_ms_mean: float = Field(description="Mean duration of a prefill (ms).")
    engine_busy_s: float = Field(description="Time the engine spent on prefills and steps (s).")
    requests_completed: int = Field(description="Requests finished.")
    requests_failed: int = Field(description="Requests that failed in generation.")
    requests_rejected: int = Field(description="Requests refused because the queue was full.")
    requests_cancelled: int = Field(description="Requests cancelled (the client left).")


class TraceWriterView(_Frozen):
    """The trace writer so far (``serve.traces.TraceWriterStats``)."""

    pending: int = Field(description="Trace rows queued, not yet committed.")
    rows_written: int = Field(description="Trace rows committed.")
    commits: int = Field(description="Group commits.")
    rows_per_commit: float = Field(description="Mean rows per commit.")
    commit_ms_mean: float = Field(description="Mean duration of one commit (ms).")
    wait_ms_mean: float = Field(description="Mean time from queueing a row to its commit (ms).")
    wait_ms_max: float = Field(description="Longest time from queueing a row to its commit (ms).")
    failures: int = Field(description="Rows that could not be stored.")


class CacheView(_Frozen):
    """The running batch's KV caches (``serve.metrics.cache_stats``; zeros when the engine reports none)."""

    kv_bytes: int = Field(description="Bytes held by the running batch's KV cache.")
    prefix_hits: int = Field(description="Prompt tokens found in the prefix cache.")
    prefix_queries: int = Field(description="Prompt tokens looked up in the prefix cache.")
    prefix_bytes: int = Field(description="Bytes of prompt-prefix keys/values the prefix cache holds.")
    prefix_hit_rate: float = Field(description="prefix_hits / prefix_queries (0 before any query).")


class OrgUsageView(_Frozen):
    """One organisation's chat completions on this server (``serve.usage.OrgUsage``)."""

    org_id: str = Field(description="The organisation's id.")
    name: str = Field(description="The organisation's name.")
    in_flight: int = Field(description="Accepted requests not yet finished.")
    completed: int = Field(description="Requests answered in full.")
    failed: int = Field(description="Accepted requests that ended without a full answer.")
    prompt_tokens: int = Field(description="Prompt tokens of the recorded requests.")
    completion_tokens: int = Field(description="Tokens generated for the recorded requests.")
    completion_tokens_per_s: float = Field(description="Generated tokens per second over the last window_s.")
    traces_written: int = Field(description="Traces committed.")


class OperatorStats(_Frozen):
    """Server-wide figures of this serving process, for the platform operator."""

    model: str | None = Field(description="The base model served; null without an engine.")
    running: bool = Field(description="Whether chat completions can be served now.")
    since: datetime = Field(description="When this server started counting.")
    window_s: float = Field(description="The window of the per-organisation token rates (s).")
    scheduler: SchedulerView | None = Field(description="The batching scheduler; null without an engine.")
    traces: TraceWriterView = Field(description="The trace writer.")
    cache: CacheView = Field(description="The running batch's KV cache and the prefix cache.")
    organisations: list[OrgUsageView] = Field(description="Every organisation, oldest first, with its usage.")


@router.get("/api/operator/stats", response_model=OperatorStats)
def operator_stats(request: Request, principal: Operator, deps: Deps) -> OperatorStats:
    """Server-wide figures: scheduler, trace writer, KV cache and every organisation's usage (operator key only)."""
    serving = current_serving(request)
    with deps.database.session(write=False) as session:
        orgs = [(org.id, org.name) for org in Tenancy(session).list_orgs()]
    scheduler = serving.scheduler.stats() if serving.scheduler is not None else None
    usage = [(org_id, name, serving.usage.of(org_id)) for org_id, name in orgs]
    return OperatorStats(
        model=serving.base_model,
        running=serving.can_generate,
        since=serving.usage.since,
        window_s=serving.usage.window_s,
        scheduler=SchedulerView.model_validate(scheduler, from_attributes=True) if scheduler else None,
        traces=TraceWriterView.model_validate(serving.traces.stats(), from_attributes=True),
        cache=CacheView.model_validate(cache_stats(serving.scheduler), from_attributes=True),
        organisations=[
            OrgUsageView(org_id=org_id, name=name, in_flight=u.in_flight, completed=u.completed, failed=u.failed,
                         prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                         completion_tokens_per_s=u.completion_tokens_per_s, traces_written=u.traces_written)
            for org_id, name, u in usage
        ],
    )


__all__ = [
    "CacheView",
    "OperatorStats",
    "OrgUsageView",
    "SchedulerView",
    "TraceWriterView",
    "metrics",
    "operator_stats",
    "registry_for",
    "router",
]

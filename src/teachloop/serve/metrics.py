"""Prometheus metrics of a serving process: what an operator watches (the figures vLLM's users watch).

Two kinds of figures:

- **Per request**, kept by ``ServingMetrics`` (one per ``Serving``): requests,
  prompt and generation tokens (counters) and the time to first token, time per
  output token and end-to-end latency (histograms). ``ChatRun.record`` calls
  ``observe`` once per request whose replies are complete, before its trace is
  written, with the same latency the trace stores. A call relayed to an upstream
  arm (``serve.upstream``) is counted by ``observe_trace`` from its trace row: an
  answered one in the same families as a local call, and every one (answered,
  failed or cancelled, primary, canary or shadow) in ``upstream_requests`` by arm and
  outcome.
- **Live state**, read at scrape time by ``ServingCollector``: the scheduler's
  running and waiting requests, batch rows and outcome counters
  (``Scheduler.stats``), the trace writer's backlog, lag and failures
  (``TraceWriter.stats``), and the running batch's KV cache and prefix cache
  (``cache_stats``).

Per-request series are labelled by ``deployment``: the deployment's name, or
``base`` for a request to the base model. Deployment names are chosen by each
organisation, so two organisations' deployments of the same name share a
series. Nothing identifying an organisation is a label unless the operator
asks (``ServingCollector(org_labels=True)``, ``TEACHLOOP_METRICS_ORG_LABELS``):
then each series also carries ``org_id``. The observations are always kept per
(organisation, deployment) and summed at scrape time, so the setting changes
no stored state. Live figures are server-wide and carry no labels.

Durations are in seconds and sizes in bytes (Prometheus base units). Every
metric name starts with ``teachloop_``; ``docs/serving.md`` lists them all.
Thread-safe; knows nothing of HTTP (the ``/metrics`` route renders a
``CollectorRegistry`` holding a ``ServingCollector``).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # service imports this module
    from teachloop.serve.scheduler import Scheduler
    from teachloop.serve.service import ChatRun, Reply, Serving

log = logging.getLogger(__name__)

PREFIX = "teachloop_"
BASE_LABEL = "base"
#: the histogram buckets (seconds) of vLLM's time to first token, time per output token and e2e latency
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)

#: (org_id, deployment label)
SeriesKey = tuple[str, str]


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le=b counts value <= b
        self.total += value

    def add(self, other: _Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


def deployment_label(deployment_id: str | None, model: str) -> str:
    """The ``deployment`` label of a request: the deployment's name, or ``base`` for the base model."""
    return model if deployment_id is not None else BASE_LABEL


class ServingMetrics:
    """Per-request counters and histograms of one serving process (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._prompt: dict[SeriesKey, int] = {}
        self._generation: dict[SeriesKey, int] = {}
        self._ttft: dict[SeriesKey, _Histogram] = {}
        self._tpot: dict[SeriesKey, _Histogram] = {}
        self._e2e: dict[SeriesKey, _Histogram] = {}
        self._upstream: dict[tuple[str, str, str, str], int] = {}  # (org, deployment, arm, outcome)

    def observe(self, run: ChatRun, replies: Sequence[Reply], latency_ms: float) -> None:
        """Count one request whose replies are complete; ``latency_ms`` is its end-to-end latency.

        Time per output token is (latency - time to first token) / (tokens - 1) of the
        longest choice, observed only when that choice has two tokens or more.
        """
        key = (run.principal.org_id, deployment_label(run.target.deployment_id, run.target.model))
        completion = sum(r.completion_tokens for r in replies)
        longest = max((r.completion_tokens for r in replies), default=0)
        finish = replies[0].finish_reason if replies else "stop"
        self._answered(key, finish, run.prompt_tokens, completion, longest, run.ttft_ms, latency_ms)

    def observe_trace(self, row: Mapping[str, object]) -> None:
        """Count one upstream call from its trace row (``serve.upstream``: answered, failed or cancelled).

        Every call counts in ``upstream_requests`` by arm and outcome (``ok``, ``cancelled``, or the trace's
        ``error.what``); an answered one (not a shadow's) also counts like a local request.
        """
        key = (str(row["org_id"]), deployment_label(_opt_str(row.get("deployment_id")), str(row["model"])))
        error = row.get("error")
        finish = str(row.get("finish_reason") or "stop")
        outcome = (str(error.get("what", "error")) if isinstance(error, dict) else
                   "cancelled" if finish == "cancelled" else "ok")
        arm = str(row.get("arm") or "primary")
        with self._lock:
            label = (*key, arm, outcome)
            self._upstream[label] = self._upstream.get(label, 0) + 1
        if outcome == "ok" and arm != "shadow":
            prompt, completion = _int(row.get("prompt_tokens")), _int(row.get("completion_tokens"))
            choices = row.get("choices")
            longest = max((_int(c.get("completion_tokens")) for c in choices if isinstance(c, dict)), default=0) \
                if isinstance(choices, list) else completion
            ttft = row.get("ttft_ms")
            self._answered(key, finish, prompt, completion, longest, float(ttft) if isinstance(ttft, int | float)
                           else None, float(_num(row.get("latency_ms"))))

    def _answered(self, key: SeriesKey, finish: str, prompt_tokens: int, completion: int, longest: int,
                  ttft_ms: float | None, latency_ms: float) -> None:
        with self._lock:
            self._requests[(*key, finish)] = self._requests.get((*key, finish), 0) + 1
            self._prompt[key] = self._prompt.get(key, 0) + prompt_tokens
            self._generation[key] = self._generation.get(key, 0) + completion
            self._hist(self._e2e, key, E2E_BUCKETS).observe(latency_ms / 1000)
            if ttft_ms is not None:
                self._hist(self._ttft, key, TTFT_BUCKETS).observe(ttft_ms / 1000)
                if longest > 1:
                    tpot = max(0.0, latency_ms - ttft_ms) / 1000 / (longest - 1)
                    self._hist(self._tpot, key, TPOT_BUCKETS).observe(tpot)
        log.info(
            "request done: deployment=%s prompt_tokens=%d completion_tokens=%d ttft_ms=%s latency_ms=%.1f",
            key[1], prompt_tokens, completion, f"{ttft_ms:.1f}" if ttft_ms is not None else "-", latency_ms,
            extra={"deployment": key[1], "prompt_tokens": prompt_tokens, "completion_tokens": completion,
                   "ttft_ms": ttft_ms, "latency_ms": latency_ms, "finish_reason": finish},
        )

    @staticmethod
    def _hist(table: dict[SeriesKey, _Histogram], key: SeriesKey, bounds: tuple[float, ...]) -> _Histogram:
        hist = table.get(key)
        if hist is None:
            hist = table[key] = _Histogram(bounds)
        return hist

    def families(self, *, org_labels: bool = False) -> list[Metric]:
        """The per-request metric families, labelled by deployment (and ``org_id`` with ``org_labels``)."""
        names = ["deployment", "org_id"] if org_labels else ["deployment"]

        def labels(key: SeriesKey) -> tuple[str, ...]:
            org_id, deployment = key
            return (deployment, org_id) if org_labels else (deployment,)

        with self._lock:
            requests = dict(self._requests)
            upstream = dict(self._upstream)
            counters = [(name, doc, dict(table)) for name, doc, table in (
                ("prompt_tokens", "Prompt tokens of the requests answered.", self._prompt),
                ("generation_tokens", "Tokens generated for the requests answered (every choice).",
                 self._generation),
            )]
            histograms = [(name, doc, {k: _Histogram(h.bounds, list(h.counts), h.total) for k, h in table.items()})
                          for name, doc, table in (
                ("time_to_first_token_seconds", "Time from accepting a request to its first token.", self._ttft),
                ("time_per_output_token_seconds",
                 "Mean time between output tokens of a request after the first (its longest choice).", self._tpot),
                ("e2e_request_latency_seconds", "Time from accepting a request to its complete replies.",
                 self._e2e),
            )]
        out: list[Metric] = []
        family = CounterMetricFamily(f"{PREFIX}requests", "Requests answered in full, by finish reason of the "
                                     "first choice.", labels=[*names, "finished_reason"])
        summed: dict[tuple[str, ...], float] = {}
        for (org_id, deployment, finish), count in requests.items():
            label = (*labels((org_id, deployment)), finish)
            summed[label] = summed.get(label, 0) + count
        for label, value in sorted(summed.items()):
            family.add_metric(list(label), value)
        out.append(family)
        family = CounterMetricFamily(f"{PREFIX}upstream_requests", "Calls relayed to upstream arms, by arm (primary, "
                                     "canary, shadow) and outcome (ok, cancelled, or the trace's error.what: "
                                     "connection_refused, rate_limited, timeout, upstream_status, stream_cut).",
                                     labels=[*names, "arm", "outcome"])
        summed = {}
        for (org_id, deployment, arm, outcome), count in upstream.items():
            label = (*labels((org_id, deployment)), arm, outcome)
            summed[label] = summed.get(label, 0) + count
        for label, value in sorted(summed.items()):
            family.add_metric(list(label), value)
        out.append(family)
        for name, doc, table in counters:
            family = CounterMetricFamily(f"{PREFIX}{name}", doc, labels=names)
            summed = {}
            for key, count in table.items():
                summed[labels(key)] = summed.get(labels(key), 0) + count
            for label, value in sorted(summed.items()):
                family.add_metric(list(label), value)
            out.append(family)
        for name, doc, hists in histograms:
            hist_family = HistogramMetricFamily(f"{PREFIX}{name}", doc, labels=names)
            merged: dict[tuple[str, ...], _Histogram] = {}
            for key, hist in hists.items():
                into = merged.get(labels(key))
                if into is None:
                    merged[labels(key)] = hist
                else:
                    into.add(hist)
            for label, hist in sorted(merged.items()):
                hist_family.add_metric(list(label), hist.buckets(), hist.total)
            out.append(hist_family)
        return out


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True)
class CacheStats:
    """The KV caches serving uses: the running batch's, and the prefix cache (hits among tokens looked up)."""

    kv_bytes: int = 0
    prefix_hits: int = 0
    prefix_queries: int = 0
    prefix_bytes: int = 0

    @property
    def prefix_hit_rate(self) -> float:
        """``prefix_hits / prefix_queries`` (0 before any query)."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def _read(raw: object, name: str) -> int:
    value = raw.get(name, 0) if isinstance(raw, Mapping) else getattr(raw, name, 0)
    return int(value or 0)


def cache_stats(scheduler: Scheduler | None) -> CacheStats:
    """What the scheduler's running batch reports about its KV caches; zeros when it reports nothing.

    Duck-typed, so any engine's batch fits. A batch with a ``stats()`` (a mapping or an
    object with ``kv_bytes``, ``prefix_hits``, ``prefix_queries`` and ``prefix_bytes``;
    missing ones are 0) reports itself. Otherwise (the torch engine's ``DecodeBatch``):
    the bytes of its ``cache.k`` and ``cache.v`` tensors (``KVCache``), and the
    ``queries``, ``hits`` and ``bytes`` of its ``prefix.stats()`` (``engine.prefix``),
    when it has a prefix cache. No batch (idle since start, or no engine): zeros.
    """
    batch = scheduler.batch if scheduler is not None else None
    if batch is None:
        return CacheStats()
    try:
        stats = getattr(batch, "stats", None)
        if callable(stats):
            raw = stats()
            return CacheStats(*(_read(raw, n) for n in ("kv_bytes", "prefix_hits", "prefix_queries", "prefix_bytes")))
        cache = getattr(batch, "cache", None)
        tensors = [*getattr(cache, "k", ()), *getattr(cache, "v", ())]
        kv_bytes = sum(int(getattr(t, "nbytes", 0)) for t in tensors)
        prefix_stats = getattr(getattr(batch, "prefix", None), "stats", None)
        prefix = prefix_stats() if callable(prefix_stats) else None
        if prefix is None:
            return CacheStats(kv_bytes=kv_bytes)
        return CacheStats(kv_bytes, _read(prefix, "hits"), _read(prefix, "queries"), _read(prefix, "bytes"))
    except Exception:  # a scrape never fails over an engine's internals
        log.debug("could not read the batch's cache stats", exc_info=True)
        return CacheStats()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}{name}", doc, value=value)


class ServingCollector(Collector):
    """A Prometheus collector over one ``Serving``: its ``metrics`` plus live state read at each scrape."""

    def __init__(self, serving: Serving, *, org_labels: bool = False) -> None:
        self.serving = serving
        self.org_labels = org_labels

    def collect(self) -> Iterator[Metric]:
        serving = self.serving
        scheduler = serving.scheduler
        stats = scheduler.stats() if scheduler is not None else None
        yield _gauge("scheduler_running", "1 while the scheduler runs (chat completions can be served), else 0.",
                     1.0 if serving.can_generate else 0.0)
        yield _gauge("num_requests_running", "Requests with rows in the running batch.",
                     stats.active_requests if stats else 0)
        yield _gauge("num_requests_waiting", "Requests queued for rows.", stats.queued if stats else 0)
        yield _gauge("batch_rows_in_use", "Rows (sequences) of the running batch.", stats.active_rows if stats else 0)
        yield _gauge("batch_rows_max", "Rows the batch may hold (ServingConfig.max_rows).",
                     stats.max_rows if stats else 0)
        outcomes = CounterMetricFamily(f"{PREFIX}scheduler_requests", "Requests the scheduler finished, failed, "
                                       "refused (queue full) or saw cancelled.", labels=["outcome"])
        for outcome, value in (("completed", stats.requests_completed if stats else 0),
                               ("failed", stats.requests_failed if stats else 0),
                               ("rejected", stats.requests_rejected if stats else 0),
                               ("cancelled", stats.requests_cancelled if stats else 0)):
            outcomes.add_metric([outcome], value)
        yield outcomes
        yield _counter("engine_busy_seconds", "Time the engine spent on prefills and decode steps.",
                       stats.engine_busy_s if stats else 0.0)
        cache = cache_stats(scheduler)
        yield _gauge("kv_cache_bytes", "Bytes held by the running batch's KV cache.", cache.kv_bytes)
        yield _counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", cache.prefix_queries)
        yield _counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", cache.prefix_hits)
        yield _gauge("prefix_cache_hit_rate", "prefix_cache_hits / prefix_cache_queries (0 before any query).",
                     cache.prefix_hit_rate)
        yield _gauge("prefix_cache_bytes", "Bytes of prompt-prefix keys/values the prefix cache holds.",
                     cache.prefix_bytes)
        traces = serving.traces.stats()
        yield _gauge("trace_writer_pending", "Trace rows queued, not yet committed.", traces.pending)
        yield _gauge("trace_writer_lag_seconds_mean", "Mean time from queueing a trace to its commit "
                     "(what capture adds to a request's latency).", traces.wait_ms_mean / 1000)
        yield _gauge("trace_writer_lag_seconds_max", "Longest time from queueing a trace to its commit.",
                     traces.wait_ms_max / 1000)
        yield _counter("trace_writer_rows", "Trace rows committed.", traces.rows_written)
        yield _counter("trace_writer_commits", "Group commits of the trace writer.", traces.commits)
        yield _counter("trace_writer_failures", "Trace rows that could not be stored (their requests failed).",
                       traces.failures)
        yield from serving.metrics.families(org_labels=self.org_labels)


__all__ = [
    "BASE_LABEL",
    "E2E_BUCKETS",
    "PREFIX",
    "TPOT_BUCKETS",
    "TTFT_BUCKETS",
    "CacheStats",
    "ServingCollector",
    "ServingMetrics",
    "cache_stats",
    "deployment_label",
]

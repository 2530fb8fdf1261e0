"""What an operator watches: ``/metrics``, ``/api/operator/stats``, the operator key and JSON logs (echo engine)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from typer.testing import CliRunner

from teachloop.core.errors import ConfigurationError, InvalidInput
from teachloop.core.logs import bind_trace_id, log_handler
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.serve import Serving
from teachloop.serve.metrics import CacheStats, ServingCollector, cache_stats
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import BASE, Tenants, auth

CHAT = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def operator(database: Database, tenants: Tenants) -> str:
    """A platform operator key, filed under an organisation of its own."""
    with database.session() as s:
        org = Tenancy(s).create_org("platform-ops")
        return ApiKeys(s).create_operator_key(org.id, "prometheus").secret


def _chat(client: TestClient, key: str, model: str, text: str, *, stream: bool = False) -> str:
    r = client.post(CHAT, json={"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]},
                    headers=auth(key))
    assert r.status_code == 200, r.text
    return r.headers["x-teachloop-trace-id"]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(client: TestClient, key: str) -> tuple[str, Samples]:
    r = client.get("/metrics", headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return r.text, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


def _traces(database: Database, ids: list[str]) -> list[Trace]:
    with database.session(write=False) as s:
        rows = list(s.scalars(select(Trace).where(Trace.id.in_(ids))))
        s.expunge_all()
    assert len(rows) == len(ids)
    return rows


# ---------------------------------------------------------------------------------------------- /metrics


def test_every_completion_is_counted_once_and_its_tokens_match_its_trace(
    client: TestClient, tenants: Tenants, operator: str, database: Database
) -> None:
    r = client.post("/api/deployments", json={"name": "support"}, headers=auth(tenants.acme.owner))
    assert r.status_code == 201, r.text
    support = [_chat(client, tenants.acme.member, "support", f"question number {i} please") for i in range(3)]
    support.append(_chat(client, tenants.acme.member, "support", "a streamed one", stream=True))
    base = [_chat(client, tenants.globex.member, BASE, f"hi {i}") for i in range(2)]
    text, samples = _scrape(client, operator)

    for label, ids in (("support", support), ("base", base)):
        rows = _traces(database, ids)
        n = len(ids)
        requests = sum(v for (name, lbl), v in samples.items()
                       if name == "teachloop_requests_total" and ("deployment", label) in lbl)
        assert requests == n
        assert _value(samples, "teachloop_prompt_tokens_total", deployment=label) == sum(t.prompt_tokens for t in rows)
        assert _value(samples, "teachloop_generation_tokens_total", deployment=label) == sum(
            t.completion_tokens for t in rows)
        for hist in ("e2e_request_latency_seconds", "time_to_first_token_seconds", "time_per_output_token_seconds"):
            assert _value(samples, f"teachloop_{hist}_count", deployment=label) == n, hist
            assert _value(samples, f"teachloop_{hist}_bucket", deployment=label, le="+Inf") == n, hist
        # the histogram observed exactly what the trace stores
        assert _value(samples, "teachloop_e2e_request_latency_seconds_sum", deployment=label) == pytest.approx(
            sum(t.latency_ms for t in rows) / 1000)
        assert _value(samples, "teachloop_time_to_first_token_seconds_sum", deployment=label) == pytest.approx(
            sum(t.ttft_ms or 0 for t in rows) / 1000)
    finish = {dict(lbl)["finished_reason"] for (name, lbl) in samples if name == "teachloop_requests_total"}
    assert finish == {"stop"}

    # live state, read at scrape time
    assert _value(samples, "teachloop_scheduler_running") == 1
    assert _value(samples, "teachloop_num_requests_running") == 0
    assert _value(samples, "teachloop_num_requests_waiting") == 0
    assert _value(samples, "teachloop_batch_rows_max") == 8
    assert _value(samples, "teachloop_scheduler_requests_total", outcome="completed") == 6
    assert _value(samples, "teachloop_trace_writer_rows_total") == 6
    assert _value(samples, "teachloop_trace_writer_failures_total") == 0
    assert _value(samples, "teachloop_kv_cache_bytes") == 0  # the echo engine's batch has no KV cache
    assert "# TYPE teachloop_e2e_request_latency_seconds histogram" in text


def test_metrics_name_no_organisation_unless_the_operator_asks(
    client: TestClient, tenants: Tenants, operator: str, serving: Serving, database: Database, blobs: BlobStore,
    settings: Settings,
) -> None:
    for key in (tenants.acme.member, tenants.globex.member):
        _chat(client, key, BASE, "hello")
    text, samples = _scrape(client, operator)
    with database.session(write=False) as s:
        orgs = Tenancy(s).list_orgs()
    assert len(orgs) == 3
    for org in orgs:
        assert org.id not in text and org.name not in text
    assert "org_id" not in text
    assert _value(samples, "teachloop_prompt_tokens_total", deployment="base") > 0

    from teachloop.app import AppDeps, create_app

    labelled = AppDeps(settings.model_copy(update={"metrics_org_labels": True}), database, blobs, serving=serving)
    with TestClient(create_app(labelled)) as other:
        text, samples = _scrape(other, operator)
    one = _traces(database, [t.id for t in _all_traces(database, tenants.acme.org_id)])
    assert _value(samples, "teachloop_prompt_tokens_total", deployment="base", org_id=tenants.acme.org_id) == sum(
        t.prompt_tokens for t in one)
    assert _value(samples, "teachloop_e2e_request_latency_seconds_count", deployment="base",
                  org_id=tenants.globex.org_id) == 1


def _all_traces(database: Database, org_id: str) -> list[Trace]:
    with database.session(write=False) as s:
        rows = list(s.scalars(select(Trace).where(Trace.org_id == org_id)))
        s.expunge_all()
    return rows


def test_scraping_needs_a_platform_operator_key(client: TestClient, tenants: Tenants, operator: str) -> None:
    for path in ("/metrics", "/api/operator/stats"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer tl_nope"}).status_code == 401
        for key in (tenants.acme.owner, tenants.acme.member, tenants.globex.viewer):
            r = client.get(path, headers=auth(key))
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "permission_denied"
            assert "teachloop_" not in r.text and tenants.globex.org_id not in r.text
        assert client.get(path, headers=auth(operator)).status_code == 200


def test_an_operator_key_reads_no_organisation_data(client: TestClient, tenants: Tenants, operator: str,
                                                    database: Database) -> None:
    for method, path in (("GET", "/api/traces"), ("GET", "/v1/models"), ("GET", "/api/deployments"),
                         ("GET", "/api/serving/stats"), ("POST", CHAT)):
        body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]} if method == "POST" else None
        r = client.request(method, path, json=body, headers=auth(operator))
        assert r.status_code == 403, (path, r.text)
    # and no organisation role can mint one, whoever asks
    with database.session() as s:
        keys = ApiKeys(s)
        for role in (Role.OPERATOR, "operator"):
            with pytest.raises(InvalidInput) as err:
                keys.create_key(tenants.acme.org_id, None, role, "sneaky")
            assert err.value.param == "role"


def test_operator_stats_show_every_organisation(client: TestClient, tenants: Tenants, operator: str) -> None:
    for _ in range(2):
        _chat(client, tenants.acme.member, BASE, "one two three")
    _chat(client, tenants.globex.member, BASE, "four")
    r = client.get("/api/operator/stats", headers=auth(operator))
    assert r.status_code == 200, r.text
    body = r.json()
    by_name = {o["name"]: o for o in body["organisations"]}
    assert set(by_name) == {"acme", "globex", "platform-ops"}
    assert by_name["acme"]["org_id"] == tenants.acme.org_id
    assert (by_name["acme"]["completed"], by_name["globex"]["completed"], by_name["platform-ops"]["completed"]) == (
        2, 1, 0)
    assert by_name["acme"]["traces_written"] == 2 and by_name["globex"]["prompt_tokens"] > 0
    assert body["scheduler"]["requests_completed"] == 3 and body["scheduler"]["max_rows"] == 8
    assert body["traces"]["rows_written"] == 3 and body["traces"]["failures"] == 0
    assert body["cache"] == {"kv_bytes": 0, "prefix_hits": 0, "prefix_queries": 0, "prefix_bytes": 0,
                             "prefix_hit_rate": 0.0}
    assert body["model"] == BASE and body["running"] is True
    assert "/api/operator/stats" in client.get("/api/openapi.json", headers=auth(operator)).json()["paths"]


# ---------------------------------------------------------------------------------------------- parts


class _Tensor:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


class _Holder:
    def __init__(self, batch: Any) -> None:
        self.batch = batch  # Scheduler.batch


def test_cache_stats_read_what_the_batch_reports() -> None:
    class Reporting:
        def stats(self) -> dict[str, int]:
            return {"kv_bytes": 4096, "prefix_hits": 30, "prefix_queries": 40}

    class Cache:
        k = [_Tensor(100), _Tensor(100)]
        v = [_Tensor(100), _Tensor(100)]

    class Plain:
        cache = Cache()

    class PrefixStats:
        queries, hits, bytes = 64, 48, 2048

    class Prefix:
        def stats(self) -> PrefixStats:
            return PrefixStats()

    class WithPrefix:
        cache = Cache()
        prefix = Prefix()

    class Broken:
        def stats(self) -> Any:
            raise RuntimeError("engine internals moved")

    reported = cache_stats(_Holder(Reporting()))  # type: ignore[arg-type]
    assert (reported.kv_bytes, reported.prefix_hits, reported.prefix_queries) == (4096, 30, 40)
    assert reported.prefix_hit_rate == 0.75
    assert cache_stats(_Holder(Plain())) == CacheStats(kv_bytes=400)  # type: ignore[arg-type]
    assert cache_stats(_Holder(WithPrefix())) == CacheStats(400, 48, 64, 2048)  # type: ignore[arg-type]
    assert cache_stats(_Holder(Broken())).kv_bytes == 0  # type: ignore[arg-type]
    assert cache_stats(_Holder(None)).prefix_hit_rate == 0.0  # type: ignore[arg-type]
    assert cache_stats(None).kv_bytes == 0


def test_every_metric_is_documented(serving: Serving) -> None:
    doc = (ROOT / "docs" / "serving.md").read_text()
    names = [f.name + ("_total" if f.type == "counter" else "") for f in ServingCollector(serving).collect()]
    assert len(names) > 20
    missing = [name for name in names if f"`{name}`" not in doc]
    assert not missing, f"docs/serving.md misses {missing}"


# ---------------------------------------------------------------------------------------------- logs


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = log_handler("json", stream)
    logger = logging.getLogger("teachloop")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_log_line_of_a_request_carries_its_trace_id(client: TestClient, tenants: Tenants,
                                                          json_lines: io.StringIO) -> None:
    ids = [_chat(client, tenants.acme.member, BASE, "plain"), _chat(client, tenants.acme.member, BASE, "streamed",
                                                                    stream=True)]
    lines = [line for line in _lines(json_lines) if line["logger"] == "teachloop.serve.metrics"]
    assert [line["trace_id"] for line in lines] == ids
    assert all(line["level"] == "INFO" and line["deployment"] == "base" and line["prompt_tokens"] > 0
               for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", lines[0]["time"])
    logging.getLogger("teachloop.test").warning("outside any request")
    assert "trace_id" not in _lines(json_lines)[-1]


def test_trace_ids_stay_with_their_own_task(json_lines: io.StringIO) -> None:
    log = logging.getLogger("teachloop.test")

    async def request(trace_id: str) -> None:
        bind_trace_id(trace_id)
        for step in range(3):
            log.info("step %d", step, extra={"step": step})
            await asyncio.sleep(0)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        await asyncio.to_thread(log.info, "from a worker thread")

    async def both() -> None:
        await asyncio.gather(request("tr_a"), request("tr_b"))

    asyncio.run(both())
    lines = _lines(json_lines)
    assert len(lines) == 10
    for trace_id in ("tr_a", "tr_b"):
        own = [line for line in lines if line.get("trace_id") == trace_id]
        assert [line["message"] for line in own] == ["step 0", "step 1", "step 2", "failed", "from a worker thread"]
        assert [line.get("step") for line in own[:3]] == [0, 1, 2]
        assert "ValueError: boom" in own[3]["exception"]
    log.info("after")
    assert "trace_id" not in _lines(json_lines)[-1]


# ---------------------------------------------------------------------------------------------- settings, CLI


def test_log_format_and_org_label_settings() -> None:
    env = {"TEACHLOOP_HOME": "/tmp/x"}
    default = Settings.from_env(env)
    assert (default.log_format, default.metrics_org_labels) == ("text", False)
    chosen = Settings.from_env({**env, "TEACHLOOP_LOG_FORMAT": "json", "TEACHLOOP_METRICS_ORG_LABELS": "1"})
    assert (chosen.log_format, chosen.metrics_org_labels) == ("json", True)
    for var, bad in (("TEACHLOOP_LOG_FORMAT", "xml"), ("TEACHLOOP_METRICS_ORG_LABELS", "maybe")):
        with pytest.raises(ConfigurationError) as err:
            Settings.from_env({**env, var: bad})
        assert err.value.param == var


def test_admin_mints_an_operator_key(teachloop_home: Path) -> None:
    from teachloop.cli.main import app

    cli = CliRunner()
    assert cli.invoke(app, ["admin", "init"]).exit_code == 0
    minted = cli.invoke(app, ["admin", "keys", "operator", "--name", "prometheus", "-q"])
    assert minted.exit_code == 0, minted.output
    secret = minted.output.strip()
    check = cli.invoke(app, ["admin", "keys", "check", secret])
    assert check.exit_code == 0 and "service key (operator)" in check.output, check.output
    refused = cli.invoke(app, ["admin", "keys", "create", "--role", "operator", "--service"])
    assert refused.exit_code != 0 and "teachloop admin keys operator" in refused.output

"""Upstream deployments (issue 17): the official openai client calls teachloop, which relays to a local fake upstream.

The echo engine serves the local arms; ``upstream_server.FakeUpstream`` is the upstream "teacher".
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import openai
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from teachloop.serve import Serving
from teachloop.store import Database
from teachloop.store.schema.deployments import UpstreamEndpoint
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import Tenants, auth
from tests.unit.serve.upstream_server import KEY, FakeUpstream

PRICE = {"prompt_per_1m": 15, "completion_per_1m": 60, "currency": "USD"}


@pytest.fixture(autouse=True)
def _upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_UPSTREAM_KEY", Fernet.generate_key().decode())


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


def _spec(up: FakeUpstream | str, model: str = "teacher", **extra: Any) -> dict[str, Any]:
    base = up if isinstance(up, str) else up.base_url
    return {"base_url": base, "model": model, "api_key": KEY, **extra}


def _create(client: TestClient, key: str, name: str, upstream: dict[str, Any], **extra: Any) -> Any:
    return client.post("/api/deployments", json={"name": name, "upstream": upstream, **extra}, headers=auth(key))


def _oai(client: TestClient, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)


def _trace(database: Database, trace_id: str) -> Trace:
    with database.session(write=False) as s:
        row = s.get(Trace, trace_id)
        assert row is not None, trace_id
        s.expunge(row)
        return row


def _traces(database: Database) -> list[Trace]:
    with database.session(write=False) as s:
        rows = list(s.scalars(select(Trace).order_by(Trace.created_at)))
        for r in rows:
            s.expunge(r)
        return rows


def _metric(client: TestClient, name: str) -> dict[tuple[str, ...], float]:
    """The samples of one Prometheus family of the app's serving process, by label values."""
    serving: Serving = client.app.state.serving  # type: ignore[attr-defined]
    family = next(f for f in serving.metrics.families() if f.name == f"teachloop_{name}")
    return {tuple(sample.labels.values()): sample.value for sample in family.samples
            if sample.name.endswith(("_total", "_count")) or sample.name == family.name}


def test_an_upstream_arm_passes_requests_through_and_traces_them_like_a_local_call(
    client: TestClient, tenants: Tenants, database: Database, upstream: FakeUpstream
) -> None:
    acme = tenants.acme
    r = _create(client, acme.owner, "support", _spec(upstream), prices={"teacher": PRICE})
    assert r.status_code == 201, r.text
    assert KEY not in r.text and r.json()["upstream"]["api_key"] == "set"
    assert KEY not in client.get("/api/deployments/support", headers=auth(acme.viewer)).text
    with database.session(write=False) as s:
        stored = s.scalars(select(UpstreamEndpoint)).one()
        assert KEY not in stored.key_ciphertext and stored.model == "teacher"

    oai = _oai(client, acme.member)
    out = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "hello"}], user="u1")
    assert out.choices[0].message.content == "teacher: hello"
    assert out.model == "support" and out.id.startswith("chatcmpl-tr_")
    assert upstream.requests[-1]["model"] == "teacher"  # the deployment name became the upstream's model
    trace = _trace(database, out.id.removeprefix("chatcmpl-"))
    assert trace.arm == "primary" and trace.upstream_id == stored.id and trace.deployment_id is not None
    assert (trace.prompt_tokens, trace.completion_tokens) == (11, 3)
    assert trace.cost_micro == 11 * 15 + 3 * 60
    assert trace.choices[0]["message"]["content"] == "teacher: hello" and trace.finish_reason == "stop"
    assert trace.latency_ms > 0 and trace.error is None and trace.messages[-1]["content"] == "hello"

    # tools, parallel_tool_calls, n, logprobs and response_format pass through, and what the upstream gives comes back
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    out = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "weather?"}],
                                      tools=tools, n=2, logprobs=True, parallel_tool_calls=False)  # type: ignore[arg-type]
    sent = upstream.requests[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["n"] == 2 and sent["logprobs"] is True
    assert sent["parallel_tool_calls"] is False  # the upstream enforces it, not this server
    assert len(out.choices) == 2 and out.choices[1].message.tool_calls is not None
    assert out.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index]
    assert out.choices[0].logprobs is not None and out.choices[0].logprobs.content[0].token == "teacher"  # type: ignore[index]
    out = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "json"}],
                                      response_format={"type": "json_object"})
    assert upstream.requests[-1]["response_format"] == {"type": "json_object"}
    assert json.loads(out.choices[0].message.content or "") == {"ok": True}

    # streaming: chunks pass through, usage only when asked, the trace has the whole reply and the upstream's usage
    stream = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "a b c"}],
                                         stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "teacher: a b c"
    assert all(c.usage is None for c in chunks) and upstream.requests[-1]["stream_options"]["include_usage"]
    trace = _trace(database, chunks[0].id.removeprefix("chatcmpl-"))
    assert trace.stream and trace.choices[0]["message"]["content"] == "teacher: a b c"
    assert trace.completion_tokens == 4 and trace.ttft_ms is not None and trace.cost_micro == 11 * 15 + 4 * 60
    stream = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}], stream=True,
                                         stream_options={"include_usage": True})
    assert [c.usage.completion_tokens for c in stream if c.usage] == [2]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("model", "stream", "status", "what"),
    [("rate", False, 429, "rate_limited"), ("boom", False, 500, "upstream_status"), ("slow", False, 504, "timeout"),
     ("refused", False, 502, "connection_refused"), ("cut", True, None, "stream_cut"),
     ("boom", True, 500, "upstream_status")],
)
def test_upstream_failures_reach_the_caller_in_openais_shape_and_leave_a_trace(
    client: TestClient, tenants: Tenants, database: Database, upstream: FakeUpstream, model: str, stream: bool,
    status: int | None, what: str,
) -> None:
    acme = tenants.acme
    upstream.server.slow_s = 1.0
    base = f"http://127.0.0.1:{_closed_port()}/v1" if model == "refused" else upstream.base_url
    spec = _spec(base, model, timeout_s=0.3, max_retries=0)
    assert _create(client, acme.owner, "support", spec, check_upstream=False).status_code == 201
    oai = _oai(client, acme.member)
    with pytest.raises(openai.APIError) as caught:
        if stream:
            list(oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "a b c"}],
                                             stream=True))
        else:
            oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "hi"}])
    err = caught.value
    assert KEY not in str(err) and KEY[:8] not in str(err)
    if status is not None:
        assert isinstance(err, openai.APIStatusError) and err.status_code == status
    if model == "rate":
        assert isinstance(err, openai.RateLimitError) and err.response.headers["retry-after"] == "7"
    traces = [t for t in _traces(database) if t.finish_reason == "error"]
    assert len(traces) == 1, [t.finish_reason for t in _traces(database)]
    trace = traces[0]
    assert trace.error is not None and trace.error["what"] == what and trace.upstream_id is not None
    assert trace.error["attempts"] == 1 and KEY not in json.dumps(trace.error)
    assert trace.id in str(err) or stream  # the caller can find the trace that says what happened
    if model == "cut":  # what arrived before the cut is kept
        assert trace.choices[0]["message"]["content"] == "teacher: a"
    assert _metric(client, "upstream_requests") == {("support", "primary", what): 1}
    assert _metric(client, "requests") == {}  # a failed call is not an answered request


def test_retries_are_bounded_and_a_recovered_call_is_one_trace(
    client: TestClient, tenants: Tenants, database: Database, upstream: FakeUpstream
) -> None:
    acme = tenants.acme
    assert _create(client, acme.owner, "support", _spec(upstream, "flaky", max_retries=1)).status_code == 201
    out = _oai(client, acme.member).chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].message.content == "teacher: x" and len(upstream.requests) == 2
    assert [t.finish_reason for t in _traces(database)] == ["stop"]
    # counted once, like a local request, with the upstream's token usage
    assert _metric(client, "upstream_requests") == {("support", "primary", "ok"): 1}
    assert _metric(client, "requests") == {("support", "stop"): 1}
    trace = _traces(database)[0]
    assert _metric(client, "prompt_tokens") == {("support",): trace.prompt_tokens} and trace.prompt_tokens > 0
    assert _metric(client, "e2e_request_latency_seconds") == {("support",): 1}


def test_bad_upstream_configuration_is_refused_naming_the_field_and_never_echoes_the_key(
    client: TestClient, tenants: Tenants, database: Database, upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = tenants.acme.owner
    cases = [
        (_spec("ftp://127.0.0.1/v1"), "upstream.base_url"),
        (_spec("file:///etc/passwd"), "upstream.base_url"),
        ({**_spec(upstream), "api_key": ""}, "upstream.api_key"),
        ({**_spec(upstream), "api_key": "   "}, "upstream.api_key"),
        (_spec(upstream, "missing"), "upstream.model"),
        ({**_spec(upstream), "api_key": KEY + "x"}, "upstream.api_key"),  # the upstream refuses the key
        (_spec(f"http://127.0.0.1:{_closed_port()}/v1"), "upstream.base_url"),
    ]
    for spec, param in cases:
        r = _create(client, owner, "support", spec)
        assert r.status_code == 400, (param, r.text)
        assert r.json()["error"]["param"] == param, r.text
        assert KEY not in r.text and KEY[:8] not in r.text
    r = client.post("/api/deployments", json={"name": "support", "canary": {"upstream": _spec(upstream, "missing"),
                                                                            "percent": 10}}, headers=auth(owner))
    assert r.status_code == 400 and r.json()["error"]["param"] == "canary.upstream.model"
    r = client.post("/api/deployments", json={"name": "support", "adapter": "x", "upstream": _spec(upstream)},
                    headers=auth(owner))
    assert r.status_code == 400 and r.json()["error"]["param"] == "upstream"
    monkeypatch.setenv("TEACHLOOP_UPSTREAM_KEY", "")
    client.app.state.serving._keys = None  # type: ignore[attr-defined]  # a server started without the setting
    r = _create(client, owner, "support", _spec(upstream))
    assert r.status_code == 400 and "TEACHLOOP_UPSTREAM_KEY" in r.text
    with database.session(write=False) as s:  # nothing was written by any refusal
        assert s.scalars(select(UpstreamEndpoint)).all() == []


def test_shadow_traffic_is_recorded_but_never_seen_and_the_canary_moves_from_upstream_to_adapter(
    client: TestClient, tenants: Tenants, database: Database, upstream: FakeUpstream, serving: Serving,
    tmp_path: Any, blobs: Any,
) -> None:
    from tests.unit.serve.test_serve_deployments import _publish

    acme = tenants.acme
    student = _publish(database, blobs, acme.org_id, tmp_path, "student: ")
    r = client.post("/api/deployments", json={
        "name": "support", "upstream": _spec(upstream), "shadow": {"adapter": student.ref, "percent": 100},
        "prices": {"teacher": PRICE, student.ref: {"prompt_per_1m": 1, "completion_per_1m": 2}},
    }, headers=auth(acme.owner))
    assert r.status_code == 201, r.text
    oai = _oai(client, acme.member)
    out = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "teacher: hi"  # the caller sees the primary (the upstream) only
    primary = out.id.removeprefix("chatcmpl-")
    deadline = time.time() + 10
    while not (shadows := [t for t in _traces(database) if t.arm == "shadow"]) and time.time() < deadline:
        time.sleep(0.05)
    assert len(shadows) == 1, "the shadow's answer is recorded"
    shadow = shadows[0]
    assert shadow.shadow_of == primary and shadow.adapter_version_id == student.id and shadow.upstream_id is None
    assert shadow.choices[0]["message"]["content"].startswith("student: ")
    assert shadow.cost_micro == shadow.prompt_tokens * 1 + shadow.completion_tokens * 2

    # canary: the owned adapter takes a share from the upstream arm, then everything, then rollback restores it
    patch = client.patch("/api/deployments/support", json={"canary": {"adapter": student.ref, "percent": 100},
                                                           "shadow": None}, headers=auth(acme.owner))
    assert patch.status_code == 200, patch.text
    out = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "hi"}], user="u")
    assert out.choices[0].message.content.startswith("student: ")  # type: ignore[union-attr]
    assert _trace(database, out.id.removeprefix("chatcmpl-")).arm == "canary"
    promoted = client.patch("/api/deployments/support", json={"adapter": student.ref, "canary": None},
                            headers=auth(acme.owner))
    assert promoted.status_code == 200 and promoted.json()["upstream"] is None
    assert oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "hi"}]
                                       ).choices[0].message.content.startswith("student: ")  # type: ignore[union-attr]
    back = client.post("/api/deployments/support/rollback", json={}, headers=auth(acme.owner))
    assert back.status_code == 200 and back.json()["upstream"]["model"] == "teacher"
    r = client.post("/api/deployments/support/rollback", json={"to_revision": 1}, headers=auth(acme.owner))
    assert r.status_code == 200 and r.json()["upstream"]["model"] == "teacher"
    out = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "again"}])
    assert out.choices[0].message.content == "teacher: again"


def test_other_endpoints_refuse_an_upstream_deployment_and_other_orgs_cannot_reach_it(
    client: TestClient, tenants: Tenants, upstream: FakeUpstream
) -> None:
    acme, globex = tenants.acme, tenants.globex
    assert _create(client, acme.owner, "support", _spec(upstream)).status_code == 201
    r = client.post("/v1/completions", json={"model": "support", "prompt": "hi"}, headers=auth(acme.member))
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = client.post("/v1/chat/completions", json={"model": "support", "messages": [{"role": "user", "content": "x"}]},
                    headers=auth(globex.member))
    assert r.status_code == 404
    assert len(upstream.requests) == 0


def test_cli_creates_and_switches_an_upstream_arm_with_the_key_from_the_environment(
    teachloop_home: Any, monkeypatch: pytest.MonkeyPatch, upstream: FakeUpstream
) -> None:
    from typer.testing import CliRunner

    from teachloop.cli.main import app
    from teachloop.core.settings import Settings

    runner = CliRunner()
    monkeypatch.setenv("TEACHLOOP_MODEL", "base-m")
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    monkeypatch.setenv("TEACHER_KEY", KEY)
    out = runner.invoke(app, ["deploy", "create", "support", "--upstream-url", upstream.base_url, "--upstream-model",
                              "teacher", "--upstream-key-env", "TEACHER_KEY", "--price", "teacher=15/60"])
    assert out.exit_code == 0, out.output
    assert "upstream" in out.output and "teacher" in out.output and KEY not in out.output
    bad = runner.invoke(app, ["deploy", "create", "other", "--upstream-url", upstream.base_url, "--upstream-model",
                              "missing", "--upstream-key-env", "TEACHER_KEY"])
    assert bad.exit_code != 0 and "upstream.model" in bad.output and KEY not in bad.output
    empty = runner.invoke(app, ["deploy", "create", "other", "--upstream-url", upstream.base_url, "--upstream-model",
                                "teacher", "--upstream-key-env", "UNSET_KEY_VAR"])
    assert empty.exit_code != 0 and "upstream.api_key" in empty.output
    out = runner.invoke(app, ["deploy", "update", "support", "--adapter", "base"])
    assert out.exit_code == 0 and "(base)" in out.output, out.output
    db = Database(Settings.from_env().database_url)
    try:
        with db.session(write=False) as s:
            rows = s.scalars(select(UpstreamEndpoint)).all()
            assert len(rows) == 1 and KEY not in rows[0].key_ciphertext
    finally:
        db.close()


def test_with_commit_first_off_the_answer_goes_out_first_and_the_trace_is_still_committed_in_the_request(
    client: TestClient, serving: Serving, tenants: Tenants, database: Database, upstream: FakeUpstream
) -> None:
    serving.config = replace(serving.config, upstream_commit_first=False)
    acme = tenants.acme
    assert _create(client, acme.owner, "support", _spec(upstream), prices={"teacher": PRICE}).status_code == 201
    oai = _oai(client, acme.member)
    out = oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "hello"}])
    assert out.choices[0].message.content == "teacher: hello"
    trace = _trace(database, out.id.removeprefix("chatcmpl-"))  # committed by the time the request ended
    assert trace.cost_micro == 11 * 15 + 3 * 60 and trace.error is None
    chunks = list(oai.chat.completions.create(model="support", messages=[{"role": "user", "content": "a b"}],
                                              stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "teacher: a b"
    # the client stops reading at [DONE], which may end the request before the queued trace's commit: it is
    # still committed, by the writer, moments later
    trace_id, deadline = chunks[0].id.removeprefix("chatcmpl-"), time.monotonic() + 10
    while time.monotonic() < deadline and not any(t.id == trace_id for t in _traces(database)):
        time.sleep(0.02)
    trace = _trace(database, trace_id)
    assert trace.stream and trace.finish_reason == "stop" and trace.choices[0]["message"]["content"] == "teacher: a b"
    assert len(_traces(database)) == 2 and serving.traces.stats().failures == 0

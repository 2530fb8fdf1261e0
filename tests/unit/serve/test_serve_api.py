"""The OpenAI-compatible API in process (echo engine): shapes, streaming, tools, logprobs, traces, bad input."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from teachloop.serve import Serving
from teachloop.store import Database
from teachloop.store.repos.traces import Traces
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import BASE, Tenants, auth

CHAT = "/v1/chat/completions"


def _body(text: str = "Hello there!", **extra: Any) -> dict[str, Any]:
    return {"model": BASE, "messages": [{"role": "user", "content": text}], **extra}


def _count(database: Database) -> int:
    with database.session(write=False) as s:
        return s.query(Trace).count()


def _sse(response: Any) -> list[Any]:
    events = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_a_completion_has_the_openai_shape_and_its_trace_is_stored(client: TestClient, tenants: Tenants,
                                                                   database: Database) -> None:
    r = client.post(CHAT, json=_body(user="u-1", metadata={"ticket": "42"}), headers=auth(tenants.acme.member))
    assert r.status_code == 200, r.text
    body = r.json()
    trace_id = r.headers["x-teachloop-trace-id"]
    assert body["id"] == f"chatcmpl-{trace_id}" and body["object"] == "chat.completion"
    assert body["model"] == BASE and body["system_fingerprint"] == "tl-base"
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello there!", "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    usage = body["usage"]
    assert usage["completion_tokens"] > 1 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    with database.session(write=False) as s:
        trace = Traces(s).get(tenants.acme.org_id, body["id"])
        assert trace.id == trace_id and trace.user == "u-1" and trace.request_metadata == {"ticket": "42"}
        assert trace.messages == [{"role": "user", "content": "Hello there!"}]
        assert trace.choices[0]["message"]["content"] == "Hello there!"
        assert trace.completion_tokens == usage["completion_tokens"] and trace.deployment_id is None
        assert trace.latency_ms > 0 and trace.finish_reason == "stop"


def test_n_max_tokens_stop_and_seed(client: TestClient, tenants: Tenants) -> None:
    h = auth(tenants.acme.member)
    r = client.post(CHAT, json=_body("one two three four", n=3, seed=7), headers=h).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in r["choices"]} == {"one two three four"}
    r = client.post(CHAT, json=_body("one two three four", max_tokens=2), headers=h).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 2
    r = client.post(CHAT, json=_body("one two three four", stop=["three"]), headers=h).json()
    assert r["choices"][0]["message"]["content"] == "one two " and r["choices"][0]["finish_reason"] == "stop"
    r = client.post(CHAT, json=_body("one two three four", max_completion_tokens=1), headers=h).json()
    assert r["usage"]["completion_tokens"] == 1


def test_logprobs_and_top_logprobs(client: TestClient, tenants: Tenants) -> None:
    r = client.post(CHAT, json=_body("Hi", logprobs=True, top_logprobs=2), headers=auth(tenants.acme.member)).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == "Hi"
    assert all(e["logprob"] == -0.25 and len(e["top_logprobs"]) == 2 for e in content)
    assert bytes(b for e in content for b in e["bytes"]).decode() == "Hi"


def test_streaming_sends_deltas_then_finish_usage_and_done(client: TestClient, tenants: Tenants,
                                                            database: Database) -> None:
    body = _body("How are you today?", stream=True, stream_options={"include_usage": True}, logprobs=True)
    r = client.post(CHAT, json=body, headers=auth(tenants.acme.member))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["id"] == f"chatcmpl-{r.headers['x-teachloop-trace-id']}" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "How are you today?"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finish] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    with database.session(write=False) as s:
        trace = Traces(s).get(tenants.acme.org_id, r.headers["x-teachloop-trace-id"])
        assert trace.stream and trace.ttft_ms is not None and trace.choices[0]["message"]["content"] == text


def test_streaming_holds_back_a_stop_string(client: TestClient, tenants: Tenants) -> None:
    r = client.post(CHAT, json=_body("abc STOP def", stream=True, stop="STOP"), headers=auth(tenants.acme.member))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in _sse(r)[:-1] if c["choices"])
    assert text == "abc "


def test_tool_calls_are_parsed(client: TestClient, tenants: Tenants) -> None:
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    r = client.post(CHAT, json=_body(call, tools=tools), headers=auth(tenants.acme.member)).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [tc] = choice["message"]["tool_calls"]
    assert tc["function"]["name"] == "get_weather" and json.loads(tc["function"]["arguments"]) == {"city": "Paris"}
    streamed = _sse(client.post(CHAT, json=_body(call, tools=tools, stream=True), headers=auth(tenants.acme.member)))
    deltas = [c["choices"][0]["delta"] for c in streamed[:-1] if c["choices"]]
    assert any("tool_calls" in d for d in deltas)
    assert streamed[-2]["choices"][0]["finish_reason"] == "tool_calls"
    # tool_choice none: the model sees no tools and the reply stays text
    r = client.post(CHAT, json=_body(call, tools=tools, tool_choice="none"), headers=auth(tenants.acme.member)).json()
    assert r["choices"][0]["message"]["content"] == call and "tool_calls" not in r["choices"][0]["message"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": BASE, "messages": []}, 400, "messages"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "n": 0}, 400, "n"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "n": 9}, 400, "n"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, "max_tokens"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, 400, "max_tokens"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "top_logprobs"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "bogus": 1}, 400, "bogus"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, 400, "stop"),
        ({"model": BASE, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
        ({"model": BASE, "messages": [{"role": "user"}]}, 400, "messages.0.content"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}, 400, "logit_bias"),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": BASE, "messages": [{"role": "user", "content": "word " * 2000}]}, 413, "messages"),
    ],
)
def test_bad_requests_are_refused_precisely_and_write_no_trace(
    client: TestClient, tenants: Tenants, database: Database, body: dict[str, Any], status: int, param: str
) -> None:
    r = client.post(CHAT, json=body, headers=auth(tenants.acme.member))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    if status == 404:
        assert error["code"] == "model_not_found"
    if status == 413:
        assert error["code"] == "context_length_exceeded"
    assert _count(database) == 0
    assert client.post(CHAT, json=_body(), headers=auth(tenants.acme.member)).status_code == 200


def test_malformed_json_and_missing_or_revoked_keys(client: TestClient, tenants: Tenants, database: Database) -> None:
    r = client.post(CHAT, content=b"{not json", headers={**auth(tenants.acme.member), "content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    assert client.post(CHAT, json=_body()).status_code == 401
    assert client.post(CHAT, json=_body(), headers=auth("tl_" + "a" * 12 + "_" + "b" * 52)).status_code == 401
    from teachloop.store import ApiKeys

    with database.session() as s:
        key = ApiKeys(s).authenticate(tenants.acme.member)
        ApiKeys(s).revoke(tenants.acme.org_id, key.key_id)
    r = client.post(CHAT, json=_body(), headers=auth(tenants.acme.member))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _count(database) == 0


def test_viewers_read_but_cannot_call(client: TestClient, tenants: Tenants) -> None:
    r = client.post(CHAT, json=_body(), headers=auth(tenants.acme.viewer))
    assert r.status_code == 403
    assert client.get("/v1/models", headers=auth(tenants.acme.viewer)).status_code == 200


def test_models_lists_the_base_model(client: TestClient, tenants: Tenants) -> None:
    r = client.get("/v1/models", headers=auth(tenants.acme.member)).json()
    assert r["object"] == "list" and [m["id"] for m in r["data"]] == [BASE]
    assert client.get(f"/v1/models/{BASE}", headers=auth(tenants.acme.member)).json()["id"] == BASE
    missing = client.get("/v1/models/other", headers=auth(tenants.acme.member))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_full_queue_is_refused_with_503_and_others_keep_working(
    client: TestClient, tenants: Tenants, serving: Serving
) -> None:
    assert serving.scheduler is not None
    serving.scheduler.stop()
    r = client.post(CHAT, json=_body(), headers=auth(tenants.acme.member))
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"


def test_stats_show_the_callers_organisation_only(client: TestClient, tenants: Tenants, serving: Serving) -> None:
    acme, globex = tenants.acme, tenants.globex

    def stats(key: str) -> dict[str, Any]:
        r = client.get("/api/serving/stats", headers=auth(key))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    usage = client.post(CHAT, json=_body("one two three"), headers=auth(acme.member)).json()["usage"]
    mine = stats(acme.viewer)
    assert mine["running"] and mine["model"] == BASE and mine["org_id"] == acme.org_id
    assert mine["requests"] == {"in_flight": 0, "completed": 1, "failed": 0}
    assert (mine["tokens"]["prompt"], mine["tokens"]["completion"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert mine["tokens"]["completion_per_s"] > 0 and mine["traces"] == {"written": 1}
    # globex's traffic -- answered, refused, streamed and abandoned -- changes nothing acme can see
    before = stats(acme.viewer)
    assert stats(globex.viewer)["requests"] == {"in_flight": 0, "completed": 0, "failed": 0}
    for i in range(3):
        assert client.post(CHAT, json=_body(f"secret {i}"), headers=auth(globex.member)).status_code == 200
    assert client.post(CHAT, json=_body("x", n=0), headers=auth(globex.member)).status_code == 400
    assert client.post(CHAT, json=_body("a b", stream=True), headers=auth(globex.member)).status_code == 200
    with client.stream("POST", CHAT, json=_body("left early", stream=True), headers=auth(globex.member)) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 5
    while stats(globex.viewer)["requests"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    theirs = stats(globex.viewer)
    assert theirs["requests"]["completed"] >= 4 and theirs["traces"]["written"] >= 4
    assert theirs["org_id"] == globex.org_id and theirs["requests"]["in_flight"] == 0
    after = stats(acme.viewer)
    assert after == before, (before, after)
    assert "globex" not in json.dumps(after) and globex.org_id not in json.dumps(after)
    # and nothing server-wide is shown to anyone
    assert not {"scheduler", "adapters", "queued", "active_rows"} & set(after)


def test_streaming_several_choices(client: TestClient, tenants: Tenants) -> None:
    r = client.post(CHAT, json=_body("one two", stream=True, n=2), headers=auth(tenants.acme.member))
    chunks = _sse(r)[:-1]
    texts = {0: "", 1: ""}
    for c in chunks:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == {0: "one two", 1: "one two"}
    assert sorted(ch["index"] for ch in chunks[-1]["choices"] if ch["finish_reason"] == "stop") == [0, 1]

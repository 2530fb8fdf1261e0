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
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 101}}, 400, "logit_bias"),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": BASE, "messages": [{"role": "user", "content": "word " * 2000}]}, 413, "messages"),
        # wrong types, missing fields, out of range
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": BASE, "messages": "hi"}, 400, "messages"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "n": "two"}, 400, "n"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "n": 1.5}, 400, "n"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "n": 129}, 400, "n"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400, "max_completion_tokens"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 6}, 400, "max_completion_tokens"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}, 400, "top_p"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "seed": "abc"}, 400, "seed"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "stop": 5}, 400, "stop"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "metadata": {"k": 1}}, 400, "metadata.k"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "user": "u" * 300}, 400, "user"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "tools": "calc"}, 400, "tools"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": "x"}, 400,
         "parallel_tool_calls"),
        ({"model": BASE, "messages": [{"role": "tool", "content": "4"}]}, 400, "messages.0.tool_call_id"),
        # refused before a stream starts: a plain JSON error, not an event stream
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}], "stream": True}, 404, "model"),
        ({"model": BASE, "messages": [{"role": "user", "content": "word " * 2000}], "stream": True}, 413, "messages"),
        ({"model": BASE, "messages": [{"role": "user", "content": "x"}], "stream": True, "n": 9}, 400, "n"),
    ],
)
def test_bad_requests_are_refused_precisely_and_write_no_trace(
    client: TestClient, tenants: Tenants, database: Database, serving: Serving, body: dict[str, Any], status: int,
    param: str,
) -> None:
    r = client.post(CHAT, json=body, headers=auth(tenants.acme.member))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and "x-teachloop-trace-id" not in r.headers
    assert set(r.json()) == {"error"}
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert param.split(".")[0] in error["message"], error  # the message names the parameter too
    if status == 404:
        assert error["code"] == "model_not_found"
    if status == 413:
        assert error["code"] == "context_length_exceeded"
    assert _count(database) == 0
    usage = serving.usage.of(tenants.acme.org_id)  # never reached the scheduler
    assert (usage.in_flight, usage.completed, usage.failed) == (0, 0, 0)
    assert client.post(CHAT, json=_body(), headers=auth(tenants.acme.member)).status_code == 200


def test_a_body_that_is_not_a_json_object_is_refused(client: TestClient, tenants: Tenants, database: Database) -> None:
    headers = {**auth(tenants.acme.member), "content-type": "application/json"}
    for content in (b"[1, 2]", b'"hello"', b"null", b"", b'{"model": "tiny-base", "messages": [}'):
        r = client.post(CHAT, content=content, headers=headers)
        assert r.status_code == 400, (content, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = client.post(CHAT, content=json.dumps(_body()).encode(), headers={**auth(tenants.acme.member),
                                                                        "content-type": "text/plain"})
    assert r.status_code == 400 and "request body" in r.json()["error"]["message"]
    assert _count(database) == 0
    assert client.post(CHAT, json=_body(), headers=auth(tenants.acme.member)).status_code == 200


def test_malformed_json_and_missing_or_revoked_keys(client: TestClient, tenants: Tenants, database: Database,
                                                   serving: Serving) -> None:
    as_json = {"content-type": "application/json"}
    r = client.post(CHAT, content=b"{not json", headers={**auth(tenants.acme.member), **as_json})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("malformed JSON body: ")
    # without a valid key it is 401 whatever the body: the key is checked before the body is read
    for headers in ({}, auth("tl_" + "a" * 12 + "_" + "b" * 52), {"Authorization": "Basic x"}):
        for content in (b"{not json", json.dumps(_body()).encode(), b"x" * (1024 * 1024)):
            r = client.post(CHAT, content=content, headers={**headers, **as_json})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    from teachloop.store import ApiKeys

    with database.session() as s:
        key = ApiKeys(s).authenticate(tenants.acme.member)
        ApiKeys(s).revoke(tenants.acme.org_id, key.key_id)
    r = client.post(CHAT, json=_body(), headers=auth(tenants.acme.member))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "revoked" in r.json()["error"]["message"]
    assert _count(database) == 0 and serving.usage.of(tenants.acme.org_id).completed == 0
    # the organisation's other keys, and the server, keep working
    assert client.post(CHAT, json=_body(), headers=auth(tenants.acme.owner)).status_code == 200
    assert _count(database) == 1


def test_an_oversized_body_is_413_and_writes_nothing(client: TestClient, tenants: Tenants, database: Database,
                                                    settings: Any) -> None:
    limit = settings.max_body_bytes
    huge = _body("word " * (limit // 5 + 10))
    r = client.post(CHAT, json=huge, headers=auth(tenants.acme.member))
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "request_too_large" and str(limit) in error["message"]
    assert "TEACHLOOP_MAX_BODY_BYTES" in error["message"]
    chunks = iter([json.dumps(huge).encode()[i : i + 4096] for i in range(0, len(json.dumps(huge)), 4096)])
    r = client.post(CHAT, content=chunks, headers={**auth(tenants.acme.member), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # the REST API too: no deployment, no feedback
    r = client.post("/api/deployments", json={"name": "big", "adapter": "x" * limit}, headers=auth(tenants.acme.owner))
    assert r.status_code == 413
    assert client.get("/api/deployments", headers=auth(tenants.acme.owner)).json()["data"] == []
    trace_id = client.post(CHAT, json=_body(), headers=auth(tenants.acme.member)).headers["x-teachloop-trace-id"]
    r = client.post(f"/api/traces/{trace_id}/feedback", json={"comment": "c" * limit},
                    headers=auth(tenants.acme.member))
    assert r.status_code == 413
    assert client.get(f"/api/traces/{trace_id}/feedback", headers=auth(tenants.acme.member)).json()["data"] == []
    assert _count(database) == 1


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

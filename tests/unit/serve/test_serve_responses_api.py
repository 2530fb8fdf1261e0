"""The Responses API: input items <-> chat messages (pure), and ``/v1/responses`` in process on the echo engine.

(Named apart from ``tests/integration/test_serve_responses.py``: test modules share one namespace.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from teachloop.core.chat import Message, ToolCall
from teachloop.core.errors import InvalidInput
from teachloop.serve import Serving
from teachloop.serve.responses import (
    ResponseCreate,
    input_messages,
    message_of,
    output_items,
    parse_items,
    to_chat_input,
)
from teachloop.store import Database
from teachloop.store.repos.traces import Traces
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import BASE, Tenants, auth

URL = "/v1/responses"
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True}]


def _messages(raw: Any, history: list[Message] | None = None) -> list[dict[str, Any]]:
    return [m.to_openai() for m in input_messages(parse_items(raw), history or [])]


# ---------------------------------------------------------------------------------------------- conversion


def test_a_string_is_one_user_message() -> None:
    assert _messages("hi") == [{"role": "user", "content": "hi"}]


def test_items_become_chat_messages() -> None:
    items = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_text", "text": "b"}]},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": [], "logprobs": []}]},
        {"id": "fc_1", "type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x": 1}',
         "status": "completed"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
        {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},  # no text before: its own turn
    ]
    assert _messages(items) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ]},
        {"role": "tool", "content": "one", "tool_call_id": "c1"},
        {"role": "tool", "content": "two", "tool_call_id": "c2"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    ]


def test_a_function_call_output_must_answer_an_earlier_call() -> None:
    answer = [{"type": "function_call_output", "call_id": "c9", "output": "4"}]
    with pytest.raises(InvalidInput) as err:
        _messages(answer)
    assert err.value.param == "input.0.call_id" and "c9" in err.value.message
    earlier = [Message(role="assistant", tool_calls=(ToolCall(id="c9", name="f"),))]
    assert _messages(answer, earlier) == [{"role": "tool", "content": "4", "tool_call_id": "c9"}]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ([], "input"),
        ([{"role": "user"}], "input.0.content"),
        ([{"role": "robot", "content": "x"}], "input.0.role"),
        (["hi"], "input.0.type"),
        ([{"role": "user", "content": "x"}, {"type": "reasoning", "summary": []}], "input.1.type"),
        ([{"type": "item_reference", "id": "msg_1"}], "input.0.type"),
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "input.0.content.0.type"),
        ([{"role": "user", "content": [{"type": "input_text"}]}], "input.0.content.0.text"),
        ([{"role": "user", "content": [{"type": "output_text", "text": "x"}]}], "input.0.content.0.type"),
        ([{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}], "input.0.content.0.type"),
        ([{"role": "user", "content": 5}], "input.0.content"),
        ([{"role": "user", "content": "x", "name": "bob"}], "input.0.name"),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input.0.call_id"),
        ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}], "input.0.arguments"),
        ([{"type": "function_call_output", "call_id": "c", "output": 5}], "input.0.output"),
    ],
)
def test_bad_items_name_the_field(raw: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as err:
        _messages(raw)
    assert err.value.param == param, err.value.message
    assert err.value.message.startswith(param.split(".type")[0])


def test_output_items_of_a_reply() -> None:
    text = output_items("tr_x", Message(role="assistant", content="hi"), "stop")
    assert text == [{"id": "msg_tr_x", "type": "message", "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]}]
    assert output_items("tr_x", Message(role="assistant", content="hi"), "length")[0]["status"] == "incomplete"
    calls = (ToolCall(id="call_a", name="f", arguments='{"x": 1}'), ToolCall(id="call_b", name="g"))
    only_calls = output_items("tr_x", Message(role="assistant", tool_calls=calls), "tool_calls")
    assert [(i["type"], i["id"], i["call_id"], i["name"]) for i in only_calls] == [
        ("function_call", "fc_tr_x_0", "call_a", "f"), ("function_call", "fc_tr_x_1", "call_b", "g")]
    both = output_items("tr_x", Message(role="assistant", content="Calling.", tool_calls=calls[:1]), "tool_calls")
    assert [i["type"] for i in both] == ["message", "function_call"]
    # what a client passes back is the conversation it came from
    passed_back = [{k: v for k, v in i.items()} for i in both]
    assert input_messages(parse_items(passed_back)) == [
        Message(role="assistant", content="Calling.", tool_calls=calls[:1])]


def test_stored_messages_read_back_unchanged() -> None:
    for m in (Message(role="user", content="x"), Message(role="tool", content="4", tool_call_id="c"),
              Message(role="assistant", content="", tool_calls=(ToolCall(id="c", name="f", arguments="{}"),))):
        assert message_of(m.to_openai()) == m


def test_request_fields_map_to_the_chat_input() -> None:
    fields = {
        "model": BASE, "input": "x", "instructions": "Be brief.", "max_output_tokens": 7, "temperature": 0,
        "tools": TOOLS, "tool_choice": "required", "store": False, "metadata": {"a": "b"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
    }
    chat = to_chat_input(ResponseCreate.model_validate(fields))
    assert [m.role for m in chat.messages] == ["system", "user"] and chat.messages[0].content == "Be brief."
    assert chat.max_tokens == 7 and chat.max_tokens_param == "max_output_tokens" and chat.temperature == 0
    assert chat.tool_choice == "required" and chat.tools is not None and chat.tools[0].name == "get_weather"
    assert chat.response_format == {"type": "json_schema",
                                    "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}
    assert chat.trace_params["api"] == "responses" and chat.trace_params["store"] is False
    named = {**fields, "tool_choice": {"type": "function", "name": "get_weather"}}
    assert to_chat_input(ResponseCreate.model_validate(named)).tool_choice == {"name": "get_weather"}
    assert to_chat_input(ResponseCreate.model_validate({**fields, "tool_choice": "none"})).tools is None
    json_object = ResponseCreate.model_validate({"model": BASE, "input": "x", "text": {"format": {"type": "json_object"}}})
    assert to_chat_input(json_object).response_format == {"type": "json_object"}
    assert to_chat_input(ResponseCreate.model_validate(fields)).parallel_tool_calls  # unset: True, as OpenAI's
    single = to_chat_input(ResponseCreate.model_validate({**fields, "parallel_tool_calls": False}))
    assert single.parallel_tool_calls is False and single.trace_params["parallel_tool_calls"] is False


# ---------------------------------------------------------------------------------------------- over HTTP


def _count(database: Database) -> int:
    with database.session(write=False) as s:
        return s.query(Trace).count()


def _events(response: Any) -> list[dict[str, Any]]:
    out = []
    for block in response.text.strip().split("\n\n"):
        kind, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        out.append(event)
    return out


def _text(body: dict[str, Any]) -> str:
    return "".join(p["text"] for i in body["output"] if i["type"] == "message" for p in i["content"])


def test_a_response_is_a_trace(client: TestClient, tenants: Tenants, database: Database) -> None:
    r = client.post(URL, json={"model": BASE, "input": "Hello there!", "instructions": "Be nice.", "user": "u",
                               "metadata": {"ticket": "42"}}, headers=auth(tenants.acme.member))
    assert r.status_code == 200, r.text
    body, trace_id = r.json(), r.headers["x-teachloop-trace-id"]
    assert body["id"] == f"resp_{trace_id}" and body["object"] == "response" and body["status"] == "completed"
    assert _text(body) == "Hello there!" and body["instructions"] == "Be nice." and body["store"] is True
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"]
    with database.session(write=False) as s:
        trace = Traces(s).get(tenants.acme.org_id, body["id"])
        assert trace.messages == [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hello there!"}]
        assert trace.params["api"] == "responses" and trace.request_metadata == {"ticket": "42"}
        assert trace.completion_tokens == body["usage"]["output_tokens"]
    got = client.get(f"{URL}/{body['id']}", headers=auth(tenants.acme.viewer))
    assert got.status_code == 200 and got.json() == body
    fb = client.post(f"/api/traces/{body['id']}/feedback", json={"score": 1.0, "label": "good"},
                     headers=auth(tenants.acme.member))
    assert fb.status_code == 201 and fb.json()["trace_id"] == trace_id


def test_previous_response_id_continues_the_conversation(client: TestClient, tenants: Tenants,
                                                         database: Database) -> None:
    h = auth(tenants.acme.member)
    first = client.post(URL, json={"model": BASE, "input": "one", "instructions": "Only for turn one."}, headers=h)
    second = client.post(URL, json={"model": BASE, "input": [{"role": "user", "content": "two"}],
                                    "previous_response_id": first.json()["id"]}, headers=h)
    assert second.status_code == 200, second.text
    assert second.json()["previous_response_id"] == first.json()["id"] and second.json()["instructions"] is None
    with database.session(write=False) as s:
        trace = Traces(s).get(tenants.acme.org_id, second.json()["id"])
        assert trace.messages == [{"role": "user", "content": "one"}, {"role": "assistant", "content": "one"},
                                  {"role": "user", "content": "two"}]
    before = _count(database)
    for key, previous in ((tenants.globex.member, first.json()["id"]), (tenants.acme.member, "resp_tr_nope"),
                          (tenants.acme.member, "nope")):
        r = client.post(URL, json={"model": BASE, "input": "x", "previous_response_id": previous}, headers=auth(key))
        assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id", r.text
        assert "previous_response_id" in r.json()["error"]["message"]
    assert _count(database) == before


def test_get_and_delete(client: TestClient, tenants: Tenants) -> None:
    h = auth(tenants.acme.member)
    rid = client.post(URL, json={"model": BASE, "input": "keep"}, headers=h).json()["id"]
    assert client.get(f"{URL}/{rid}", headers=auth(tenants.globex.member)).status_code == 404
    assert client.delete(f"{URL}/{rid}", headers=auth(tenants.globex.member)).status_code == 404
    assert client.delete(f"{URL}/{rid}", headers=auth(tenants.acme.viewer)).status_code == 403
    assert client.delete(f"{URL}/{rid}", headers=h).json() == {"id": rid, "object": "response", "deleted": True}
    for r in (client.get(f"{URL}/{rid}", headers=h), client.delete(f"{URL}/{rid}", headers=h),
              client.post(URL, json={"model": BASE, "input": "x", "previous_response_id": rid}, headers=h)):
        assert r.status_code == 404, r.text
    assert client.get(f"/api/traces/{rid}", headers=h).status_code == 200  # the trace itself stays
    unstored = client.post(URL, json={"model": BASE, "input": "x", "store": False}, headers=h).json()
    assert unstored["store"] is False and client.get(f"{URL}/{unstored['id']}", headers=h).status_code == 404
    chat = client.post("/v1/chat/completions", json={"model": BASE, "messages": [{"role": "user", "content": "x"}]},
                       headers=h)
    as_response = "resp_" + chat.headers["x-teachloop-trace-id"]
    assert client.get(f"{URL}/{as_response}", headers=h).status_code == 404  # a chat completion is no response


def test_streaming_events_in_order(client: TestClient, tenants: Tenants) -> None:
    h = auth(tenants.acme.member)
    r = client.post(URL, json={"model": BASE, "input": "Tell me about Paris", "stream": True}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * len(deltas),
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert len(deltas) > 1 and "".join(deltas) == "Tell me about Paris"
    final = events[-1]["response"]
    assert _text(final) == "".join(deltas) == events[-4]["text"]
    assert final["id"] == f"resp_{r.headers['x-teachloop-trace-id']}"
    assert client.get(f"{URL}/{final['id']}", headers=h).json() == final
    cut = _events(client.post(URL, json={"model": BASE, "input": "a b c d e f g", "stream": True,
                                         "max_output_tokens": 2}, headers=h))
    assert cut[-1]["type"] == "response.incomplete" and cut[-1]["response"]["incomplete_details"] == {
        "reason": "max_output_tokens"}


def test_function_calls_come_out_as_items_and_events(client: TestClient, tenants: Tenants) -> None:
    h = auth(tenants.acme.member)
    body = client.post(URL, json={"model": BASE, "input": CALL, "tools": TOOLS}, headers=h).json()
    [call] = body["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"} and body["tools"][0]["strict"] is True
    events = _events(client.post(URL, json={"model": BASE, "input": CALL, "tools": TOOLS, "stream": True}, headers=h))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert events[4]["arguments"] == events[3]["delta"] == events[-1]["response"]["output"][0]["arguments"]
    # the client answers the call; the next turn sees call and answer
    answer = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    follow = client.post(URL, json={"model": BASE, "input": [answer], "previous_response_id": body["id"],
                                    "tools": TOOLS}, headers=h)
    assert follow.status_code == 200, follow.text
    with_history = client.post(URL, json={"model": BASE, "input": [{"role": "user", "content": CALL}, call, answer],
                                          "tools": TOOLS}, headers=h)
    assert with_history.status_code == 200, with_history.text


def test_parallel_tool_calls_false_is_echoed_and_constrains_the_job(client: TestClient, tenants: Tenants,
                                                                      engine: Any) -> None:
    loose = [{**TOOLS[0], "strict": False}]
    single = client.post(URL, json={"model": BASE, "input": CALL, "tools": loose, "parallel_tool_calls": False},
                         headers=auth(tenants.acme.member))
    assert single.status_code == 200, single.text
    assert single.json()["parallel_tool_calls"] is False and single.json()["output"][0]["type"] == "function_call"
    default = client.post(URL, json={"model": BASE, "input": CALL, "tools": loose}, headers=auth(tenants.acme.member))
    assert default.json()["parallel_tool_calls"] is True
    one_call, free = (job for [(job, _)] in engine.prefills)
    assert one_call.constraint is not None and free.constraint is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"bogus": 1}, "bogus"),
        ({"input": 5}, "input"),
        ({"input": [{"type": "reasoning"}]}, "input.0.type"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input.0.call_id"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": 10**6}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"parallel_tool_calls": "x"}, "parallel_tool_calls"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools.0.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "other"}}, "tool_choice.name"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"format": {"type": "text", "name": "x"}}}, "text.format.name"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 5}}}}, "text.format"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"previous_response_id": "resp_tr_01m94ep86338p3qxwh1esn1q5w"}, "previous_response_id"),
        ({"stream": True, "model": "nope"}, "model"),
    ],
)
def test_bad_requests_are_refused_precisely_and_write_no_trace(
    client: TestClient, tenants: Tenants, database: Database, serving: Serving, extra: dict[str, Any], param: str
) -> None:
    r = client.post(URL, json={"model": BASE, "input": "x", **extra}, headers=auth(tenants.acme.member))
    assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/json", r.text
    error = r.json()["error"]
    assert error["param"] == param and param.split(".")[0] in error["message"], error
    assert _count(database) == 0 and "x-teachloop-trace-id" not in r.headers
    usage = serving.usage.of(tenants.acme.org_id)
    assert (usage.in_flight, usage.completed, usage.failed) == (0, 0, 0)


def test_the_openapi_document_describes_the_bodies(client: TestClient, tenants: Tenants) -> None:
    doc = client.get("/api/openapi.json", headers=auth(tenants.acme.viewer)).json()
    post = doc["paths"]["/v1/responses"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ResponseCreate")
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ResponseObject")
    create = doc["components"]["schemas"]["ResponseCreate"]["properties"]
    items = create["input"]["anyOf"][1]["items"]
    assert {"message", "function_call", "function_call_output"} <= set(json.dumps(items).split('"')) and "$ref" not in (
        json.dumps(items))
    assert set(doc["paths"]["/v1/responses/{response_id}"]) == {"get", "delete"}

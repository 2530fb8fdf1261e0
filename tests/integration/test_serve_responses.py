"""The Responses API through the official ``openai`` client and the OpenAI Agents SDK, over real HTTP.

The server (``_start`` of ``test_serve_openai``: uvicorn in this process, the torch engine)
runs the tiny random Llama for the protocol tests -- greedy decoding makes its replies
deterministic, so two requests that render the same prompt must get the same text -- and
SmolLM2-135M-Instruct in the ``model``-marked tests, where a real reply matters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from teachloop.store.repos.traces import Traces
from teachloop.store.schema.traces import Trace
from tests._tiny import tiny_llama
from tests.integration.test_serve_openai import Server, _start

ASK: dict[str, Any] = {"model": "tiny", "max_output_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve-responses")
    yield from _start(tmp, tiny_llama(tmp), "tiny")


@pytest.fixture(scope="module")
def smol(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from teachloop.core.settings import DEFAULT_MODEL

    yield from _start(tmp_path_factory.mktemp("serve-responses-smol"), default_model_dir, DEFAULT_MODEL)


def _client(server: Server, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key or server.key, max_retries=0)


def _traces(server: Server) -> int:
    with server.database.session(write=False) as s:
        return s.query(Trace).count()


def test_string_input_items_input_and_instructions(tiny: Server) -> None:
    client = _client(tiny)
    raw = client.responses.with_raw_response.create(input="Hello there!", instructions="Be brief.", **ASK)
    response = raw.parse()
    assert response.id == f"resp_{raw.headers['x-teachloop-trace-id']}" and response.status in ("completed", "incomplete")
    assert response.output_text and response.usage is not None and 1 <= response.usage.output_tokens <= 8
    assert response.instructions == "Be brief."
    with tiny.database.session(write=False) as s:
        trace = Traces(s).get(tiny.org_id, response.id)
        assert trace.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}]
        assert trace.choices[0]["message"]["content"] == response.output_text
    # the same prompt written as items renders the same tokens, so greedy decoding gives the same text
    items = client.responses.create(input=[
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there!"}]},
    ], **ASK)
    assert items.output_text == response.output_text and items.instructions is None


def test_previous_response_id_sees_the_first_turn(tiny: Server) -> None:
    client = _client(tiny)
    first = client.responses.create(input="Hi!", instructions="Turn one only.", **ASK)
    second = client.responses.create(input="And then?", previous_response_id=first.id, **ASK)
    assert second.previous_response_id == first.id
    with tiny.database.session(write=False) as s:
        trace = Traces(s).get(tiny.org_id, second.id)
        assert trace.messages == [{"role": "user", "content": "Hi!"},
                                  {"role": "assistant", "content": first.output_text},
                                  {"role": "user", "content": "And then?"}]
    spelled_out = client.responses.create(input=[
        {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And then?"}], **ASK)
    assert spelled_out.output_text == second.output_text


def test_text_format_json_schema_constrains_the_reply(tiny: Server) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "verdict", "schema": schema, "strict": True}
    response = _client(tiny).responses.create(input="Is water wet?", text={"format": fmt},  # type: ignore[arg-type]
                                              model="tiny", max_output_tokens=32, temperature=1.0)
    assert response.status == "completed" and set(json.loads(response.output_text)) == {"ok"}
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]


def test_another_organisations_response_cannot_be_continued_or_read(tiny: Server) -> None:
    mine = _client(tiny).responses.create(input="secret", **ASK)
    theirs = _client(tiny, tiny.other_key)
    before = _traces(tiny)
    with pytest.raises(openai.NotFoundError) as refused:
        theirs.responses.create(input="what did they say?", previous_response_id=mine.id, **ASK)
    assert refused.value.param == "previous_response_id"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.BadRequestError) as bad:
        theirs.responses.create(input="x", reasoning={"effort": "high"}, **ASK)
    assert bad.value.param == "reasoning"  # type: ignore[attr-defined]
    assert _traces(tiny) == before


def test_streaming_events_and_deltas(tiny: Server) -> None:
    client = _client(tiny)
    whole = client.responses.create(input="Tell me about Paris", max_output_tokens=12, model="tiny", temperature=0)
    events = list(client.responses.create(input="Tell me about Paris", max_output_tokens=12, model="tiny",
                                          temperature=0, stream=True))
    kinds = [e.type for e in events]
    n = kinds.count("response.output_text.delta")
    done = "response.completed" if whole.status == "completed" else "response.incomplete"
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * n, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", done]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert n >= 2 and deltas == final.output_text == whole.output_text
    # the SDK's stream helper accumulates every event into its snapshot (it raises on one out of place)
    with client.responses.stream(input="Tell me about Paris", max_output_tokens=12, model="tiny",
                                 temperature=0) as stream:
        seen = list(stream)
    texts = [e.text for e in seen if e.type == "response.output_text.done"]  # type: ignore[union-attr]
    assert texts == [whole.output_text] and seen[-1].response.output_text == whole.output_text  # type: ignore[union-attr]


def test_get_delete_trace_and_feedback(tiny: Server) -> None:
    client = _client(tiny)
    response = client.responses.create(input="Remember me", metadata={"app": "test"}, **ASK)
    got = client.responses.retrieve(response.id)
    assert got.model_dump() == response.model_dump()
    rest = tiny.url.removesuffix("/v1") + "/api"
    headers = {"Authorization": f"Bearer {tiny.key}"}
    r = httpx.post(f"{rest}/traces/{response.id}/feedback", json={"score": 0.0, "corrected_output": "Fine."},
                   headers=headers)
    assert r.status_code == 201, r.text
    trace = httpx.get(f"{rest}/traces/{response.id}", headers=headers).json()
    assert trace["metadata"] == {"app": "test"} and [f["score"] for f in trace["feedback"]] == [0.0]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(input="more", previous_response_id=response.id, **ASK)


@pytest.mark.model
def test_default_model_answers_through_the_responses_api(smol: Server) -> None:
    from teachloop.core.settings import DEFAULT_MODEL

    client = _client(smol)
    ask = {"model": DEFAULT_MODEL, "temperature": 0, "max_output_tokens": 16,
           "input": "What is the capital of France? Answer in one word."}
    whole = client.responses.create(**ask)  # type: ignore[call-overload]
    assert "paris" in whole.output_text.lower(), whole.output_text
    streamed = client.responses.create(stream=True, **ask)  # type: ignore[call-overload]
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == whole.output_text


@pytest.mark.model
def test_an_agents_sdk_agent_calls_a_tool_and_finishes(smol: Server) -> None:
    """An OpenAI Agents SDK agent on ``OpenAIResponsesModel``: forced to call its tool once, then it answers."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    from teachloop.core.settings import DEFAULT_MODEL

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"It is sunny and 21 degrees in {city}."

    async def run() -> Any:
        client = openai.AsyncOpenAI(base_url=smol.url, api_key=smol.key, max_retries=0)
        agent = Agent(
            name="weather", instructions="You answer questions about the weather. Use the tools.",
            tools=[get_weather], model=OpenAIResponsesModel(model=DEFAULT_MODEL, openai_client=client),
            model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=64),
        )
        try:
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
        finally:
            await client.close()

    with smol.database.session(write=False) as s:
        seen = {t.id for t in s.query(Trace)}
    result = asyncio.run(run())
    assert calls and all(isinstance(c, str) and c for c in calls), calls
    made = [i.raw_item for i in result.new_items if i.type == "tool_call_item"]
    assert [json.loads(m.arguments) for m in made] == [{"city": c} for c in calls]  # type: ignore[union-attr]
    assert isinstance(result.final_output, str) and result.final_output.strip()
    with smol.database.session(write=False) as s:
        traces = sorted((t for t in s.query(Trace) if t.id not in seen), key=lambda t: t.created_at)
    # one trace per model call: the forced call (one or more tool calls; the SDK then resets tool_choice),
    # then the answer that sees the tool's output
    assert len(traces) == 2 and traces[0].params["tool_choice"] == "required"
    assert len(traces[0].choices[0]["message"]["tool_calls"]) == len(calls)
    assert "tool_choice" not in traces[1].params and not traces[1].choices[0]["message"].get("tool_calls")
    assert [m["role"] for m in traces[1].messages][-len(calls) - 1:] == ["assistant", *["tool"] * len(calls)]
    assert traces[1].choices[0]["message"]["content"] == result.final_output

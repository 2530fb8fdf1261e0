"""Structured outputs over real HTTP: the official ``openai`` client against SmolLM2-135M-Instruct.

``response_format`` (json_object, json_schema), forced tool choices and ``parallel_tool_calls:
false`` (at most one call) are decoded under llguidance grammars (``serve.grammar``), so
whatever this small model would have written, the reply parses and validates -- alone,
streamed, and in batches that mix constrained and free requests. A schema the grammar
library cannot enforce is a 400 naming the parameter, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from teachloop.core.settings import DEFAULT_MODEL
from teachloop.store.schema.traces import Trace
from tests.integration.test_serve_openai import Server, _client, _start

pytestmark = pytest.mark.model

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
        "is_capital": {"type": "boolean"},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
    },
    "required": ["city", "country", "population_millions", "is_capital", "landmarks"],
    "additionalProperties": False,
}
CITY_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
ASK_CITY = [{"role": "user", "content": "Describe Paris as a JSON object."}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD_PARAMS = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                   "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER_PARAMS, "strict": True}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD_PARAMS}},
]
PARAMS = {"get_weather": WEATHER_PARAMS, "add": ADD_PARAMS}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def smol(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _start(tmp_path_factory.mktemp("serve-structured"), default_model_dir, DEFAULT_MODEL)


def _city(text: str | None) -> dict[str, Any]:
    data = json.loads(text or "")
    jsonschema.validate(data, CITY)
    return dict(data)


def _valid_calls(message: Any, names: set[str]) -> list[Any]:
    calls = list(message.tool_calls or [])
    assert calls, message
    for call in calls:
        assert call.function.name in names, call
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])
    return calls


def _together(*calls: Callable[[], Any]) -> list[Any]:
    """Each call's result, the calls made at the same time (the server batches them: one wait, not several)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def _traces(server: Server) -> int:
    with server.database.session(write=False) as s:
        return s.query(Trace).count()


def test_json_schema_replies_parse_and_validate_whole_sampled_and_streamed(smol: Server) -> None:
    client: Any = _client(smol)  # the openai stubs' overloads do not take these dict literals
    greedy = client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_CITY, response_format=CITY_FORMAT,
                                            max_tokens=300, temperature=0)
    [choice] = greedy.choices
    assert choice.finish_reason == "stop", choice
    city = _city(choice.message.content)

    def sample() -> Any:
        return client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_CITY, response_format=CITY_FORMAT,
                                              max_tokens=300, temperature=1.0, n=3, seed=7)

    def stream() -> str:
        streamed = client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_CITY, response_format=CITY_FORMAT,
                                                  max_tokens=300, temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)

    sampled, streamed = _together(sample, stream)  # one batch: the greedy stream must still equal the greedy reply
    for c in sampled.choices:
        assert c.finish_reason == "stop"
        _city(c.message.content)
    assert _city(streamed) == city
    with smol.database.session(write=False) as s:
        trace = s.get(Trace, greedy.id.removeprefix("chatcmpl-"))
        assert trace is not None and trace.choices[0]["message"]["content"] == choice.message.content
        assert trace.params["response_format"]["json_schema"]["name"] == "city"


def test_json_object_replies_are_json_objects(smol: Server) -> None:
    client: Any = _client(smol)
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Give me a JSON object with a name and an age."}],
        response_format={"type": "json_object"}, max_tokens=200, temperature=0.8, n=2, seed=3,
    )
    for choice in completion.choices:
        assert choice.finish_reason == "stop", choice
        assert isinstance(json.loads(choice.message.content or ""), dict)


def test_required_and_named_tool_choices_give_valid_calls(smol: Server) -> None:
    client: Any = _client(smol)  # the openai stubs' overloads do not take these dict literals

    def require() -> Any:
        return client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_WEATHER, tools=TOOLS,
                                              tool_choice="required", max_tokens=200, temperature=0.7, n=2, seed=1)

    def stream() -> list[Any]:
        streamed = client.chat.completions.create(
            model=DEFAULT_MODEL, messages=ASK_WEATHER, tools=TOOLS, max_tokens=200, temperature=0, stream=True,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        return [c.choices[0].delta for c in streamed if c.choices and c.choices[0].delta.tool_calls]

    required, deltas = _together(require, stream)  # one batch of both; the named choice below asks alone
    for choice in required.choices:
        assert choice.finish_reason == "tool_calls", choice
        _valid_calls(choice.message, {"get_weather", "add"})
    named = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "What is 12 + 35?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=200, temperature=0,
    )
    [choice] = named.choices
    assert choice.finish_reason == "tool_calls"
    [call] = _valid_calls(choice.message, {"add"})
    [delta] = deltas
    [streamed_call] = delta.tool_calls or []
    assert streamed_call.function is not None and streamed_call.function.name == "get_weather"
    jsonschema.validate(json.loads(streamed_call.function.arguments or ""), WEATHER_PARAMS)


def test_parallel_tool_calls_false_gives_at_most_one_call(smol: Server) -> None:
    client: Any = _client(smol)  # the openai stubs' overloads do not take these dict literals
    ask = [{"role": "user", "content": "What is the weather in Paris, in Tokyo and in Lima? And what is 12 + 35? "
                                       "Call a tool for each question."}]
    names = {"get_weather", "add"}
    single = client.chat.completions.create(model=DEFAULT_MODEL, messages=ask, tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, max_tokens=200, temperature=1.0, n=4, seed=5)
    for choice in single.choices:  # sampled hot, with three cities asked for: still exactly one call each
        assert choice.finish_reason == "tool_calls", choice
        assert len(_valid_calls(choice.message, names)) == 1, choice.message
    loose = [{"type": "function", "function": {k: v for k, v in t["function"].items() if k != "strict"}} for t in TOOLS]
    auto = client.chat.completions.create(model=DEFAULT_MODEL, messages=ask, tools=loose, parallel_tool_calls=False,
                                          max_tokens=120, temperature=1.0, n=4, seed=6)
    for choice in auto.choices:  # no strict tool, yet a grammar: text, or at most one well-formed call
        assert len(choice.message.tool_calls or []) <= 1, choice.message
        for call in choice.message.tool_calls or []:
            assert call.function.name in names and isinstance(json.loads(call.function.arguments), dict)
    several = client.chat.completions.create(model=DEFAULT_MODEL, messages=ask, tools=TOOLS, tool_choice="required",
                                             parallel_tool_calls=True, max_tokens=300, temperature=0.7, n=2, seed=1)
    for choice in several.choices:  # the default: one or more calls, as before (a long run of calls may be cut)
        assert choice.finish_reason in ("tool_calls", "length"), choice
        _valid_calls(choice.message, names)
    response = client.responses.create(model=DEFAULT_MODEL, input=ask[0]["content"], tool_choice="required",
                                       parallel_tool_calls=False, max_output_tokens=200, temperature=0,
                                       tools=[{"type": "function", **t["function"]} for t in TOOLS])
    [item] = response.output
    assert item.type == "function_call" and item.name in names and response.parallel_tool_calls is False
    with smol.database.session(write=False) as s:
        trace = s.get(Trace, single.id.removeprefix("chatcmpl-"))
        assert trace is not None and trace.params["parallel_tool_calls"] is False


def test_a_concurrent_mix_of_constrained_and_free_requests_all_succeed(smol: Server) -> None:
    async def main() -> list[Any]:
        client: Any = openai.AsyncOpenAI(base_url=smol.url, api_key=smol.key, max_retries=0)
        base: Any = {"model": DEFAULT_MODEL, "temperature": 0.9}
        free: Any = {**base, "max_tokens": 40}  # free text may run to its limit: keep the batch short
        asks = [
            client.chat.completions.create(messages=ASK_CITY, response_format=CITY_FORMAT, seed=1, max_tokens=300, **base),
            client.chat.completions.create(messages=ASK_CITY, seed=2, **free),
            client.chat.completions.create(messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", seed=3,
                                           max_tokens=200, **base),
            client.chat.completions.create(messages=[{"role": "user", "content": "Say hello in French."}], seed=4,
                                           **free),
            client.chat.completions.create(messages=ASK_CITY, response_format={"type": "json_object"}, seed=5,
                                           max_tokens=300, **base),
            client.chat.completions.create(messages=ASK_WEATHER, tools=TOOLS, seed=6, **free),
        ]
        try:
            return list(await asyncio.gather(*asks))
        finally:
            await client.close()

    before = _traces(smol)
    results = asyncio.run(main())
    constrained_city, free_city, forced, free_hello, any_object, auto_tools = (r.choices[0] for r in results)
    _city(constrained_city.message.content)
    assert constrained_city.finish_reason == "stop"
    _valid_calls(forced.message, {"get_weather", "add"})
    assert isinstance(json.loads(any_object.message.content or ""), dict)
    for free in (free_city, free_hello):
        assert free.finish_reason in ("stop", "length") and free.message.content
    for call in auto_tools.message.tool_calls or []:  # auto with a strict tool: text, or calls that validate
        if call.function.name == "get_weather":
            jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    assert _traces(smol) == before + len(results)


def test_a_schema_the_grammar_cannot_enforce_is_a_400_and_nothing_is_stored(smol: Server) -> None:
    client: Any = _client(smol)  # the openai stubs' overloads do not take these dict literals
    before = _traces(smol)
    unenforceable = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_CITY, response_format={
            "type": "json_schema", "json_schema": {"name": "tags", "schema": unenforceable, "strict": True}})
    assert err.value.status_code == 400 and isinstance(err.value.body, dict)
    assert err.value.body["param"] == "response_format" and "uniqueItems" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_WEATHER, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "delete_all"}})
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "tool_choice"
    assert _traces(smol) == before

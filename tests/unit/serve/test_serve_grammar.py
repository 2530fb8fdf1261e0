"""Structured outputs (``serve.grammar``): the constraint objects driven token by token on the tiny tokenizer.

A walk asks ``allowed``, picks one of the allowed tokens (at random, then -- to end the
walk -- preferring stop tokens and closing brackets and quotes), ``accept``s it, and stops
when the constraint is ``finished`` or a stop token was picked: whatever the choices, the
text must parse (JSON) or read back as valid tool calls through the renderer. The API
tests check the 400s (nothing stored); ``tests/integration/test_serve_structured.py``
runs the real model over HTTP.
"""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teachloop.core.chat import ToolSpec
from teachloop.core.errors import InvalidInput
from teachloop.core.sampling import SampledSequence
from teachloop.render import Renderer
from teachloop.render.tools import format_tool_call
from teachloop.serve import ChatInput, Serving
from teachloop.serve.grammar import (
    GrammarConstraint,
    Grammars,
    Structure,
    StructureKind,
    plan,
    structure_kind,
)
from teachloop.store import Database
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import BASE, Tenants, auth

END = 2  # <|im_end|> of the tiny tokenizer: the stop token the grammars allow where the text may end
CLOSERS = ('"}', '"]', '"', "}", "]")  # a quote first: inside a string, a brace is text
WEATHER = ToolSpec(name="get_weather", parameters={
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"], "additionalProperties": False,
})
ADD = ToolSpec(name="add", parameters={
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"],
})


@pytest.fixture(scope="module")
def grammars(tokenizer) -> Grammars:  # type: ignore[no-untyped-def]
    return Grammars(tokenizer, [END])


def _json_format(schema: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}


def walk(constraint: GrammarConstraint, tokenizer: Any, rng: random.Random, free: int = 30, budget: int = 400) -> str:
    """Drive ``constraint`` to its end: ``free`` random tokens, then tokens that close what is open."""
    vocab = len(tokenizer)
    tokens: list[int] = []
    for step in range(budget):
        allowed = constraint.allowed(vocab)
        assert allowed.dtype == torch.bool and allowed.shape == (vocab,)
        ids = allowed.nonzero().flatten().tolist()
        assert ids, f"the grammar allows nothing after {tokenizer.decode(tokens)!r}"
        token = rng.choice(ids)
        if step >= free:
            texts = {t: tokenizer.decode([t]) for t in ids}
            closing = [t for closer in CLOSERS for t in ids if texts[t] == closer]
            token = END if END in ids else (closing[0] if closing else token)
        constraint.accept(token)
        if token == END:
            break
        tokens.append(token)
        if constraint.finished:
            break
    else:
        raise AssertionError(f"no end after {budget} tokens: {tokenizer.decode(tokens)!r}")
    return str(tokenizer.decode(tokens))


def feed(constraint: GrammarConstraint, tokenizer: Any, text: str) -> bool:
    """Accept ``text``'s tokens one by one while the grammar allows them; whether all were allowed."""
    for token in tokenizer.encode(text, add_special_tokens=False):
        if not bool(constraint.allowed(len(tokenizer))[token]):
            return False
        constraint.accept(token)
    return True


# ---------------------------------------------------------------------------------------------- JSON


def test_json_object_walks_always_parse_and_the_grammar_ends_itself(grammars: Grammars, tokenizer) -> None:  # type: ignore[no-untyped-def]
    structure = plan({"type": "json_object"}, None, None)
    assert structure is not None and structure.kind is StructureKind.JSON and structure.param == "response_format"
    build = grammars.factory(structure)
    for seed in range(20):
        text = walk(build(seed), tokenizer, random.Random(seed), free=seed)
        assert isinstance(json.loads(text), dict), text
    done = build(0)
    assert feed(done, tokenizer, '{"a": [1, true]}') and done.finished  # nothing may follow a complete object
    assert not feed(build(0), tokenizer, "Sure! {")  # the reply starts with the JSON itself
    assert not feed(build(0), tokenizer, '{"a":  1}')  # compact JSON: no free whitespace to ramble in
    open_ = build(0)
    assert feed(open_, tokenizer, '{"a": 1') and not open_.finished and not bool(open_.allowed(len(tokenizer))[END])


PROPERTY_TYPES = st.sampled_from(["string", "integer", "boolean", "enum", "array", "number"])


@st.composite
def object_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """Objects with string/int/bool/enum/array/number fields, a random subset required, no extra keys."""
    names = draw(st.lists(st.text("abcdefghij_", min_size=1, max_size=6), min_size=1, max_size=5, unique=True))
    properties: dict[str, Any] = {}
    for name in names:
        kind = draw(PROPERTY_TYPES)
        if kind == "enum":
            properties[name] = {"enum": draw(st.lists(st.sampled_from(["red", "green", "x y", "1", "é"]), min_size=1,
                                                      max_size=3, unique=True))}
        elif kind == "array":
            item = draw(st.sampled_from(["string", "integer", "boolean"]))
            properties[name] = {"type": "array", "items": {"type": item}, "maxItems": draw(st.integers(1, 4))}
        elif kind == "string" and draw(st.booleans()):
            properties[name] = {"type": "string", "maxLength": draw(st.integers(0, 12))}
        elif kind == "integer" and draw(st.booleans()):
            properties[name] = {"type": "integer", "minimum": -5, "maximum": draw(st.integers(-5, 1000))}
        else:
            properties[name] = {"type": kind}
    required = draw(st.lists(st.sampled_from(names), unique=True))
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=object_schemas(), strict=st.booleans(), seed=st.integers(0, 2**32 - 1), free=st.integers(0, 40))
def test_any_walk_of_a_random_schema_parses_and_validates(
    grammars: Grammars, tokenizer: Any, schema: dict[str, Any], strict: bool, seed: int, free: int
) -> None:
    structure = plan(_json_format(schema, strict), None, None)
    assert structure is not None
    text = walk(grammars.factory(structure)(0), tokenizer, random.Random(seed), free=free)
    jsonschema.validate(json.loads(text), schema)


def test_strict_schemas_must_be_enforceable_and_broken_ones_are_refused(grammars: Grammars) -> None:
    unenforceable = {"type": "object", "properties": {"a": {"type": "integer"}}, "if": {"required": ["a"]}, "then": {}}
    with pytest.raises(InvalidInput, match="cannot be enforced") as err:
        plan(_json_format(unenforceable, strict=True), None, None)
    assert err.value.param == "response_format"
    assert plan(_json_format(unenforceable, strict=False), None, None) is not None  # best effort, like OpenAI's
    for broken in ({"type": "frobnicate"}, {"$ref": "#/$defs/missing"}, {"properties": {"a": {"pattern": "[a-"}}}):
        with pytest.raises(InvalidInput) as err:
            plan(_json_format(broken, strict=False), None, None)
        assert err.value.param == "response_format", broken
    with pytest.raises(InvalidInput) as err:
        plan({"type": "json_schema", "json_schema": {"name": "x"}}, None, None)
    assert err.value.param == "response_format.json_schema.schema"


def test_compiled_grammars_are_cached_by_text_and_the_oldest_evicted(tokenizer) -> None:  # type: ignore[no-untyped-def]
    grammars = Grammars(tokenizer, [END], cache_size=2)
    a, b, c = (plan(_json_format({"type": "object", "properties": {k: {"type": "integer"}}}), None, None)
               for k in "abc")
    assert a is not None and b is not None and c is not None
    first = grammars.compiled(a)
    assert grammars.compiled(a) is first and len(grammars) == 1
    grammars.compiled(b)
    grammars.compiled(c)
    assert len(grammars) == 2 and grammars.compiled(a) is not first  # a was evicted, so compiled anew
    build = grammars.factory(a)
    one, two = build(0), build(1)
    assert feed(one, tokenizer, '{"a": 1}') and one.finished and not two.finished  # each sample has its own matcher


def test_a_grammar_the_tokenizer_cannot_compile_is_a_400(grammars: Grammars) -> None:
    bad = Structure(StructureKind.JSON, '{"grammars": [{"lark_grammar": "start: undefined_rule"}]}', "response_format")
    with pytest.raises(InvalidInput) as err:
        grammars.factory(bad)
    assert err.value.param == "response_format"


# ---------------------------------------------------------------------------------------------- tools


def _calls(renderer: Renderer, text: str, tools: list[ToolSpec], validated: tuple[str, ...] | None = None) -> list[Any]:
    """The calls in ``text`` (``<tool_call>`` blocks only, as ``Serving.reply`` reads a tool grammar's reply).

    Each names one of ``tools``; the arguments of those in ``validated`` (default: all) match their schema.
    """
    message = renderer.parse_reply(text, None)
    for call in message.tool_calls:
        spec = next((t for t in tools if t.name == call.name), None)
        assert spec is not None, f"{call.name!r} was not offered"
        if validated is None or call.name in validated:
            jsonschema.validate(json.loads(call.arguments), spec.parameters)
    return list(message.tool_calls)


def test_required_tool_choice_writes_only_valid_calls_in_the_renderers_format(
    grammars: Grammars, tokenizer: Any, renderer: Renderer
) -> None:
    tools = [WEATHER, ADD]
    structure = plan(None, tools, "required")
    assert structure is not None and structure.kind is StructureKind.TOOL_CALLS and structure.param == "tools"
    build = grammars.factory(structure)
    seen = set()
    for seed in range(30):
        text = walk(build(seed), tokenizer, random.Random(seed), free=seed % 25)
        calls = _calls(renderer, text, tools)
        assert calls and renderer.parse_reply(text, None).content == "", text
        # byte for byte what the renderer writes for these calls (so the model sees its own format)
        assert text == "\n".join(format_tool_call(c) for c in calls), text
        seen |= {c.name for c in calls}
    assert seen == {"get_weather", "add"}
    assert not feed(build(0), tokenizer, 'I will call it. <tool_call>')  # no text around the calls
    assert not feed(build(0), tokenizer, '<tool_call>\n{"name": "delete_everything"')  # only offered names


def test_a_named_tool_choice_writes_exactly_one_call_of_that_function(
    grammars: Grammars, tokenizer: Any, renderer: Renderer
) -> None:
    structure = plan(None, [WEATHER, ADD], {"name": "add"})
    assert structure is not None
    build = grammars.factory(structure)
    for seed in range(10):
        constraint = build(seed)
        text = walk(constraint, tokenizer, random.Random(seed), free=seed)
        [call] = _calls(renderer, text, [ADD])
        assert call.name == "add" and constraint.finished
    with pytest.raises(InvalidInput) as err:
        plan(None, [WEATHER], {"name": "add"})
    assert err.value.param == "tool_choice"


def test_strict_tools_with_auto_allow_text_but_a_started_call_must_be_valid(
    grammars: Grammars, tokenizer: Any, renderer: Renderer
) -> None:
    tools = [WEATHER, ADD]
    assert plan(None, tools, "auto") is None  # no strict tool: free text, parsed as before
    structure = plan(None, tools, "auto", strict_tools=("get_weather",))
    assert structure is not None and structure.kind is StructureKind.TEXT_OR_TOOL_CALLS
    build = grammars.factory(structure)
    plain = build(0)
    assert feed(plain, tokenizer, "Hello there! How are you today?") and bool(plain.allowed(len(tokenizer))[END])
    for seed in range(15):
        constraint = build(seed)
        assert feed(constraint, tokenizer, "Call the weather tool. <tool_call>")
        text = "Call the weather tool. <tool_call>" + walk(constraint, tokenizer, random.Random(seed), free=seed)
        message = renderer.parse_reply(text, None)
        assert message.content.startswith("Call the weather tool.") and message.tool_calls, text
        _calls(renderer, text, tools, validated=("get_weather",))
    bad = build(0)
    assert not feed(bad, tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {"city": 3')  # strict: a string
    loose = build(0)
    assert feed(loose, tokenizer, '<tool_call>\n{"name": "add", "arguments": {"anything": [1]}}')  # add is not strict


CALL_ADD = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
CALL_WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>'


def test_required_without_parallel_tool_calls_writes_exactly_one_call(
    grammars: Grammars, tokenizer: Any, renderer: Renderer
) -> None:
    tools = [WEATHER, ADD]
    structure = plan(None, tools, "required", parallel_tool_calls=False)
    assert structure is not None and structure.kind is StructureKind.TOOL_CALLS
    build = grammars.factory(structure)
    for seed in range(10):
        constraint = build(seed)
        text = walk(constraint, tokenizer, random.Random(seed), free=seed)
        assert len(_calls(renderer, text, tools)) == 1 and constraint.finished, text
    one = build(0)
    assert feed(one, tokenizer, CALL_ADD) and one.finished
    assert not feed(one, tokenizer, "\n" + CALL_WEATHER)  # a second call is refused
    several = plan(None, tools, "required")  # the default (parallel) still allows several
    assert several is not None and several.grammar != structure.grammar
    assert feed(grammars.factory(several)(0), tokenizer, CALL_ADD + "\n" + CALL_WEATHER)
    named = plan(None, tools, {"name": "add"}, parallel_tool_calls=False)  # one call either way
    assert named is not None and named == plan(None, tools, {"name": "add"})


def test_auto_without_parallel_tool_calls_allows_text_or_one_call(
    grammars: Grammars, tokenizer: Any, renderer: Renderer
) -> None:
    tools = [WEATHER, ADD]
    assert plan(None, tools, "auto") is None and plan(None, tools, None) is None  # the default builds nothing
    structure = plan(None, tools, "auto", parallel_tool_calls=False)  # no tool is strict
    assert structure is not None and structure.kind is StructureKind.TEXT_OR_TOOL_CALLS
    assert plan(None, tools, None, parallel_tool_calls=False) == structure
    build = grammars.factory(structure)
    plain = build(0)
    assert feed(plain, tokenizer, "Hello there! How are you today?") and bool(plain.allowed(len(tokenizer))[END])
    for seed in range(10):
        constraint = build(seed)
        assert feed(constraint, tokenizer, "Let me add. <tool_call>")
        text = "Let me add. <tool_call>" + walk(constraint, tokenizer, random.Random(seed), free=seed)
        assert len(_calls(renderer, text, tools, validated=())) == 1, text
    one = build(0)
    assert feed(one, tokenizer, "Sure. " + CALL_ADD) and bool(one.allowed(len(tokenizer))[END])
    assert feed(one, tokenizer, " Done,") and not feed(one, tokenizer, " " + CALL_WEATHER)  # no second call
    back_to_back = build(0)
    assert feed(back_to_back, tokenizer, CALL_ADD) and not feed(back_to_back, tokenizer, "\n" + CALL_ADD)
    loose = build(0)  # not strict: any JSON object, but still an offered name
    assert feed(loose, tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {"anything": [1]}}')
    assert not feed(build(0), tokenizer, '<tool_call>\n{"name": "delete_everything"')
    strict = plan(None, tools, "auto", strict_tools=("get_weather",), parallel_tool_calls=False)
    assert strict is not None
    checked = grammars.factory(strict)(0)
    assert feed(checked, tokenizer, CALL_WEATHER) and not feed(checked, tokenizer, "\n" + CALL_ADD)
    assert not feed(grammars.factory(strict)(0), tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {"city": 3')
    parallel = plan(None, tools, "auto", strict_tools=("get_weather",))  # default with a strict tool: several calls
    assert parallel is not None and feed(grammars.factory(parallel)(0), tokenizer, CALL_WEATHER + "\n" + CALL_ADD)


def test_which_structure_a_request_gets_without_parallel_tool_calls() -> None:
    tools = [WEATHER]
    assert structure_kind(None, tools, "auto", parallel_tool_calls=False) is StructureKind.TEXT_OR_TOOL_CALLS
    assert structure_kind(None, tools, None, parallel_tool_calls=False) is StructureKind.TEXT_OR_TOOL_CALLS
    assert structure_kind(None, tools, "auto") is None and structure_kind(None, tools, None) is None
    assert structure_kind(None, tools, "none", parallel_tool_calls=False) is None
    assert structure_kind(None, None, "auto", parallel_tool_calls=False) is None  # no tools, nothing to limit
    assert structure_kind(None, tools, "required", parallel_tool_calls=False) is StructureKind.TOOL_CALLS
    assert structure_kind({"type": "json_object"}, tools, "auto", parallel_tool_calls=False) is StructureKind.JSON


def test_tool_schemas_are_checked_and_errors_name_the_function() -> None:
    odd = ToolSpec(name="odd", parameters={"type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}})
    assert plan(None, [odd], "required") is not None  # not strict: compiled leniently
    with pytest.raises(InvalidInput, match="'odd'") as err:
        plan(None, [odd], "required", strict_tools=("odd",))
    assert err.value.param == "tools"
    scalar = ToolSpec(name="scalar", parameters={"type": "string"})
    with pytest.raises(InvalidInput, match="object schema"):
        plan(None, [scalar], "required")
    broken = ToolSpec(name="broken", parameters={"type": "object", "properties": {"a": {"type": "frobnicate"}}})
    with pytest.raises(InvalidInput, match="'broken'"):
        plan(None, [broken], {"name": "broken"})


def test_which_structure_a_request_gets() -> None:
    tools = [WEATHER]
    json_object = {"type": "json_object"}
    assert structure_kind(None, None, None) is None
    assert structure_kind({"type": "text"}, tools, "auto") is None
    assert structure_kind(json_object, None, None) is StructureKind.JSON
    assert structure_kind(json_object, tools, "required") is StructureKind.TOOL_CALLS  # a forced call wins
    assert structure_kind(json_object, tools, "auto", ("get_weather",)) is StructureKind.JSON
    assert structure_kind(None, tools, None, ("get_weather",)) is StructureKind.TEXT_OR_TOOL_CALLS
    assert structure_kind(None, tools, "none", ("get_weather",)) is None
    with pytest.raises(InvalidInput) as err:
        structure_kind({"type": "yaml"}, None, None)
    assert err.value.param == "response_format.type"


def test_a_json_reply_is_its_text_even_with_tools_and_tool_grammars_read_only_blocks(serving: Serving) -> None:
    renderer = serving.renderer
    assert renderer is not None
    bare = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}})
    seq = SampledSequence(tokens=[*renderer.encode(bare), END], logprobs=[0.0] * (len(renderer.encode(bare)) + 1),
                          stop_reason="stop")
    base = ChatInput(model=BASE, messages=[], tools=[WEATHER])
    assert serving.reply(base, 0, seq).message.tool_calls  # free text naming a tool: read as a call (as before)
    as_json = serving.reply(ChatInput(model=BASE, messages=[], tools=[WEATHER], response_format={"type": "json_object"}),
                            0, seq)
    assert as_json.message.content == bare and not as_json.message.tool_calls and as_json.finish_reason == "stop"
    strict = serving.reply(ChatInput(model=BASE, messages=[], tools=[WEATHER], strict_tools=("get_weather",)), 0, seq)
    assert strict.message.content == bare and not strict.message.tool_calls  # not a <tool_call> block: content
    single = serving.reply(ChatInput(model=BASE, messages=[], tools=[WEATHER], parallel_tool_calls=False), 0, seq)
    assert single.message.content == bare and not single.message.tool_calls  # parsed as its grammar reads it


# ---------------------------------------------------------------------------------------------- the API


CHAT = "/v1/chat/completions"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER.parameters}}


def _traces(database: Database) -> int:
    with database.session(write=False) as s:
        return s.query(Trace).count()


@pytest.mark.parametrize(("extra", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True,
                                                               "schema": {"type": "object", "if": {}}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_object", "json_schema": {"name": "x", "schema": {}}}},
     "response_format.json_schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}}}], "tool_choice": "required"},
     "tools"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
])
def test_bad_structured_output_requests_are_400s_that_store_nothing(
    client: TestClient, tenants: Tenants, database: Database, extra: dict[str, Any], param: str
) -> None:
    before = _traces(database)
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], **extra}
    r = client.post(CHAT, json=body, headers=auth(tenants.acme.member))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert _traces(database) == before


def test_structured_requests_reach_the_job_with_a_constraint(
    client: TestClient, tenants: Tenants, serving: Serving, database: Database, engine: Any, tokenizer: Any
) -> None:
    body = {"model": BASE, "messages": [{"role": "user", "content": '{"ok": true}'}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "ok", "strict": True, "schema": {
                "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}}
    r = client.post(CHAT, json=body, headers=auth(tenants.acme.member))
    assert r.status_code == 200, r.text  # the echo engine ignores constraints; the request is accepted and traced
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"ok": True}
    assert serving.grammars is not None and len(serving.grammars) == 1
    [[(job, _)]] = engine.prefills
    assert job.constraint is not None
    constraint = job.constraint(0)
    assert not feed(constraint, tokenizer, '{"no": 1}')  # the job carries this request's schema
    assert feed(job.constraint(0), tokenizer, '{"ok": true}')
    with database.session(write=False) as s:
        trace = s.query(Trace).one()
        assert trace.params["response_format"]["json_schema"]["name"] == "ok"


def test_parallel_tool_calls_false_reaches_the_job_as_a_one_call_grammar(
    client: TestClient, tenants: Tenants, engine: Any, database: Database, tokenizer: Any
) -> None:
    tools = [TOOL, {"type": "function", "function": {"name": "add", "parameters": ADD.parameters}}]
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    trace_ids = []
    for extra in ({}, {"parallel_tool_calls": True},  # the default: auto without strict tools builds no grammar
                  {"parallel_tool_calls": False}, {"parallel_tool_calls": False, "tool_choice": "required"}):
        r = client.post(CHAT, json={**body, **extra}, headers=auth(tenants.acme.member))
        assert r.status_code == 200, r.text
        trace_ids.append(r.headers["x-teachloop-trace-id"])
    default, explicit, auto, required = (job for [(job, _)] in engine.prefills)
    assert default.constraint is None and explicit.constraint is None
    assert auto.constraint is not None and required.constraint is not None
    text = auto.constraint(0)
    assert feed(text, tokenizer, "Hi! " + CALL_ADD) and not feed(text, tokenizer, "\n" + CALL_WEATHER)
    forced = required.constraint(0)
    assert not feed(forced, tokenizer, "Hi!") and feed(required.constraint(0), tokenizer, CALL_ADD)
    assert not feed(required.constraint(0), tokenizer, CALL_ADD + "\n" + CALL_WEATHER)
    with database.session(write=False) as s:
        params = [s.get(Trace, trace_id).params for trace_id in trace_ids]  # type: ignore[union-attr]
    assert [p.get("parallel_tool_calls") for p in params] == [None, True, False, False]

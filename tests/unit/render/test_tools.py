"""Tool calls: shown to templates with and without tool support, parsed back from replies."""

from __future__ import annotations

import json

import pytest

from teachloop.core.chat import Message, ToolCall, ToolSpec
from teachloop.render import Renderer, parse_tool_calls, tool_system_section
from tests._tiny import tiny_tokenizer

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather of a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec(name="get_time", description="The time.")
U = Message(role="user", content="Weather in Paris?")
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
A_CALL = Message(role="assistant", content="", tool_calls=(CALL,))
RESULT = Message(role="tool", content='{"temp_c": 21}', tool_call_id="call_1")
A_FINAL = Message(role="assistant", content="It is 21 C in Paris.")

#: A Qwen2.5-like template that takes ``tools`` itself.
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content }}"
    "{%- for tc in message.tool_calls or [] %}\n<tool_call>\n"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


@pytest.fixture(scope="module")
def tool_aware() -> Renderer:
    return Renderer(tiny_tokenizer(chat_template=TOOL_TEMPLATE))


# ------------------------------------------------------------------------------------------ writing


def test_template_without_tools_gets_a_system_section(chatml: Renderer) -> None:
    assert not chatml.uses_tools
    text = chatml.render_text([U], tools=[WEATHER], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    assert json.dumps(WEATHER.to_openai()) in text
    assert "SmolLM" not in text  # our system message replaces the template's default one
    assert text.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")


def test_tool_section_is_appended_to_an_existing_system_message(chatml: Renderer) -> None:
    sys_msg = Message(role="system", content="Be brief.")
    text = chatml.render_text([sys_msg, U], tools=[WEATHER, CLOCK])
    assert text.startswith("<|im_start|>system\nBe brief.\n\n" + tool_system_section([WEATHER, CLOCK]))
    assert text.count("<|im_start|>system") == 1


def test_history_tool_calls_and_results_inline(chatml: Renderer) -> None:
    text = chatml.render_text([U, A_CALL, RESULT, RESULT, A_FINAL], tools=[WEATHER])
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
    ) in text
    # two tool results merge into one user turn
    assert (
        "<|im_start|>user\n<tool_response>\n"
        '{"temp_c": 21}\n</tool_response>\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>\n'
    ) in text


def test_tool_call_turn_is_trained_and_parses_back(chatml: Renderer) -> None:
    tokens, mask = chatml.build_supervised([U, A_CALL, RESULT, A_FINAL], tools=[WEATHER], train_on="all_assistant")
    trained = chatml.decode([t for t, m in zip(tokens, mask, strict=True) if m])
    assert trained.startswith("<tool_call>\n") and trained.endswith("It is 21 C in Paris.<|im_end|>")
    first_turn, _ = chatml.build_supervised([U, A_CALL], tools=[WEATHER])
    prompt = chatml.build_prompt([U], tools=[WEATHER])
    reply = chatml.parse_reply(first_turn[len(prompt) :], tools=[WEATHER])
    assert reply.content == ""
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_template_with_tools_gets_them_directly(tool_aware: Renderer) -> None:
    assert tool_aware.uses_tools
    text = tool_aware.render_text([U, A_CALL, RESULT], tools=[WEATHER], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n<tools>{\"type\": \"function\"")
    assert "You may call one or more functions" not in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n" in text  # the template's own handling of role "tool"
    tokens, mask = tool_aware.build_supervised([U, A_CALL], tools=[WEATHER])
    assert tool_aware.decode([t for t, m in zip(tokens, mask, strict=True) if m]).endswith("</tool_call><|im_end|>")


def test_tools_as_openai_dicts(chatml: Renderer) -> None:
    assert chatml.build_prompt([U], tools=[WEATHER.to_openai()]) == chatml.build_prompt([U], tools=[WEATHER])


# ------------------------------------------------------------------------------------------ reading


def test_parse_tool_call_blocks() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>'
    )
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert calls[0].id != calls[1].id and calls[0].id.startswith("call_")


def test_unclosed_block_at_the_end_still_parses() -> None:
    _, calls = parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": {}}\n')
    assert [c.name for c in calls] == ["get_time"]


@pytest.mark.parametrize(
    "bad",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Par</tool_call>',
        "<tool_call>not json</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',
        '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
        "<tool_call>[1, 2]</tool_call>",
    ],
)
def test_malformed_calls_stay_text(bad: str) -> None:
    content, calls = parse_tool_calls("before " + bad, [WEATHER])
    assert calls == ()
    assert content == ("before " + bad).strip()


def test_bare_json_call_only_when_tools_were_offered() -> None:
    reply = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert parse_tool_calls(reply) == (reply, ())
    content, calls = parse_tool_calls(reply, [WEATHER])
    assert content == "" and calls[0].name == "get_weather"
    fenced = '```json\n[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]\n```'
    _, calls = parse_tool_calls(fenced, [WEATHER, CLOCK])
    assert [c.name for c in calls] == ["get_time", "get_weather"]


def test_bare_json_naming_an_unknown_tool_is_text() -> None:
    reply = '{"name": "launch_rockets", "arguments": {}}'
    assert parse_tool_calls(reply, [WEATHER]) == (reply, ())
    assert parse_tool_calls('{"answer": 47}', [WEATHER]) == ('{"answer": 47}', ())


def test_parse_reply_with_tools(chatml: Renderer) -> None:
    tokens = chatml.encode('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>')
    msg = chatml.parse_reply(tokens, tools=[WEATHER])
    assert msg.role == "assistant" and msg.content == ""
    assert msg.tool_calls[0].name == "get_weather"
    assert json.loads(msg.tool_calls[0].arguments) == {"city": "Paris"}

"""Fixtures for the renderer tests: tiny tokenizers with three template styles (no network, no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, _ROOT)

from teachloop.render import Renderer  # noqa: E402
from tests._tiny import LLAMA3_SPECIAL_TOKENS, tiny_tokenizer  # noqa: E402

#: A Llama-3 style template: headers in special tokens, content trimmed, <|eot_id|> ends a turn.
LLAMA3_TEMPLATE = (
    "{{- '<|begin_of_text|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

#: A plain-text template with no end-of-turn token at all.
ROLE_COLON_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- message['role'] | capitalize + ': ' + message['content'] + '\\n\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def chatml() -> Renderer:
    """SmolLM2's own template on the tiny tokenizer."""
    return Renderer(tiny_tokenizer())


@pytest.fixture(scope="session")
def llama3() -> Renderer:
    return Renderer(tiny_tokenizer(chat_template=LLAMA3_TEMPLATE, extra_special_tokens=LLAMA3_SPECIAL_TOKENS))


@pytest.fixture(scope="session")
def role_colon() -> Renderer:
    return Renderer(tiny_tokenizer(chat_template=ROLE_COLON_TEMPLATE))

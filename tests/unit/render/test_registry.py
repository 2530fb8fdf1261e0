"""The renderer registry: built-ins, registration, automatic matching, clear errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from teachloop.core.chat import Message
from teachloop.core.errors import Conflict, ModelError, NotFound
from teachloop.render import (
    CHATML_TEMPLATE,
    Renderer,
    get_renderer,
    register_renderer,
    renderer_for,
    renderer_names,
    unregister_renderer,
)
from tests._tiny import tiny_tokenizer


@pytest.fixture
def custom() -> Iterator[str]:
    register_renderer(
        "test-custom",
        lambda tok: Renderer(tok, chat_template=CHATML_TEMPLATE, name="test-custom"),
        matches=lambda tok: tok.name_or_path == "special",
    )
    yield "test-custom"
    unregister_renderer("test-custom")


def test_builtins() -> None:
    assert {"chat_template", "chatml"} <= set(renderer_names())
    tok = tiny_tokenizer()
    assert renderer_for(tok).name == "chat_template"
    chatml = get_renderer("chatml", tok)
    assert chatml.render_text([Message(role="user", content="hi")]) == "<|im_start|>user\nhi<|im_end|>\n"


def test_chatml_is_the_fallback_for_tokenizers_with_its_tokens() -> None:
    assert renderer_for(tiny_tokenizer(chat_template=None)).name == "chatml"


def test_registered_renderer_matches(custom: str) -> None:
    tok = tiny_tokenizer()
    assert renderer_for(tok).name == "chat_template"
    tok.name_or_path = "special"
    assert renderer_for(tok).name == custom
    assert renderer_for(tok, "chat_template").name == "chat_template"  # an explicit name wins


def test_errors(custom: str) -> None:
    with pytest.raises(Conflict, match="already registered"):
        register_renderer(custom, lambda tok: Renderer(tok))
    with pytest.raises(NotFound, match="unknown renderer 'nope': known renderers are chat_template, chatml"):
        get_renderer("nope", tiny_tokenizer())


def test_no_template_and_no_match() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(ModelError, match="no chat template and no renderer matches"):
        renderer_for(tok)

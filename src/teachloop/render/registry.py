"""Named renderers: the model's own template by default, special ones registered by name.

``renderer_for(tokenizer)`` picks, in order: the renderer named by the caller; the
most recently registered renderer whose ``matches(tokenizer)`` is true; the
tokenizer's own chat template (``"chat_template"``); ChatML (``"chatml"``) for a
tokenizer without a template that has the ``<|im_start|>``/``<|im_end|>`` tokens.

Register a renderer when a model's template cannot be used as is, e.g. one whose
earlier turns change once later ones are added, or one with its own tool-call syntax
(subclass ``Renderer`` and override ``parse_reply``)::

    register_renderer("my-model", lambda tok: Renderer(tok, chat_template=MY_TEMPLATE, name="my-model"),
                      matches=lambda tok: "my-model" in tok.name_or_path)

This module knows nothing about files or models; it maps names to factories.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from teachloop.core.errors import Conflict, InvalidInput, ModelError, NotFound
from teachloop.render.renderer import Renderer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RendererFactory = Callable[["PreTrainedTokenizerBase"], Renderer]
Matcher = Callable[["PreTrainedTokenizerBase"], bool]

#: ChatML without a default system prompt, for tokenizers that have the tokens but no template.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_FACTORIES: dict[str, RendererFactory] = {}
_MATCHERS: dict[str, Matcher] = {}


def register_renderer(
    name: str, factory: RendererFactory, *, matches: Matcher | None = None, replace: bool = False
) -> None:
    """Register ``factory`` under ``name``; with ``matches`` it is also picked automatically."""
    if not name or not isinstance(name, str):
        raise InvalidInput("a renderer needs a non-empty name", param="name")
    if name in _FACTORIES and not replace:
        raise Conflict(f"a renderer named {name!r} is already registered (pass replace=True)", param="name")
    _FACTORIES[name] = factory
    _MATCHERS.pop(name, None)
    if matches is not None:
        _MATCHERS[name] = matches


def unregister_renderer(name: str) -> None:
    """Remove a registered renderer (built-ins included); unknown names are ignored."""
    _FACTORIES.pop(name, None)
    _MATCHERS.pop(name, None)


def renderer_names() -> list[str]:
    """The registered renderer names, sorted."""
    return sorted(_FACTORIES)


def get_renderer(name: str, tokenizer: PreTrainedTokenizerBase) -> Renderer:
    """The renderer registered as ``name``, built for ``tokenizer``; ``NotFound`` lists the names."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise NotFound(f"unknown renderer {name!r}: known renderers are {', '.join(renderer_names())}")
    return factory(tokenizer)


def renderer_for(tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> Renderer:
    """The renderer for ``tokenizer``: ``name`` if given, else the best match (see the module docstring)."""
    if name:
        return get_renderer(name, tokenizer)
    for candidate, matches in reversed(list(_MATCHERS.items())):
        if matches(tokenizer):
            return get_renderer(candidate, tokenizer)
    if tokenizer.chat_template:
        return get_renderer("chat_template", tokenizer)
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return get_renderer("chatml", tokenizer)
    raise ModelError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template and no renderer matches it; "
        "register one with teachloop.render.register_renderer"
    )


def _chat_template(tokenizer: PreTrainedTokenizerBase) -> Renderer:
    return Renderer(tokenizer, name="chat_template")


def _chatml(tokenizer: PreTrainedTokenizerBase) -> Renderer:
    return Renderer(tokenizer, chat_template=CHATML_TEMPLATE, name="chatml")


register_renderer("chat_template", _chat_template)
register_renderer("chatml", _chatml)

__all__ = [
    "CHATML_TEMPLATE",
    "Matcher",
    "RendererFactory",
    "get_renderer",
    "register_renderer",
    "renderer_for",
    "renderer_names",
    "unregister_renderer",
]

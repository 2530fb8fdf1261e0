"""teachloop.render (layer L1): chat messages <-> token ids through the model's chat template.

``Renderer`` builds generation prompts and supervised (tokens, mask) pairs, names the
stop sequences, and parses sampled replies (tool calls included). ``registry`` maps
names to renderers for templates that need special handling. Imports only ``core``;
``transformers`` is imported lazily, when a tokenizer is loaded.
"""

from teachloop.render.registry import (
    CHATML_TEMPLATE,
    get_renderer,
    register_renderer,
    renderer_for,
    renderer_names,
    unregister_renderer,
)
from teachloop.render.renderer import MessageLike, Renderer, ToolLike, TrainOn
from teachloop.render.tools import TOOL_SYSTEM_SECTION, parse_tool_calls, tool_system_section

__all__ = [
    "CHATML_TEMPLATE",
    "TOOL_SYSTEM_SECTION",
    "MessageLike",
    "Renderer",
    "ToolLike",
    "TrainOn",
    "get_renderer",
    "parse_tool_calls",
    "register_renderer",
    "renderer_for",
    "renderer_names",
    "tool_system_section",
    "unregister_renderer",
]

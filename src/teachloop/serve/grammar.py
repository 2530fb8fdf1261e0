"""Structured outputs: JSON and tool-call grammars, enforced token by token with llguidance.

A request asks for structure in one of three ways (``structure_kind``, first match wins):

- ``tool_choice`` ``"required"`` or ``{"name": ...}`` with tools offered: ``TOOL_CALLS`` --
  the reply is nothing but tool calls in the renderer's Hermes format
  (``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, several joined by a
  newline, exactly what ``render.tools`` writes and parses). ``name`` is one of the offered
  functions and ``arguments`` follow that function's ``parameters`` schema. ``"required"``
  allows one or more calls (exactly one with ``parallel_tool_calls`` false); a named choice
  (the caller already narrowed the tools to that function) exactly one.
- ``response_format`` ``{"type": "json_object"}`` (any JSON object) or
  ``{"type": "json_schema", "json_schema": {"schema": ...}}``: ``JSON`` -- the reply is one
  JSON value that validates against the schema.
- ``tool_choice`` auto (or unset) with tools offered, when at least one is a ``strict``
  function or ``parallel_tool_calls`` is false: ``TEXT_OR_TOOL_CALLS`` -- free text, but once
  the model writes ``<tool_call>`` the call must be well formed: an offered name, and
  arguments that validate against a strict function's schema (any JSON object for a
  function that is not strict). With ``parallel_tool_calls`` false at most one call, and no
  text after it may open another.

``parallel_tool_calls`` false is OpenAI's "at most one tool call per assistant turn", enforced
by these grammars; true (the default) changes nothing: ``auto`` without strict tools stays free
text and builds no grammar.

``strict`` is honoured as OpenAI means it: a strict schema (``json_schema.strict`` or a
function's ``strict``) must be enforceable in full, so a keyword llguidance cannot enforce
is a 400; a schema that is not strict is compiled leniently (keywords it cannot enforce are
ignored, best effort). Every schema is first checked against its JSON-Schema meta-schema.
JSON is written compactly with ``json.dumps``' separators (``", "`` and ``": "``), no other
whitespace, so a small model cannot ramble in whitespace.

``plan`` turns request fields into a ``Structure`` (an llguidance grammar and the parameter a
compile error names) and raises ``InvalidInput`` naming ``response_format`` or ``tools`` for
a schema that cannot be compiled. ``Grammars`` holds one tokenizer's llguidance view (built on
first use, ~0.3 s for a 49k vocabulary) and an LRU cache of compiled grammars keyed by their
text; ``Grammars.factory`` gives the ``Callable[[int], TokenConstraint]`` that
``GenerationJob.constraint`` takes, one ``GrammarConstraint`` (a fresh copy of the compiled
matcher) per sample. A grammar ends when it is complete (``finished``) or when the model
samples one of the stop tokens (the template's end-of-turn and EOS), which the grammar
allows exactly where the text may end.

This module knows nothing of HTTP or of the sampler: request fields in, grammars and
``TokenConstraint`` objects out. llguidance, numpy and torch are imported on first use.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from teachloop.core.chat import ToolSpec
from teachloop.core.errors import InvalidInput, ModelError, first_line

if TYPE_CHECKING:
    import torch
    from llguidance import LLMatcher, LLTokenizer
    from llguidance._lib import JsonCompileOptions
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

#: llguidance JSON options: compact JSON with json.dumps' separators and no free whitespace.
JSON_OPTIONS: JsonCompileOptions = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}

#: The tool-call block of ``render.tools.format_tool_call``, around the function name and arguments.
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"


class StructureKind(StrEnum):
    """What a constrained reply is (see the module docstring)."""

    JSON = "json"
    TOOL_CALLS = "tool_calls"
    TEXT_OR_TOOL_CALLS = "text_or_tool_calls"


@dataclass(frozen=True)
class Structure:
    """A request's structure as an llguidance grammar.

    Attributes:
        kind: what the reply is.
        grammar: the llguidance grammar (its serialized ``TopLevelGrammar``); the cache key.
        param: the request parameter a compile error names (``response_format`` or ``tools``).
    """

    kind: StructureKind
    grammar: str
    param: str


def _forced(tool_choice: str | Mapping[str, Any] | None) -> str | None:
    """The forced tool choice: ``"required"``, the named function, or None (auto / none / unset)."""
    if tool_choice == "required":
        return "required"
    if isinstance(tool_choice, Mapping):
        name = tool_choice.get("name")
        if not isinstance(name, str) and isinstance(tool_choice.get("function"), Mapping):
            name = tool_choice["function"].get("name")  # the OpenAI shape, accepted too
        if not isinstance(name, str) or not name:
            raise InvalidInput("tool_choice must name a function", param="tool_choice")
        return name
    return None


def _json_type(response_format: Mapping[str, Any] | None) -> str | None:
    kind = None if response_format is None else response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind not in ("json_object", "json_schema"):
        raise InvalidInput(f"response_format type {kind!r} is not one of text, json_object, json_schema",
                           param="response_format.type")
    return str(kind)


def structure_kind(
    response_format: Mapping[str, Any] | None,
    tools: Sequence[ToolSpec] | None,
    tool_choice: str | Mapping[str, Any] | None,
    strict_tools: Sequence[str] = (),
    *,
    parallel_tool_calls: bool = True,
) -> StructureKind | None:
    """Which structure a request asks for, or None for free text (cheap: no grammar is built)."""
    if tools and _forced(tool_choice) is not None:
        return StructureKind.TOOL_CALLS
    if _json_type(response_format) is not None:
        return StructureKind.JSON
    if tools and tool_choice in (None, "auto") and (
        not parallel_tool_calls or any(t.name in strict_tools for t in tools)
    ):
        return StructureKind.TEXT_OR_TOOL_CALLS
    return None


def plan(
    response_format: Mapping[str, Any] | None,
    tools: Sequence[ToolSpec] | None,
    tool_choice: str | Mapping[str, Any] | None,
    strict_tools: Sequence[str] = (),
    *,
    parallel_tool_calls: bool = True,
) -> Structure | None:
    """The ``Structure`` a request asks for (None: free text); ``InvalidInput`` for a bad schema.

    ``parallel_tool_calls`` false allows at most one tool call (exactly one when a call is forced).
    """
    kind = structure_kind(response_format, tools, tool_choice, strict_tools, parallel_tool_calls=parallel_tool_calls)
    if kind is None:
        return None
    if kind is StructureKind.JSON:
        assert response_format is not None
        return Structure(kind, _json_grammar(response_format), "response_format")
    assert tools
    forced = _forced(tool_choice)
    if forced not in (None, "required"):
        tools = [t for t in tools if t.name == forced]
        if not tools:
            raise InvalidInput(f"tool_choice names {forced!r}, which is not in tools", param="tool_choice")
    strict = set(strict_tools)
    if kind is StructureKind.TOOL_CALLS:  # every call validates: strict schemas exactly, others leniently
        bodies = [_call_rule(i, t, _arguments_schema(t), lenient=t.name not in strict) for i, t in enumerate(tools)]
        several = forced == "required" and parallel_tool_calls
        top = 'start: call ("\\n" call)*' if several else "start: call"
        rules = [top, f"call: {json.dumps(CALL_OPEN)} call_body"]
    else:  # free text; a call to a strict function validates, any other call is a well-formed call
        bodies = [
            _call_rule(i, t, _arguments_schema(t) if t.name in strict else {"type": "object"}, lenient=False)
            for i, t in enumerate(tools)
        ]
        rules = [
            f"start: (call_head call_body){'*' if parallel_tool_calls else '?'} TAIL",  # TAIL opens no call
            f"call_head[lazy]: TEXT {json.dumps(CALL_OPEN)}",
            "TEXT: /(?s:.*)/",
            f"TAIL: /(?s:.*)/ & ~/(?s:.*){CALL_OPEN}(?s:.*)/",
        ]
    rules.append("call_body: " + " | ".join(f"fn_{i}" for i in range(len(tools))))
    from llguidance import LLMatcher

    grammar = LLMatcher.grammar_from_lark("\n".join([*rules, *bodies]))
    _check(grammar, "tools", "the tool-call grammar")
    return Structure(kind, grammar, "tools")


def _json_grammar(response_format: Mapping[str, Any]) -> str:
    from llguidance import LLMatcher

    if response_format.get("type") == "json_object":
        return str(LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS))
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping):
        raise InvalidInput("response_format json_schema needs a json_schema object", param="response_format.json_schema")
    schema = spec.get("schema")
    if not isinstance(schema, Mapping):
        raise InvalidInput("response_format.json_schema.schema must be a JSON schema object",
                           param="response_format.json_schema.schema")
    strict = bool(spec.get("strict"))
    _meta_check(schema, "response_format")
    try:
        grammar = LLMatcher.grammar_from_json_schema(dict(schema), defaults=JSON_OPTIONS,
                                                     overrides={"lenient": not strict})
    except ValueError as err:
        raise InvalidInput(f"response_format: the schema cannot be compiled: {first_line(err)}",
                           param="response_format") from None
    _check(grammar, "response_format", "the json_schema" + (" (strict)" if strict else ""))
    return str(grammar)


def _arguments_schema(tool: ToolSpec) -> dict[str, Any]:
    """A function's parameters as the schema of its arguments object (``type: object`` if unset)."""
    params = dict(tool.parameters)
    kind = params.get("type")
    if kind is None:
        params["type"] = "object"
    elif kind != "object":
        raise InvalidInput(f"tools: the parameters of function {tool.name!r} must be an object schema, not {kind!r}",
                           param="tools")
    _meta_check(params, "tools", f"function {tool.name!r}")
    return params


def _call_rule(i: int, tool: ToolSpec, schema: Mapping[str, Any], *, lenient: bool) -> str:
    """Rules ``fn_i`` (one call of ``tool``) and ``args_i`` (its arguments, an inline JSON schema)."""
    guidance = schema.get("x-guidance")
    options = {**JSON_OPTIONS, **(guidance if isinstance(guidance, Mapping) else {}), "lenient": lenient}
    args = {**schema, "x-guidance": options}
    from llguidance import LLMatcher

    alone = LLMatcher.grammar_from_json_schema(args)  # checked alone, so an error names the function
    _check(alone, "tools", f"the parameters of function {tool.name!r}")
    head = "\n" + json.dumps({"name": tool.name, "arguments": 0})[:-2]  # '{"name": "f", "arguments": '
    return f"fn_{i}: {json.dumps(head)} args_{i} {json.dumps('}' + chr(10) + CALL_CLOSE)}\nargs_{i}: %json {json.dumps(args)}"


def _meta_check(schema: Mapping[str, Any], param: str, what: str = "the schema") -> None:
    """``InvalidInput`` when ``schema`` is not a valid JSON schema (checked against its meta-schema)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        where = "/".join(str(p) for p in err.path)
        raise InvalidInput(f"{param}: {what} is not a valid JSON schema{f' at {where}' if where else ''}: "
                           f"{first_line(err.message)}", param=param) from None


def _check(grammar: str, param: str, what: str) -> None:
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidInput(f"{param}: {what} cannot be enforced: {first_line(error)}", param=param)


class GrammarConstraint:
    """``TokenConstraint`` over one llguidance matcher: one sequence's position in its grammar."""

    def __init__(self, matcher: LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab = vocab_size

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """Bool ``[vocab_size]``: the tokens the grammar allows next (stop tokens where it may end)."""
        import numpy as np
        import torch

        if self._matcher.is_error():
            raise ModelError(f"grammar matcher failed: {self._matcher.get_error()}")
        bits = np.unpackbits(np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        out = torch.zeros(vocab_size, dtype=torch.bool)
        n = min(vocab_size, self._vocab)
        out[:n] = torch.from_numpy(bits[:n].view(np.bool_))
        return out

    def accept(self, token: int) -> None:
        """Advance past ``token``; ``ModelError`` if the grammar does not allow it."""
        if not self._matcher.consume_token(int(token)):
            raise ModelError(f"grammar rejected token {token}: {self._matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """Whether the grammar is complete (nothing but a stop token may follow) or has failed."""
        return bool(self._matcher.is_stopped())


class Grammars:
    """One tokenizer's grammars: its llguidance tokenizer and an LRU cache of compiled matchers.

    Args:
        tokenizer: the model's Hugging Face tokenizer (a fast one).
        stop_ids: token ids that end a reply; the grammar allows them where the text may end.
        cache_size: compiled grammars kept.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_ids: Sequence[int], *, cache_size: int = 128) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._llg: LLTokenizer | None = None
        self._cache: OrderedDict[str, LLMatcher] = OrderedDict()

    def _llg_tokenizer(self, param: str) -> LLTokenizer:
        with self._lock:
            if self._llg is None:
                import llguidance.hf

                try:
                    self._llg = llguidance.hf.from_tokenizer(cast(Any, self.tokenizer), eos_token=self.stop_ids or None)
                except (ValueError, TypeError) as err:
                    raise InvalidInput(f"{param}: structured outputs are not available for this model's tokenizer "
                                       f"({first_line(err)})", param=param) from None
            return self._llg

    def compiled(self, structure: Structure) -> LLMatcher:
        """The compiled matcher of ``structure`` (from the cache when it was compiled before)."""
        with self._lock:
            hit = self._cache.get(structure.grammar)
            if hit is not None:
                self._cache.move_to_end(structure.grammar)
                return hit
        from llguidance import LLMatcher

        matcher = LLMatcher(self._llg_tokenizer(structure.param), structure.grammar, log_level=0)
        if matcher.is_error():
            raise InvalidInput(f"{structure.param}: the grammar cannot be compiled: {first_line(matcher.get_error())}",
                               param=structure.param)
        for warning in matcher.get_grammar_warnings():
            log.debug("grammar warning (%s): %s", structure.param, warning)
        with self._lock:
            self._cache[structure.grammar] = matcher
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return matcher

    def factory(self, structure: Structure) -> Callable[[int], GrammarConstraint]:
        """Compile now (``InvalidInput`` naming ``structure.param``); build a constraint per sample later."""
        template = self.compiled(structure)
        vocab = self._llg_tokenizer(structure.param).vocab_size

        def build(index: int) -> GrammarConstraint:
            return GrammarConstraint(template.deep_copy(), vocab)

        return build

    def __len__(self) -> int:
        return len(self._cache)


__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "JSON_OPTIONS",
    "GrammarConstraint",
    "Grammars",
    "Structure",
    "StructureKind",
    "plan",
    "structure_kind",
]

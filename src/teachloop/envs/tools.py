"""Tools an environment offers the model, executed by the environment during a rollout.

``@tool`` turns a typed Python function into a ``Tool``: the ``ToolSpec``
(name, description from the docstring's first paragraph, a JSON schema from
the type hints and the ``Args:`` section) plus the function. Parameters named
``task`` and ``state`` are *injected* by the rollout (the current ``Task`` and
the episode's state dict) and hidden from the model.

What the model did wrong is the model's problem and goes back to it as the
tool message ``error: …`` (unknown tool, arguments that are not JSON or do not
fit the signature, an argument of the wrong JSON type -- ``"7"`` for an
``int`` --, or a ``ToolError`` the tool raises on purpose). Any other
exception inside the tool is the environment's bug: ``call`` lets it through
and the rollout records ``Failure(kind="tool")``.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from teachloop.core.chat import ToolSpec
from teachloop.core.rl import Task

INJECTED = frozenset({"task", "state"})
_JSON_TYPES: dict[Any, str] = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array",
                               dict: "object"}


class ToolError(Exception):
    """Raised by a tool to tell the model its call was wrong; the message goes back to the model."""


def _json_type(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _json_type(args[0]) if len(args) == 1 else {}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(hint))}
    base = origin or hint
    return {"type": _JSON_TYPES[base]} if base in _JSON_TYPES else {}


def _arg_docs(doc: str) -> dict[str, str]:
    out: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            in_args = True
            continue
        m = re.match(r"\s+(\w+)(?:\s*\(.*?\))?:\s*(.+)", line) if in_args else None
        if m:
            out[m.group(1)] = m.group(2).strip()
        elif in_args and line.strip() and not line.startswith((" ", "\t")):
            in_args = False
    return out


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _type_errors(properties: dict[str, Any], args: dict[str, Any]) -> list[str]:
    """What in ``args`` breaks the declared JSON types or enums (``None`` is allowed: optional arguments)."""
    out = []
    for key, value in args.items():
        schema = properties.get(key) or {}
        kind = schema.get("type")
        if value is None:
            continue
        if kind in _CHECKS and not _CHECKS[kind](value):
            out.append(f"argument {key!r} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                       f"got {json.dumps(value)[:50]}")
        elif "enum" in schema and value not in schema["enum"]:
            out.append(f"argument {key!r} must be one of {schema['enum']}, got {json.dumps(value)[:50]}")
    return out


@dataclass(frozen=True)
class Tool:
    """A ``ToolSpec`` and the function that executes it."""

    spec: ToolSpec
    fn: Callable[..., Any]

    @property
    def name(self) -> str:
        """The tool's name, as the model calls it."""
        return self.spec.name

    async def call(self, arguments: str, *, task: Task, state: dict[str, Any]) -> str:
        """Run the tool on the model's JSON ``arguments``; returns the text shown to the model."""
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as err:
            return f"error: arguments are not valid JSON ({err.msg})"
        if not isinstance(args, dict):
            return "error: arguments must be a JSON object"
        sig = inspect.signature(self.fn)
        if any(k in INJECTED for k in args):
            return f"error: unknown argument(s) {sorted(set(args) & INJECTED)}"
        hidden = {k: v for k, v in (("task", task), ("state", state)) if k in sig.parameters}
        try:
            sig.bind(**args, **hidden)
        except TypeError as err:
            return f"error: {err}"
        wrong = _type_errors(self.spec.parameters.get("properties", {}), args)
        if wrong:
            return "error: " + "; ".join(wrong)
        try:
            out = self.fn(**args, **hidden)
            if inspect.isawaitable(out):
                out = await out
        except ToolError as err:
            return f"error: {err}"
        return out if isinstance(out, str) else json.dumps(out, default=str)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None) -> Any:
    """Decorator: ``@tool`` or ``@tool(name=..., description=...)`` makes a ``Tool`` from a typed function."""

    def build(f: Callable[..., Any]) -> Tool:
        doc = inspect.getdoc(f) or ""
        hints = typing.get_type_hints(f)
        arg_docs = _arg_docs(doc)
        props: dict[str, Any] = {}
        required = []
        for pname, param in inspect.signature(f).parameters.items():
            if pname in INJECTED:
                continue
            props[pname] = _json_type(hints.get(pname, Any)) | ({"description": arg_docs[pname]} if pname in arg_docs else {})
            if param.default is inspect.Parameter.empty:
                required.append(pname)
        summary = description if description is not None else doc.split("\n\n")[0].strip()
        schema = {"type": "object", "properties": props, "required": required}
        return Tool(ToolSpec(name=name or f.__name__, description=summary, parameters=schema), f)

    return build(fn) if fn is not None else build


__all__ = ["INJECTED", "Tool", "ToolError", "tool"]

"""Structured-output graders: JSON that validates against a schema, plus field match.

``JsonSchema`` finds the JSON value in a reply (the whole reply, the last
fenced code block, or the last balanced ``{…}``/``[…]``), validates it with
``jsonschema`` and, when expected values are known, scores the fraction of
expected fields that match. Unparseable or invalid output scores 0. The
schema comes from the grader or ``task.info["schema"]``; expected values from
the grader, ``task.info["expected"]`` or the task's answer parsed as JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema

from teachloop.envs.graders.base import Grader, Sample, Score

_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)


def _balanced_tail(text: str) -> str | None:
    """The last balanced JSON object or array in ``text`` (string-aware)."""
    for end in range(len(text) - 1, -1, -1):
        close = text[end]
        if close not in "}]":
            continue
        opener = "{" if close == "}" else "["
        depth, in_str = 0, False
        for i in range(end, -1, -1):
            c = text[i]
            if in_str:
                if c == '"' and not (i > 0 and text[i - 1] == "\\"):
                    in_str = False
                continue
            if c == '"':
                in_str = True
            elif c == close:
                depth += 1
            elif c == opener:
                depth -= 1
                if depth == 0:
                    return text[i : end + 1]
        return None
    return None


def extract_json(text: str) -> Any:
    """The JSON value in ``text``; raises ``ValueError`` if there is none."""
    candidates = [text.strip()]
    fences = _FENCE.findall(text)
    if fences:
        candidates.append(fences[-1].strip())
    tail = _balanced_tail(text[-20_000:])
    if tail:
        candidates.append(tail)
    for cand in candidates:
        try:
            return json.loads(cand)
        except (json.JSONDecodeError, RecursionError):
            continue
    raise ValueError("no JSON value found")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


class JsonSchema(Grader):
    """Schema validity, then the fraction of expected fields that match.

    Args:
        schema: JSON schema; default ``task.info["schema"]``.
        expected: expected object; default ``task.info["expected"]`` or the answer as JSON.
        fields: which top-level fields to compare (default: all keys of ``expected``);
            an empty list means validity only.
    """

    name = "json_schema"

    def __init__(
        self,
        schema: dict[str, Any] | None = None,
        *,
        expected: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ):
        if schema is not None:
            jsonschema.Draft202012Validator.check_schema(schema)
        self.schema, self.expected, self.fields = schema, expected, fields

    def _expected(self, sample: Sample) -> dict[str, Any] | None:
        if self.expected is not None:
            return self.expected
        info = sample.task.info
        if isinstance(info.get("expected"), dict):
            return dict(info["expected"])
        if sample.task.answer:
            try:
                parsed = json.loads(sample.task.answer)
            except json.JSONDecodeError:
                return None
            return parsed if isinstance(parsed, dict) else None
        return None

    def score(self, sample: Sample) -> Score:
        schema = self.schema if self.schema is not None else sample.task.info.get("schema")
        if not isinstance(schema, dict):
            raise ValueError("json_schema: no schema given and task.info['schema'] is missing")
        try:
            value = extract_json(sample.completion)
        except ValueError:
            return Score(value=0.0, details={"error": "no JSON in reply"})
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
        if errors:
            return Score(value=0.0, details={"error": errors[0].message[:200]})
        expected = self._expected(sample)
        fields = list(self.fields) if self.fields is not None else list(expected or {})
        if not fields or expected is None or not isinstance(value, dict):
            return Score(value=1.0)
        hits = [f for f in fields if f in value and f in expected and _same(value[f], expected[f])]
        return Score(value=len(hits) / len(fields), details={"matched": hits})


__all__ = ["JsonSchema", "extract_json"]

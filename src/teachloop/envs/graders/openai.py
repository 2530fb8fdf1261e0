"""OpenAI reinforcement-fine-tuning grader JSON, imported as teachloop graders.

``from_openai_grader(spec)`` builds a ``Grader`` from the declarative JSON of
``string_check``, ``text_similarity``, ``score_model``, ``label_model``,
``python`` and ``multi`` graders. Templates ``{{item.<path>}}`` read the
dataset row (``task.info``, with ``answer`` added from the task), and
``{{sample.output_text}}``, ``{{sample.output_json.<path>}}`` and
``{{sample.output_tools}}`` read the reply. Model graders need a judge
``ChatCompleter``; without one, building them raises ``InvalidInput``.

``python`` graders run their ``grade(sample, item)`` *in this process* in a
worker thread under the timeout: this is not a sandbox. Only import grader
JSON you would run as code. ``multi``'s ``calculate_output`` is evaluated by a
small AST evaluator (numbers, grader names, + - * / ^ **, min max abs floor
ceil exp sqrt log), never ``eval``.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput
from teachloop.core.rl import ChatCompleter
from teachloop.core.sampling import SamplingParams
from teachloop.envs.graders.base import Grader, Sample, Score
from teachloop.envs.graders.function import FunctionGrader
from teachloop.envs.graders.similarity import similarity
from teachloop.envs.graders.structured import extract_json

_TEMPLATE = re.compile(r"\{\{\s*([a-zA-Z_][\w.]*)\s*\}\}")


def _sample_dict(sample: Sample) -> dict[str, Any]:
    try:
        output_json: Any = extract_json(sample.completion)
    except ValueError:
        output_json = None
    last = next((m for m in reversed(sample.messages) if m.role == "assistant"), None)
    tools = [{"name": c.name, "arguments": c.arguments} for c in (last.tool_calls if last else ())]
    return {"output_text": sample.completion, "output_json": output_json, "output_tools": tools}


def _item(sample: Sample) -> dict[str, Any]:
    item = dict(sample.task.info)
    if sample.task.answer is not None:
        item.setdefault("answer", sample.task.answer)
    return item


def render(template: str, sample: Sample) -> str:
    """Fill ``{{item.x}}`` / ``{{sample.y}}`` placeholders; missing paths render as ''."""
    roots = {"item": _item(sample), "sample": _sample_dict(sample)}

    def sub(match: re.Match[str]) -> str:
        value: Any = roots
        for part in match.group(1).split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value)

    return _TEMPLATE.sub(sub, template)


class StringCheck(Grader):
    """``string_check``: eq, ne, like (contains), ilike (contains, any case) -> 1.0 / 0.0."""

    def __init__(self, spec: dict[str, Any]):
        self.name, self.input, self.reference, self.op = spec["name"], spec["input"], spec["reference"], spec["operation"]
        if self.op not in ("eq", "ne", "like", "ilike"):
            raise InvalidInput(f"string_check {self.name!r}: operation must be eq, ne, like or ilike")

    def score(self, sample: Sample) -> float:
        got, ref = render(self.input, sample), render(self.reference, sample)
        ops: dict[str, Callable[[str, str], bool]] = {
            "eq": operator.eq, "ne": operator.ne,
            "like": lambda a, b: b in a, "ilike": lambda a, b: b.casefold() in a.casefold(),
        }
        return float(ops[self.op](got, ref))


class TextSimilarity(Grader):
    """``text_similarity``: a similarity metric in [0, 1]; ``pass_threshold`` is kept in details."""

    def __init__(self, spec: dict[str, Any]):
        self.name, self.input, self.reference = spec["name"], spec["input"], spec["reference"]
        self.metric, self.threshold = spec["evaluation_metric"], spec.get("pass_threshold")
        similarity(self.metric, "", "")  # reject unknown metrics now

    def score(self, sample: Sample) -> Score:
        value = similarity(self.metric, render(self.input, sample), render(self.reference, sample))
        details = {} if self.threshold is None else {"passed": value >= float(self.threshold)}
        return Score(value=value, details=details)


class ModelGrader(Grader):
    """``score_model`` (a number in ``range``) and ``label_model`` (1.0 for a passing label)."""

    timeout_s = 120.0

    def __init__(self, spec: dict[str, Any], judge: ChatCompleter | None):
        if judge is None:
            raise InvalidInput(f"{spec['type']} grader {spec['name']!r} needs a judge endpoint (pass judge=...)")
        self.spec, self.judge, self.name = spec, judge, spec["name"]
        self.range = tuple(spec.get("range", (0.0, 1.0)))
        sp = spec.get("sampling_params") or {}
        self.params = SamplingParams(
            max_tokens=sp.get("max_completions_tokens") or 512, temperature=sp.get("temperature", 0.0) or 0.0,
            top_p=sp.get("top_p", 1.0) or 1.0, seed=sp.get("seed"),
        )

    async def ascore(self, sample: Sample) -> Score:
        messages = [Message(role=m.get("role", "user"), content=render(_text(m.get("content", "")), sample))
                    for m in self.spec["input"]]
        if self.spec["type"] == "label_model":
            labels = list(self.spec["labels"])
            messages.append(Message(role="system", content=f"Answer with exactly one label from: {', '.join(labels)}."))
        [reply] = await self.judge.complete(messages, self.params, n=1)
        text = reply.message.content
        if self.spec["type"] == "label_model":
            found = [lb for lb in labels if re.search(rf"\b{re.escape(lb)}\b", text)]
            if not found:
                raise ValueError(f"label_model reply names no label: {text[-200:]!r}")
            return Score(value=float(found[-1] in self.spec["passing_labels"]), details={"label": found[-1]})
        try:
            parsed = extract_json(text)
            value = float(parsed["result"] if isinstance(parsed, dict) else parsed)
        except (ValueError, KeyError, TypeError):
            numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
            if not numbers:
                raise ValueError(f"score_model reply has no score: {text[-200:]!r}") from None
            value = float(numbers[-1])
        lo, hi = self.range
        return Score(value=min(max(value, lo), hi), details={"judge": text[-500:]})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "input_text", "text": ...}]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def python_grader(spec: dict[str, Any]) -> FunctionGrader:
    """``python``: compile ``source`` (which defines ``grade(sample, item)``) and wrap it."""
    namespace: dict[str, Any] = {"__name__": f"openai_grader_{spec['name']}"}
    try:
        exec(compile(spec["source"], f"<grader {spec['name']}>", "exec"), namespace)
    except Exception as err:
        raise InvalidInput(f"python grader {spec['name']!r} does not compile: {err}") from None
    grade = namespace.get("grade")
    if not callable(grade):
        raise InvalidInput(f"python grader {spec['name']!r} defines no grade(sample, item) function")

    def run(sample: Sample) -> float:
        return float(grade(_sample_dict(sample), _item(sample)))

    return FunctionGrader(run, name=spec["name"], timeout_s=float(spec.get("timeout_s", 30)))


_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow, ast.BitXor: operator.pow, ast.Mod: operator.mod,
}
_FUNCS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil,
    "exp": math.exp, "sqrt": math.sqrt, "log": math.log, "round": round,
}


def evaluate_formula(formula: str, values: dict[str, float]) -> float:
    """Evaluate a ``calculate_output`` formula over grader values, safely."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in values:
            return values[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return float(_BINOPS[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
            return float(_FUNCS[node.func.id](*(ev(a) for a in node.args)))
        raise ValueError(f"calculate_output: unsupported expression {ast.dump(node)[:80]}")

    return ev(ast.parse(formula, mode="eval"))


class MultiGrader(Grader):
    """``multi``: named sub-graders combined by the ``calculate_output`` formula."""

    timeout_s = None

    def __init__(self, spec: dict[str, Any], judge: ChatCompleter | None):
        self.name, self.formula = spec["name"], spec["calculate_output"]
        graders = spec["graders"]
        if not isinstance(graders, dict) or not graders:
            raise InvalidInput(f"multi grader {self.name!r}: graders must be a non-empty object mapping a name to a "
                               f"grader, e.g. {{\"exact\": {{\"type\": \"string_check\", ...}}}}; got "
                               f"{type(graders).__name__}")
        bad = [k for k, g in graders.items() if not isinstance(g, dict) or not str(k).isidentifier()]
        if bad:
            raise InvalidInput(f"multi grader {self.name!r}: graders {bad} must be grader objects under names usable "
                               "in calculate_output (letters, digits, _)")
        if not isinstance(self.formula, str) or not self.formula.strip():
            raise InvalidInput(f"multi grader {self.name!r}: calculate_output must be a formula string")
        self.graders = {key: from_openai_grader({"name": key, **g}, judge=judge) for key, g in graders.items()}
        try:  # reject bad formulas now (syntax, unknown names, functions, 1/(a-b) ...)
            evaluate_formula(self.formula, dict.fromkeys(self.graders, 1.0))
        except (ArithmeticError, ValueError, TypeError, SyntaxError) as err:
            raise InvalidInput(f"multi grader {self.name!r}: calculate_output {self.formula!r} fails with every "
                               f"grader at 1: {type(err).__name__}: {err}") from None

    async def ascore(self, sample: Sample) -> Score:
        graded = await asyncio.gather(*(g.grade(sample) for g in self.graders.values()))
        scores = dict(zip(self.graders, graded, strict=True))
        values = {k: s.value for k, s in scores.items()}
        failure = next((s.failure for s in scores.values() if s.failure), None)
        try:
            value = evaluate_formula(self.formula, values)
        except (ArithmeticError, ValueError, TypeError) as err:
            return Score.failed(f"multi grader {self.name!r}: calculate_output {self.formula!r} failed on {values}: "
                                f"{type(err).__name__}: {err}", name=self.name)
        return Score(value=value, components=values, failure=failure)


_REQUIRED = {
    "string_check": ("input", "reference", "operation"),
    "text_similarity": ("input", "reference", "evaluation_metric"),
    "score_model": ("input", "model"),
    "label_model": ("input", "model", "labels", "passing_labels"),
    "python": ("source",),
    "multi": ("graders", "calculate_output"),
}


def from_openai_grader(spec: dict[str, Any], *, judge: ChatCompleter | None = None) -> Grader:
    """A teachloop grader for an OpenAI grader object; raises ``InvalidInput`` on a malformed one."""
    if not isinstance(spec, dict) or spec.get("type") not in _REQUIRED:
        got = spec.get("type") if isinstance(spec, dict) else type(spec).__name__
        raise InvalidInput(f"unknown OpenAI grader type {got!r}; expected one of {sorted(_REQUIRED)}")
    spec = {"name": spec["type"], **spec}
    missing = [f for f in _REQUIRED[spec["type"]] if f not in spec]
    if missing:
        raise InvalidInput(f"{spec['type']} grader {spec['name']!r} is missing {missing}")
    try:
        if spec["type"] == "string_check":
            return StringCheck(spec)
        if spec["type"] == "text_similarity":
            return TextSimilarity(spec)
        if spec["type"] in ("score_model", "label_model"):
            return ModelGrader(spec, judge)
        if spec["type"] == "python":
            return python_grader(spec)
        return MultiGrader(spec, judge)
    except InvalidInput:
        raise
    except (ValueError, SyntaxError, TypeError, KeyError, AttributeError, ArithmeticError) as err:
        raise InvalidInput(f"{spec['type']} grader {spec['name']!r}: {type(err).__name__}: {err}") from None


__all__ = ["MultiGrader", "StringCheck", "TextSimilarity", "evaluate_formula", "from_openai_grader", "render"]

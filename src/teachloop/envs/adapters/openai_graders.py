"""A no-code environment from an OpenAI grader JSON file and a JSONL of items.

Two file shapes are accepted:

- a bare OpenAI grader object (``{"type": "string_check", ...}``); the items are
  the sibling ``<stem>.jsonl`` unless ``items=`` names another file;
- a wrapper ``{"name", "grader": {...}, "items": "items.jsonl" | [...],
  "answer_field": "answer", "reward_range": [0, 1], "system_prompt": "..."}``.

Each item (one JSON object a line) becomes a task: the prompt is its
``messages`` (OpenAI chat messages), or else its ``prompt``/``input``/
``question`` string; its answer is ``answer_field`` (default: ``answer``,
then ``reference_answer``); the whole row is ``info``, so grader templates
read it as ``{{item.<field>}}``. Tasks come in file order for seed 0 and in
a seeded shuffle otherwise; ids are ``<name>-<line>``. Model graders need a
``judge`` completer. Bad files raise ``InvalidInput`` naming the problem: a
``reward_range`` that is not two numbers low < high, empty or non-object
items, a grader that is not an object. ``items_path`` is the items file read
(``None`` for inline items); the environment's digest covers it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput
from teachloop.core.rl import ChatCompleter, Task
from teachloop.envs.base import Environment
from teachloop.envs.graders.openai import from_openai_grader


def _read_items(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InvalidInput(f"items file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidInput(f"{path}:{n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InvalidInput(f"{path}:{n}: each line must be a JSON object")
        rows.append(row)
    if not rows:
        raise InvalidInput(f"{path}: no items")
    return rows


def _range(value: Any, where: str) -> tuple[float, float]:
    """``[low, high]`` as two finite floats with low < high; ``InvalidInput`` naming ``where`` otherwise."""
    ok = (isinstance(value, list | tuple) and len(value) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok or value[0] >= value[1]:
        raise InvalidInput(f"{where} must be two numbers [low, high] with low < high, got {value!r}")
    return float(value[0]), float(value[1])


def _prompt(row: dict[str, Any], system_prompt: str | None, where: str) -> tuple[Message, ...]:
    out = [Message(role="system", content=system_prompt)] if system_prompt else []
    if isinstance(row.get("messages"), list):
        for m in row["messages"]:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise InvalidInput(f"{where}: messages must be chat messages with role system/user/assistant")
            out.append(Message(role=m["role"], content=str(m.get("content") or "")))
        return tuple(out)
    for key in ("prompt", "input", "question"):
        if isinstance(row.get(key), str):
            return (*out, Message(role="user", content=row[key]))
    raise InvalidInput(f"{where}: an item needs 'messages' or a 'prompt'/'input'/'question' string")


class GraderJsonEnv(Environment):
    """Items from a JSONL file, scored by an imported OpenAI grader (see the module docstring)."""

    name = "grader_json"
    version = "1.0.0"

    def __init__(self, path: str | Path, *, items: str | Path | None = None, judge: ChatCompleter | None = None):
        path = Path(path)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InvalidInput(f"cannot read grader JSON {path}: {err}") from None
        if not isinstance(spec, dict):
            raise InvalidInput(f"{path}: expected a JSON object")
        wrapper = "grader" in spec
        grader_spec = spec["grader"] if wrapper else spec
        if not isinstance(grader_spec, dict):
            raise InvalidInput(f"{path}: grader must be a JSON object, got {type(grader_spec).__name__}")
        self.env_name = str(spec.get("name") or path.stem) if wrapper else path.stem
        self.grader = from_openai_grader(grader_spec, judge=judge)
        self.system_prompt = spec.get("system_prompt") if wrapper else None
        self.answer_field = spec.get("answer_field") if wrapper else None
        if wrapper and "reward_range" in spec:
            self.reward_range = _range(spec["reward_range"], f"{path}: reward_range")
        elif grader_spec.get("type") == "score_model":
            self.reward_range = _range(grader_spec.get("range", (0, 1)), f"{path}: score_model range")
        source = items if items is not None else (spec.get("items") if wrapper else None)
        self.items_path: Path | None = None
        if isinstance(source, list):
            bad = [n for n, r in enumerate(source, 1) if not isinstance(r, dict)]
            if bad:
                raise InvalidInput(f"{path}: items {bad[:5]} are not JSON objects")
            if not source:
                raise InvalidInput(f"{path}: items is empty; an environment needs at least one item")
            self.rows = list(source)
        elif source is None or isinstance(source, str | Path):
            self.items_path = path.parent / source if source is not None else path.with_suffix(".jsonl")
            self.rows = _read_items(self.items_path)
        else:
            raise InvalidInput(f"{path}: items must be a JSONL file name or a list of objects, "
                               f"got {type(source).__name__}")
        self._base = [self._task(i, row) for i, row in enumerate(self.rows)]  # validate every row now

    def _task(self, i: int, row: dict[str, Any]) -> Task:
        fields = [self.answer_field] if self.answer_field else ["answer", "reference_answer"]
        answer = next((row[f] for f in fields if row.get(f) is not None), None)
        return Task(id=f"{self.env_name}-{i + 1}", prompt=_prompt(row, self.system_prompt, f"item {i + 1}"),
                    answer=None if answer is None else (answer if isinstance(answer, str) else json.dumps(answer)),
                    info=row)

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        order = list(range(len(self._base)))
        if seed:
            random.Random(seed).shuffle(order)
        return iter([self._base[i] for i in order])


__all__ = ["GraderJsonEnv"]

"""Answer values and item payloads per task type: validate them, diff corrections, score against gold.

``check_payload(task_type, spec, item)`` refuses an item its task type cannot be worked on
(a pairwise item without exactly two candidates, a correction without the model's reply, a gold
answer on a type that cannot be scored). ``check_value(task_type, spec, payload, value)`` returns
the answer value normalised (only its known fields) and, for corrections, the unified diff from
the model's reply; anything else is ``InvalidInput`` naming the field: an empty demonstration, a
rubric score off its scale, a ranking that is not a permutation of the candidates, a correction
identical to the model's reply when the template forbids it. Text is kept exactly as written
(HTML and script included: it is data, shown escaped). ``gold_matches`` scores an answer against
a gold one; ``labels`` gives the categorical labels agreement and aggregation read. Pure.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable
from typing import Any

from teachloop.core.errors import InvalidInput
from teachloop.core.work import SCORABLE, ItemIn, TaskType, TemplateSpec

#: Rubric gold: every criterion within this many points of the gold score.
RUBRIC_TOLERANCE = 1


def _text(value: dict[str, Any], key: str, spec: TemplateSpec, *, required: bool = True) -> str:
    raw = value.get(key)
    if raw is None and not required:
        return ""
    if not isinstance(raw, str):
        raise InvalidInput(f"value.{key} must be text", param=f"value.{key}")
    if required and not raw.strip():
        raise InvalidInput(f"value.{key} is empty; write the text before submitting", param=f"value.{key}")
    if len(raw) > spec.max_chars:
        raise InvalidInput(f"value.{key} is {len(raw)} characters; the template allows {spec.max_chars}",
                           param=f"value.{key}")
    return raw


def _only(value: dict[str, Any], keys: set[str]) -> None:
    if not isinstance(value, dict):
        raise InvalidInput("value must be an object", param="value")
    extra = sorted(set(value) - keys)
    if extra:
        raise InvalidInput(f"value has unknown fields {extra}; this task takes {sorted(keys)}",
                           param=f"value.{extra[0]}")


def check_payload(task_type: TaskType, spec: TemplateSpec, item: ItemIn) -> None:
    """``InvalidInput`` unless ``item`` can be worked as a ``task_type`` task (gold answer included)."""
    ids = [c.id for c in item.candidates]
    if len(set(ids)) != len(ids):
        raise InvalidInput("candidate ids must be unique", param="candidates")
    for i, m in enumerate(item.prompt):
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InvalidInput(f"prompt[{i}] must be a message with text role and content", param=f"prompt.{i}")
    if task_type is not TaskType.AUTHORING and not item.prompt:
        raise InvalidInput(f"a {task_type.value} item needs prompt messages", param="prompt")
    if task_type is TaskType.PAIRWISE and len(ids) != 2:
        raise InvalidInput("a pairwise item needs exactly two candidates", param="candidates")
    if task_type is TaskType.RANKED and len(ids) < 2:
        raise InvalidInput("a ranked item needs at least two candidates", param="candidates")
    if task_type in (TaskType.RUBRIC, TaskType.CORRECTION) and not (item.reply or "").strip():
        raise InvalidInput(f"a {task_type.value} item needs the model's reply", param="reply")
    if task_type is TaskType.RUBRIC and not spec.criteria:
        raise InvalidInput("a rubric project's template needs criteria", param="criteria")
    payload = item.model_dump(exclude={"gold_answer", "source_trace_id"})
    if item.suggestion is not None:
        try:
            check_value(task_type, spec, payload, item.suggestion, allow_same=True)
        except InvalidInput as err:
            raise InvalidInput(f"suggestion: {err}", param="suggestion") from None
    if item.gold_answer is not None:
        if task_type not in SCORABLE:
            raise InvalidInput(f"gold items need a task type with a scorable answer (pairwise, ranked, rubric); "
                               f"{task_type.value} answers are free text", param="gold_answer")
        try:
            check_value(task_type, spec, payload, item.gold_answer)
        except InvalidInput as err:
            raise InvalidInput(f"gold_answer: {err}", param="gold_answer") from None


def check_value(task_type: TaskType, spec: TemplateSpec, payload: dict[str, Any], value: dict[str, Any], *,
                allow_same: bool = False) -> tuple[dict[str, Any], str | None]:
    """(the value normalised, the correction's unified diff or None); ``InvalidInput`` naming the field."""
    candidates = [c["id"] for c in payload.get("candidates") or []]
    if task_type in (TaskType.DEMONSTRATION, TaskType.CORRECTION):
        _only(value, {"reply"})
        reply = _text(value, "reply", spec)
        if task_type is TaskType.DEMONSTRATION:
            return {"reply": reply}, None
        original = str(payload.get("reply") or "")
        if reply == original and not (spec.allow_unchanged or allow_same):
            raise InvalidInput("the correction is identical to the model's reply; change it (this template "
                               "does not accept an unchanged reply)", param="value.reply")
        diff = "".join(difflib.unified_diff(original.splitlines(keepends=True), reply.splitlines(keepends=True),
                                            "model", "correction"))
        return {"reply": reply}, diff
    if task_type is TaskType.PAIRWISE:
        _only(value, {"choice"})
        choice = value.get("choice")
        if choice not in candidates:
            raise InvalidInput(f"value.choice must be one of {candidates}, got {choice!r}", param="value.choice")
        return {"choice": choice}, None
    if task_type is TaskType.RANKED:
        _only(value, {"order"})
        order = value.get("order")
        if not isinstance(order, list) or sorted(map(str, order)) != sorted(candidates) or len(order) != len(
                candidates):
            raise InvalidInput(f"value.order must list every candidate once, best first: {candidates}",
                               param="value.order")
        return {"order": [str(o) for o in order]}, None
    if task_type is TaskType.RUBRIC:
        _only(value, {"scores", "comment"})
        scores = value.get("scores")
        if not isinstance(scores, dict):
            raise InvalidInput("value.scores must map each criterion to a score", param="value.scores")
        out: dict[str, int] = {}
        for c in spec.criteria:
            score = scores.get(c.id)
            if isinstance(score, bool) or not isinstance(score, int):
                raise InvalidInput(f"value.scores.{c.id} must be a whole number from {c.low} to {c.high}",
                                   param=f"value.scores.{c.id}")
            if not c.low <= score <= c.high:
                raise InvalidInput(f"value.scores.{c.id} is {score}, off its scale {c.low}-{c.high}",
                                   param=f"value.scores.{c.id}")
            out[c.id] = score
        extra = sorted(set(scores) - set(out))
        if extra:
            raise InvalidInput(f"value.scores names unknown criteria {extra}", param=f"value.scores.{extra[0]}")
        result: dict[str, Any] = {"scores": out}
        if value.get("comment") is not None:
            result["comment"] = _text(value, "comment", spec, required=False)
        return result, None
    # authoring
    _only(value, {"prompt", "answer", "rubric"})
    rubric = value.get("rubric", [])
    if not isinstance(rubric, list) or not all(isinstance(r, str) and r.strip() for r in rubric) or len(rubric) > 30:
        raise InvalidInput("value.rubric must be a list of at most 30 non-empty criteria", param="value.rubric")
    return {"prompt": _text(value, "prompt", spec), "answer": _text(value, "answer", spec),
            "rubric": list(rubric)}, None


def gold_matches(task_type: TaskType, gold: dict[str, Any], value: dict[str, Any]) -> bool:
    """Whether ``value`` agrees with the gold answer (rubric: every criterion within ``RUBRIC_TOLERANCE``)."""
    if task_type is TaskType.PAIRWISE:
        return bool(value.get("choice") == gold.get("choice"))
    if task_type is TaskType.RANKED:
        return bool(value.get("order") == gold.get("order"))
    if task_type is TaskType.RUBRIC:
        want, got = gold.get("scores") or {}, value.get("scores") or {}
        return all(abs(int(got.get(k, -10**6)) - int(v)) <= RUBRIC_TOLERANCE for k, v in want.items())
    return False


def labels(task_type: TaskType, value: dict[str, Any]) -> dict[str, Hashable]:
    """Question -> categorical label of an answer (what agreement and aggregation compare)."""
    if task_type is TaskType.PAIRWISE:
        return {"choice": value["choice"]}
    if task_type is TaskType.RANKED:
        return {"top": value["order"][0]}
    if task_type is TaskType.RUBRIC:
        return {f"score.{k}": int(v) for k, v in value["scores"].items()}
    return {}


__all__ = ["RUBRIC_TOLERANCE", "check_payload", "check_value", "gold_matches", "labels"]

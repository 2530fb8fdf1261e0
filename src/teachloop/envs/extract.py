"""Answer extraction: find the *final* answer in a model's reply.

Models restate their work ("26 - 15 = 11"), so a grader that takes the first
number scores a right answer as wrong. Every extractor here looks for the last,
most explicit answer marker first and falls back from there:

    <answer>…</answer>  >  \\boxed{…}  >  "final answer:" / "answer:" / "answer is"  >  "####"  >  the whole text

An ``Extractor`` is any ``Callable[[str], str | None]``; ``None`` means "no
answer found" and graders score it 0 without calling their comparison. This
module knows nothing about tasks or graders.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Extractor = Callable[[str], "str | None"]

_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_OPEN_TAG = re.compile(r"<answer>(.*)$", re.DOTALL | re.IGNORECASE)
_MARKER = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def identity(text: str) -> str | None:
    """The text, stripped."""
    return text.strip()


def tagged(tag: str = "answer") -> Extractor:
    """An extractor for the content of the last ``<tag>…</tag>``; ``None`` if absent."""
    pattern = re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL | re.IGNORECASE)

    def extract(text: str) -> str | None:
        found = pattern.findall(text)
        return found[-1].strip() if found else None

    extract.__name__ = f"tagged_{tag}"
    return extract


def boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``), braces balanced; ``None`` if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def _clean(answer: str) -> str:
    answer = answer.strip().strip("*").strip()
    if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:
        answer = answer.strip("$").strip()
    return answer.rstrip(".").strip()


def final_answer(text: str) -> str | None:
    """The final answer of a reply, by marker precedence (see the module docstring).

    ``<think>`` blocks are ignored. Falls back to the whole (stripped) reply, so
    this never returns ``None`` for non-empty text; ``None`` for blank text.
    """
    text = _THINK.sub("", text)
    found = _TAG.findall(text)
    if found:
        return _clean(found[-1])
    box = boxed(text)
    if box is not None:
        return _clean(box)
    opened = _OPEN_TAG.search(text)  # an unterminated <answer> (the model hit max_tokens)
    if opened:
        return _clean(opened.group(1)) or None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        marker = _MARKER.findall(line)
        if marker:
            return _clean(marker[-1]) or None
        hashes = _HASHES.findall(line)
        if hashes:
            return _clean(hashes[-1]) or None
    stripped = text.strip()
    return stripped or None


def last_number(text: str) -> str | None:
    """The last number in the final answer of ``text`` (thousands commas removed); ``None`` if none."""
    answer = final_answer(text)
    if answer is None:
        return None
    numbers = _NUMBER.findall(answer)
    if not numbers:
        return None
    return str(numbers[-1]).replace(",", "").lstrip("+")


def parse_number(text: str) -> float | None:
    """``text`` as a float (commas, ``%`` and a leading ``$`` tolerated); ``None`` if it is not one."""
    cleaned = text.strip().replace(",", "").removeprefix("$").removesuffix("%").strip()
    try:
        return float(cleaned)
    except ValueError:
        return None


__all__ = ["Extractor", "boxed", "final_answer", "identity", "last_number", "parse_number", "tagged"]

"""Training data: chat JSONL for SFT and preference pairs for DPO, rendered into engine ``Datum``s.

* SFT rows: ``{"messages": [...], "tools": [...]?}`` (OpenAI chat format).
  Loss on assistant tokens only (the renderer's mask).
* DPO rows: ``{"prompt": str | messages, "chosen": str | message | messages,
  "rejected": ...}`` (TRL's conversational or standard format).

Rows that are not valid JSON, do not fit the chat template (``template``), are
longer than ``max_seq_len`` (``too_long``), train no token
(``no_assistant_tokens``) or -- DPO -- have an empty prompt, chosen or
rejected reply (``empty_prompt``, ``empty_chosen``, ``empty_rejected``) are
skipped and counted by reason; ``load_*`` refuses to start
when the skipped share exceeds ``max_skipped_frac`` (``InvalidInput`` with the
counts). Batches are drawn deterministically from (seed, step), so a resumed
run sees exactly the batches it would have seen. Knows nothing of engines.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput, TeachloopError
from teachloop.core.training import Datum
from teachloop.render import Renderer


@dataclass
class Example:
    """One rendered training example: a full token sequence and its loss mask (aligned with the tokens)."""

    tokens: list[int]
    mask: list[int]


@dataclass
class LoadedData:
    """Rendered rows plus the accounting of skipped ones.

    Attributes:
        items: SFT examples, or DPO (chosen, rejected) pairs.
        total: rows read.
        skipped: count per reason.
        digest: ``sha256:`` of the file bytes (the run records it).
    """

    items: list[Any]
    total: int
    skipped: Counter[str] = field(default_factory=Counter)
    digest: str = ""

    @property
    def skipped_total(self) -> int:
        """Rows skipped for any reason."""
        return sum(self.skipped.values())


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _read_rows(path: Path, field: str) -> tuple[list[Any], int, Counter[str]]:
    if not path.is_file():
        raise InvalidInput(f"{field}: dataset {path} does not exist", param=field)
    rows, total, skipped = [], 0, Counter[str]()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            total += 1
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                skipped["invalid_json"] += 1
    return rows, total, skipped


class _Skip(Exception):
    """A row is skipped for the reason in its message (the key it is counted under)."""


def _messages(value: Any, role: str = "user") -> list[Message]:
    if isinstance(value, str):
        return [Message(role=role, content=value)]  # type: ignore[arg-type]
    if isinstance(value, dict):
        return [Message.model_validate(value)]
    if isinstance(value, list):
        return [Message.model_validate(m) for m in value]
    raise ValueError("expected a string, a message or a list of messages")


def _check(data: LoadedData, max_skipped_frac: float, path: Path, field: str) -> LoadedData:
    if data.total == 0:
        raise InvalidInput(f"{field}: dataset {path} has no rows", param=field)
    frac = data.skipped_total / data.total
    if frac > max_skipped_frac:
        reasons = ", ".join(f"{k}: {v}" for k, v in data.skipped.most_common())
        raise InvalidInput(
            f"{data.skipped_total} of {data.total} rows of {path} would be skipped ({frac:.0%} > "
            f"data.max_skipped_frac {max_skipped_frac:.0%}): {reasons}",
            param="data.max_skipped_frac",
        )
    if not data.items:
        raise InvalidInput(f"{field}: no usable rows in {path}", param=field)
    return data


def load_sft(
    path: Path, renderer: Renderer, *, max_seq_len: int, max_skipped_frac: float, train_on: str = "all_assistant",
    field: str = "data.train",
) -> LoadedData:
    """Render a chat JSONL into ``Example``s, skipping (and counting) rows that don't fit; errors name ``field``."""
    rows, total, skipped = _read_rows(path, field)
    items: list[Example] = []
    for row in rows:
        try:
            if not isinstance(row, dict) or "messages" not in row:
                raise ValueError("no 'messages'")
            msgs = _messages(row["messages"])
            tools = row.get("tools")
            if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
                raise ValueError("'tools' must be a list of tool objects")
            tokens, mask = renderer.build_supervised(msgs, tools, train_on=train_on)  # type: ignore[arg-type]
        except (ValueError, TeachloopError):
            skipped["template"] += 1
            continue
        if len(tokens) > max_seq_len:
            skipped["too_long"] += 1
            continue
        if sum(mask) == 0:
            skipped["no_assistant_tokens"] += 1
            continue
        items.append(Example(tokens, mask))
    return _check(LoadedData(items, total, skipped, file_digest(path)), max_skipped_frac, path, field)


def load_dpo(path: Path, renderer: Renderer, *, max_seq_len: int, max_skipped_frac: float,
             field: str = "data.train") -> LoadedData:
    """Render preference pairs into (chosen, rejected) ``Example`` pairs; errors name ``field``."""
    rows, total, skipped = _read_rows(path, field)
    items: list[tuple[Example, Example]] = []
    for row in rows:
        try:
            if not isinstance(row, dict) or not {"prompt", "chosen", "rejected"} <= set(row):
                raise ValueError("needs prompt, chosen and rejected")
            prompt = _messages(row["prompt"])
            if not prompt:
                raise _Skip("empty_prompt")
            pair = []
            for key in ("chosen", "rejected"):
                reply = _messages(row[key], role="assistant")
                if not any(m.content or m.tool_calls for m in reply if m.role == "assistant"):
                    raise _Skip(f"empty_{key}")
                if reply[-1].role != "assistant":
                    raise ValueError(f"{key} must end with an assistant message")
                tokens, mask = renderer.build_supervised(prompt + reply, train_on="last_assistant")
                pair.append(Example(tokens, mask))
        except _Skip as why:
            skipped[str(why)] += 1
            continue
        except (ValueError, TeachloopError):
            skipped["template"] += 1
            continue
        if max(len(e.tokens) for e in pair) > max_seq_len:
            skipped["too_long"] += 1
            continue
        items.append((pair[0], pair[1]))
    return _check(LoadedData(items, total, skipped, file_digest(path)), max_skipped_frac, path, field)


def split_holdout(items: Sequence[Any], frac: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, holdout): a fixed pseudo-random ``frac`` share held out (at least one row when frac > 0)."""
    order = list(range(len(items)))
    random.Random(f"holdout:{seed}").shuffle(order)
    n_hold = 0 if frac <= 0 else max(1, round(len(items) * frac))
    if n_hold >= len(items):
        raise InvalidInput("the holdout split would leave no training rows", param="data.holdout_frac")
    hold = set(order[:n_hold])
    return [x for i, x in enumerate(items) if i not in hold], [x for i, x in enumerate(items) if i in hold]


def batch_for_step(items: Sequence[Any], batch_size: int, step: int, seed: int) -> list[Any]:
    """The rows of optimizer step ``step``: epochs are fresh seeded shuffles, walked in order."""
    n = len(items)
    orders: dict[int, list[int]] = {}
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(f"epoch:{seed}:{epoch}").shuffle(orders[epoch])
        out.append(items[orders[epoch][pos]])
    return out


def sft_datums(examples: Sequence[Example]) -> list[Datum]:
    """Cross-entropy datums whose weights average the loss over the batch's assistant tokens."""
    total = sum(sum(e.mask[1:]) for e in examples) or 1
    return [Datum.from_sequence(e.tokens, [m / total for m in e.mask]) for e in examples]


def dpo_datums(pairs: Sequence[tuple[Example, Example]]) -> list[Datum]:
    """Interleaved (chosen, rejected) datums with the response mask as weights."""
    out = []
    for chosen, rejected in pairs:
        out.append(Datum.from_sequence(chosen.tokens, [float(m) for m in chosen.mask]))
        out.append(Datum.from_sequence(rejected.tokens, [float(m) for m in rejected.mask]))
    return out


__all__ = [
    "Example",
    "LoadedData",
    "batch_for_step",
    "dpo_datums",
    "file_digest",
    "load_dpo",
    "load_sft",
    "sft_datums",
    "split_holdout",
]

"""Token ids -> reply text: incremental decoding for streaming, stop strings, token bytes.

``TextStream`` turns a growing list of sampled token ids into text deltas that
are safe to send: it never emits half of a UTF-8 character, stops at the first
stop token or stop string (which is not sent), and holds back a tail that
might still become a stop string. Decoding is incremental (the TGI "prefix
offset" method), so each token costs a decode of a few tokens, not of the
whole reply. ``cut_at_stops`` applies the same stop rule to a whole text.
``TokenText`` gives a token's text and exact bytes for OpenAI logprobs.

This module knows nothing of HTTP or engines: a decode function in, strings out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from functools import lru_cache
from typing import Any

Decode = Callable[[Sequence[int]], str]


def cut_at_stops(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _held_tail(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class TextStream:
    """Text deltas of one sampled reply, token by token (see the module docstring)."""

    def __init__(self, decode: Decode, *, stop_ids: Collection[int] = (), stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop_ids = frozenset(stop_ids)
        self._stops = tuple(s for s in stops if s)
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""  # decoded so far (cut at a stop once one is seen)
        self.sent = 0  # characters of ``text`` already returned
        self.ended = False

    def push(self, tokens: Sequence[int]) -> str:
        """Add sampled tokens; return the text now safe to send (may be empty)."""
        if self.ended:
            return ""
        for token in tokens:
            if token in self._stop_ids:
                self.ended = True
                break
            self._ids.append(token)
        self._advance()
        if self._stops:
            start = max(0, self.sent - max(len(s) for s in self._stops))
            head, found = cut_at_stops(self.text[start:], self._stops)
            if found:
                self.text = self.text[:start] + head
                self.ended = True
        safe = len(self.text)
        if not self.ended:
            safe -= _held_tail(self.text, self._stops)
        if self.text.endswith("\ufffd") and not self.ended:
            safe = min(safe, len(self.text) - 1)
        out = self.text[self.sent : safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out

    def finish(self) -> str:
        """The rest of the text once sampling is over (held-back characters included)."""
        self.ended = True
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out

    def _advance(self) -> None:
        if self._read >= len(self._ids):
            return
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.text += new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character standing for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class TokenText:
    """A token's text and bytes (exact for byte-level BPE tokenizers), cached per token id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        text = str(self._tok.decode([token], skip_special_tokens=False))
        data = list(text.encode("utf-8"))
        piece = self._tok.convert_ids_to_tokens(token)
        table = _byte_decoder()
        if isinstance(piece, str) and piece and all(ch in table for ch in piece) and "\ufffd" in text:
            data = [table[ch] for ch in piece]
        self._cache[token] = (text, data)
        return text, data


__all__ = ["TextStream", "TokenText", "cut_at_stops"]

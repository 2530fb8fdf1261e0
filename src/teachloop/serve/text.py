"""Token ids -> reply text: incremental decoding for streaming, stop strings, token bytes.

``TextStream`` turns a growing list of sampled token ids into text deltas that
are safe to send: it never emits half of a UTF-8 character, stops at the first
stop token or stop string (which is not sent), and holds back a tail that
might still become a stop string. Decoding is incremental (the TGI "prefix
offset" method), so each token costs a decode of a few tokens, not of the
whole reply. ``cut_at_stops`` applies the same stop rule to a whole text.
``TokenText`` gives a token's text and exact bytes for OpenAI logprobs.

The guarantee: the deltas of ``push`` followed by ``finish`` concatenate to
``decode(tokens)`` (cut at the first stop), and a delta holds U+FFFD only where
that full decode does. Text is released only up to a *settled* token boundary,
one whose decode can no longer change whatever tokens follow: the decoded
window does not end in U+FFFD (byte-level BPE: the bytes end on a whole
character) and the token before it is not a byte-fallback piece such as
``<0xE2>`` (SentencePiece decoders validate a whole run of those pieces at
once, so a later piece can turn earlier ones into U+FFFD). ``finish`` releases
the rest exactly as the full decode has it -- a reply cut in the middle of a
character ends in U+FFFD, as its non-streamed text does. This assumes a decode
that is concatenative at settled boundaries (no ``clean_up_tokenization_spaces``).

This module knows nothing of HTTP or engines: a decode function in, strings out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache
from typing import Any

Decode = Callable[[Sequence[int]], str]

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


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
    """Text deltas of one sampled reply, token by token (see the module docstring).

    ``partial(token)`` says a boundary right after ``token`` is never settled (a
    byte-fallback piece, ``TokenText.byte_piece``); None treats no token so.
    """

    def __init__(
        self,
        decode: Decode,
        *,
        stop_ids: Collection[int] = (),
        stops: Sequence[str] = (),
        partial: Callable[[int], bool] | None = None,
    ) -> None:
        self._decode = decode
        self._stop_ids = frozenset(stop_ids)
        self._stops = tuple(s for s in stops if s)
        self._partial = partial
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window: a settled boundary before ``_read``
        self._read = 0  # the last settled boundary: ``text`` holds the decode of ``_ids[:_read]``
        self._cut = False  # ended at a stop string: nothing after it is text
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
        return self._release(final=self.ended)

    def finish(self) -> str:
        """The rest of the text once sampling is over (held-back characters included)."""
        if not self.ended:
            self.ended = True
            return self._release(final=True)
        if not self._cut:
            self._advance(final=True)
            self._cut_stops()
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out

    def _release(self, final: bool) -> str:
        self._advance(final)
        self._cut_stops()
        safe = len(self.text)
        if not self.ended:
            safe -= _held_tail(self.text, self._stops)
        out = self.text[self.sent : safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out

    def _cut_stops(self) -> None:
        if not self._stops or self._cut:
            return
        start = max(0, self.sent - max(len(s) for s in self._stops))
        head, found = cut_at_stops(self.text[start:], self._stops)
        if found:
            self.text = self.text[: start] + head
            self.ended = self._cut = True

    def _advance(self, final: bool) -> None:
        """Decode up to the last settled boundary (every token when ``final``) into ``text``."""
        end = len(self._ids)
        if not final and self._partial is not None:
            while end > self._read and self._partial(self._ids[end - 1]):
                end -= 1
        if end <= self._read:
            return
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix : end])
        if not final and (new_text.endswith("\ufffd") or not new_text.startswith(prefix_text)):
            return
        self.text += new_text[len(prefix_text) :]
        self._prefix, self._read = self._read, end


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
        self._pieces: dict[int, bool] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        text = str(self._tok.decode([token], skip_special_tokens=False))
        data = list(text.encode("utf-8"))
        piece = self._tok.convert_ids_to_tokens(token)
        table = _byte_decoder()
        if self.byte_piece(token):
            data = [int(piece[3:5], 16)]
        elif isinstance(piece, str) and piece and all(ch in table for ch in piece) and "\ufffd" in text:
            data = [table[ch] for ch in piece]
        self._cache[token] = (text, data)
        return text, data

    def byte_piece(self, token: int) -> bool:
        """Whether ``token`` is a byte-fallback piece (``<0xE2>``): its text depends on the pieces around it."""
        hit = self._pieces.get(token)
        if hit is None:
            piece = self._tok.convert_ids_to_tokens(token)
            hit = self._pieces[token] = isinstance(piece, str) and _BYTE_PIECE.fullmatch(piece) is not None
        return hit


__all__ = ["TextStream", "TokenText", "cut_at_stops"]

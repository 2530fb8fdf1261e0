"""``TextStream`` on random token sequences of real tokenizers (hypothesis).

Two tokenizers: the byte-level BPE of ``tests/_tiny.py`` (SmolLM2's kind: a token can be
part of a UTF-8 character) and a SentencePiece-style one with byte-fallback pieces
(``<0xE2>``; its decoder validates a whole run of pieces at once, so a later piece can turn
earlier ones into U+FFFD). Whatever the tokens and however they arrive, the deltas and
``finish()`` concatenate to the full decode (cut at the first stop), and text whose
decode cannot change any more is released at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.serve.text import TextStream, TokenText, cut_at_stops
from tests._tiny import tiny_tokenizer


@cache
def _byte_level() -> Any:
    return tiny_tokenizer()


@cache
def _byte_fallback() -> Any:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for word in ("▁Hello", "▁world", "a", "b", "▁", "é", "▁the", "€", "."):
        vocab[word] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _decoder(tok: Any) -> Callable[[Sequence[int]], str]:
    return lambda ids: str(tok.decode(list(ids), skip_special_tokens=False))


def _stream(tok: Any, chunks: list[list[int]], stop_ids: set[int], stops: tuple[str, ...]) -> tuple[list[str], str]:
    decode = _decoder(tok)
    stream = TextStream(decode, stop_ids=stop_ids, stops=stops, partial=TokenText(tok).byte_piece)
    deltas = [stream.push(chunk) for chunk in chunks]
    return deltas, stream.finish()


def _expected(tok: Any, ids: list[int], stop_ids: set[int], stops: tuple[str, ...]) -> str:
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return cut_at_stops(_decoder(tok)(ids[:cut]), stops)[0]


def _chunked(ids: list[int], sizes: list[int]) -> list[list[int]]:
    out, at = [], 0
    for size in sizes:
        out.append(ids[at : at + size])
        at += size
    out.append(ids[at:])
    return out


def _tokens(tok: Any) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(tok) - 1), max_size=40)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_deltas_concatenate_to_the_full_decode_for_any_tokens(data: st.DataObject) -> None:
    tok = data.draw(st.sampled_from([_byte_level(), _byte_fallback()]))
    ids = data.draw(_tokens(tok))
    sizes = data.draw(st.lists(st.integers(1, 4), max_size=len(ids)))
    deltas, rest = _stream(tok, _chunked(ids, sizes), set(), ())
    full = _decoder(tok)(ids)
    assert "".join(deltas) + rest == full
    at = 0
    for delta in deltas:  # every delta is the full decode at its place: U+FFFD only where the full decode has it
        assert full[at : at + len(delta)] == delta
        at += len(delta)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_stops_cut_the_stream_exactly_as_the_whole_text(data: st.DataObject) -> None:
    tok = data.draw(st.sampled_from([_byte_level(), _byte_fallback()]))
    ids = data.draw(_tokens(tok))
    stop_ids = set(data.draw(st.lists(st.integers(0, len(tok) - 1), max_size=3)))
    stops = tuple(data.draw(st.lists(st.text("abe \u00e9\ufffd.", min_size=1, max_size=3), max_size=4)))
    sizes = data.draw(st.lists(st.integers(1, 4), max_size=len(ids)))
    deltas, rest = _stream(tok, _chunked(ids, sizes), stop_ids, stops)
    assert "".join(deltas) + rest == _expected(tok, ids, stop_ids, stops)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_settled_text_is_released_without_waiting(data: st.DataObject) -> None:
    """Token by token: once the decode so far cannot change, all of it has been sent."""
    tok = data.draw(st.sampled_from([_byte_level(), _byte_fallback()]))
    ids = data.draw(_tokens(tok))
    decode, pieces = _decoder(tok), TokenText(tok)
    stream = TextStream(decode, partial=pieces.byte_piece)
    sent = ""
    for k, token in enumerate(ids):
        sent += stream.push([token])
        so_far = decode(ids[: k + 1])
        if not so_far.endswith("\ufffd") and not pieces.byte_piece(token):
            assert sent == so_far


def test_a_reply_cut_inside_a_character_ends_as_its_full_decode() -> None:
    tok = _byte_level()
    ids = list(tok.encode("caf\u00e9 \u20ac", add_special_tokens=False))
    euro = "\u20ac".encode()
    decode = _decoder(tok)
    cut = next(k for k in range(len(ids), 0, -1) if decode(ids[:k]).endswith("\ufffd"))  # inside the euro sign
    assert euro[:1].decode("utf-8", "replace") == "\ufffd"
    stream = TextStream(decode)
    deltas = [stream.push([t]) for t in ids[:cut]]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + stream.finish() == decode(ids[:cut]) == "caf\u00e9 \ufffd"


def test_byte_fallback_pieces_are_held_until_their_run_ends() -> None:
    tok = _byte_fallback()
    vocab = tok.get_vocab()
    e_acute, start_euro, a = [vocab["<0xC3>"], vocab["<0xA9>"]], vocab["<0xE2>"], vocab["a"]
    decode = _decoder(tok)
    stream = TextStream(decode, partial=TokenText(tok).byte_piece)
    assert [stream.push([t]) for t in [*e_acute, start_euro]] == ["", "", ""]
    assert stream.push([a]) == decode([*e_acute, start_euro, a]) == "\ufffd\ufffd\ufffda"  # the run is invalid
    assert TokenText(tok)(start_euro) == ("\ufffd", [0xE2])

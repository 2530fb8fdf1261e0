"""``core.errors.first_line``: a library's multi-line message in a one-line error."""

from __future__ import annotations

from teachloop.core.errors import first_line


def test_first_line_keeps_the_first_line_or_names_the_type() -> None:
    assert first_line(ValueError("bad schema\n  at /properties/x\n  expected object")) == "bad schema"
    assert first_line(RuntimeError("  \n\n padded line \nrest")) == "padded line"
    assert first_line(KeyError()) == "KeyError"
    assert first_line("a grammar error\nwith detail") == "a grammar error"  # llguidance returns a string
    assert first_line("") == "str"

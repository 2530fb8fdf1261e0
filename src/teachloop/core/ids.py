"""Identifiers: short prefixed, time-sortable, URL-safe ids.

``new_id("tr")`` returns e.g. ``tr_01kfq3m8zv7d2x9c4n5p6r7s8t``: a prefix naming the
kind of object, then 10 Crockford base32 characters of milliseconds since the
epoch and 16 of randomness (80 bits). Ids sort by creation time within a kind.
This module knows nothing about storage.
"""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_ID_RE = re.compile(r"^[a-z][a-z0-9]{0,11}_[0-9a-hjkmnp-tv-z]{26}$")


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """A new id ``<prefix>_<26 chars>``; ``prefix`` is 1-12 lower-case letters or digits."""
    if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", prefix):
        raise ValueError(f"id prefix must be 1-12 lower-case letters/digits, got {prefix!r}")
    ms = int(time.time() * 1000)
    return f"{prefix}_{_b32(ms, 10)}{_b32(secrets.randbits(80), 16)}"


def is_id(value: str, prefix: str | None = None) -> bool:
    """Whether ``value`` has the shape of an id (of ``prefix``, when given)."""
    if not _ID_RE.match(value):
        return False
    return prefix is None or value.startswith(prefix + "_")


__all__ = ["is_id", "new_id"]

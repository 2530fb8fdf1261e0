"""Seeded task streams: an endless shuffled cycle, and a mix of two streams at a given share.

Both are pure functions of their seed names, so an environment built on them
gives the same task stream for the same seed (GRPO's tasks of step ``t``
depend only on ``t``; a resumed run resamples alike).

* ``shuffled_cycle(items, name)`` -- ``items`` forever, each pass a fresh
  shuffle seeded by ``f"{name}:{pass}"``;
* ``mixed(first, second, share, name)`` -- each element from ``second`` with
  probability ``share`` (a ``random.Random(name)`` draw per element), else
  from ``first``; both streams must be endless.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def shuffled_cycle(items: Sequence[T], name: str) -> Iterator[T]:
    """``items`` forever, each pass a fresh shuffle seeded by ``name`` and the pass number."""
    for epoch in itertools.count():
        order = list(items)
        random.Random(f"{name}:{epoch}").shuffle(order)
        yield from order


def mixed(first: Iterator[T], second: Iterator[T], share: float, name: str) -> Iterator[T]:
    """Each element from ``second`` with probability ``share``, else from ``first`` (seeded by ``name``)."""
    pick = random.Random(name)
    while True:
        yield next(second) if pick.random() < share else next(first)


__all__ = ["mixed", "shuffled_cycle"]

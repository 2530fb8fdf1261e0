"""``envs.streams``: the shuffled cycle holds every item once per pass, and the mix is seeded and keeps its share."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.envs.streams import mixed, shuffled_cycle


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20), name=st.text(max_size=5))
def test_each_pass_of_the_cycle_holds_every_item_once_and_the_seed_fixes_the_order(n: int, name: str) -> None:
    out = list(itertools.islice(shuffled_cycle(range(n), name), 3 * n))
    assert all(sorted(out[k * n:(k + 1) * n]) == list(range(n)) for k in range(3))
    assert out == list(itertools.islice(shuffled_cycle(range(n), name), 3 * n))


def test_the_mix_takes_the_second_stream_at_its_share() -> None:
    n = 5000
    out = list(itertools.islice(mixed(itertools.repeat("a"), itertools.repeat("b"), 0.3, "s"), n))
    assert abs(out.count("b") / n - 0.3) < 0.03
    assert out == list(itertools.islice(mixed(itertools.repeat("a"), itertools.repeat("b"), 0.3, "s"), n))
    assert set(itertools.islice(mixed(itertools.repeat("a"), itertools.repeat("b"), 0.0, "s"), 200)) == {"a"}

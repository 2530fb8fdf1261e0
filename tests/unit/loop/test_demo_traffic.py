"""``teachloop demo``'s simulated users (``cli.demo.round_users``).

A round's requests come from the next ``requests`` of ``population`` users, so the canary's sticky share of
each round (``serve.service.canary_bucket``) is close to its percentage. With the demo's old population (the same
``users`` every round) it was fixed for the whole run by the deployment id.
"""

from __future__ import annotations

import statistics

from hypothesis import given
from hypothesis import strategies as st

from teachloop.cli.demo import DemoOptions, round_users
from teachloop.envs import Arithmetic
from teachloop.serve.service import canary_bucket


@given(requests=st.integers(8, 200), extra=st.integers(0, 2000), number=st.integers(0, 50))
def test_a_round_comes_from_distinct_users_and_rounds_cycle_through_the_population(
    requests: int, extra: int, number: int
) -> None:
    opts = DemoOptions(requests=requests, population=requests + extra)
    users = round_users(opts, number)
    assert len(users) == requests == len(set(users))
    assert set(users) <= {f"user-{u:04d}" for u in range(opts.population)}
    nxt = round_users(opts, number + 1)
    # the next round starts with the user after this round's last one
    assert int(nxt[0].removeprefix("user-")) == (int(users[-1].removeprefix("user-")) + 1) % opts.population


def test_a_population_of_the_concurrent_users_is_the_demo_before() -> None:
    opts = DemoOptions(requests=96, users=24, population=24)
    assert all(round_users(opts, n) == [f"user-{i % 24:04d}" for i in range(96)] for n in range(5))


def test_a_round_has_as_many_tasks_as_users() -> None:
    opts = DemoOptions()
    assert len(Arithmetic(level=1).take(opts.requests, seed=10_000)) == len(round_users(opts, 0))


def _canary_share(opts: DemoOptions, deployment: str, number: int) -> int:
    return sum(canary_bucket(deployment, u) < opts.canary_percent for u in round_users(opts, number))


def test_the_canary_share_of_a_round_is_near_its_percentage() -> None:
    """Over 200 deployment ids, one round's canary arm: 96 requests at 25% (24 expected)."""
    now, before = DemoOptions(), DemoOptions(population=DemoOptions().users)
    shares_now = [_canary_share(now, f"dep-{d}", 3) for d in range(200)]
    shares_before = [_canary_share(before, f"dep-{d}", 3) for d in range(200)]
    # Binomial(96, 0.25): sd 4.2; before, 4 x Binomial(24, 0.25): sd 8.5
    assert abs(statistics.fmean(shares_now) - 24) < 2 and statistics.stdev(shares_now) < 6
    assert statistics.stdev(shares_before) > 7
    assert min(shares_now) >= 10 and min(shares_before) <= 8
    # and a deployment's share changes from round to round instead of staying fixed for the run
    assert len({_canary_share(now, "dep-0", n) for n in range(10)}) > 1
    assert len({_canary_share(before, "dep-0", n) for n in range(10)}) == 1

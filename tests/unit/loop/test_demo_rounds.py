"""``teachloop demo``'s driver: when it ticks the loop between rounds of traffic (``cli.demo._rounds``).

The rounds' traffic and figures are replaced by fakes (no server, no model): what is under test is only the
driver's order of rounds and ticks -- in particular that a tick which promoted a canary is followed by another at
once when ``DemoOptions.tick_after_promotion`` is on (``bench/loop_vs_offline.py``'s ``eager`` contender), so the next
iteration does not wait for a round of traffic, and is not otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from teachloop.cli import demo
from teachloop.loop import TickResult


class FakeRunner:
    """Ticks of a loop that trains calc@1 and calc@2 and promotes each after one canary round."""

    def __init__(self, results: list[TickResult]) -> None:
        self.results: Iterator[TickResult] = iter(results)
        self.ticks = 0

    async def tick(self) -> TickResult:
        self.ticks += 1
        return next(self.results, TickResult("idle"))


def _drive(monkeypatch: pytest.MonkeyPatch, served: list[str], results: list[TickResult], *,
           history: Any = None, **opts: Any) -> tuple[FakeRunner, list[demo.Round]]:
    states = iter(served)
    monkeypatch.setattr(demo, "_serving", lambda database, org_id: next(states))

    async def send_round(url: str, key: str, o: demo.DemoOptions, number: int) -> tuple[int, float]:
        return o.requests, 0.01

    monkeypatch.setattr(demo, "send_round", send_round)
    monkeypatch.setattr(demo, "round_figures", lambda database, org_id, since: ({"primary:base": 0.5},
                                                                              {"primary:base": 8}))
    monkeypatch.setattr("teachloop.loop.service.history", history or (lambda database, org_id, name: []))
    runner = FakeRunner(results)
    options = demo.DemoOptions(requests=8, users=2, max_rounds=len(served), budget_min=60, **opts)
    rounds = asyncio.run(demo._rounds("http://x", "key", options, runner, None, "org", time.perf_counter()))
    return runner, rounds


SERVED = ["base", "base + canary calc@1 @ 50%", "calc@1 + canary calc@2 @ 50%"]


def _results() -> list[TickResult]:
    return [TickResult("canary", iteration=1, status="canary"),  # round 0: iteration 1 trained, its canary starts
            TickResult("watch", note="promoted"),  # round 1 judged the canary: calc@1 promoted
            TickResult("canary", iteration=2, status="canary"),  # the tick right after: iteration 2
            TickResult("watch", note="promoted"),
            TickResult("canary", iteration=3, status="canary")]


def test_a_tick_that_promoted_is_followed_by_another_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    runner, rounds = _drive(monkeypatch, SERVED, _results(), tick_after_promotion=True)
    # 3 rounds; after each of the two promoting rounds a second tick ran the next iteration
    assert len(rounds) == 3 and runner.ticks == 5
    assert [r.served for r in rounds] == SERVED


def test_by_default_the_next_iteration_waits_for_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    assert demo.DemoOptions().tick_after_promotion is False
    runner, rounds = _drive(monkeypatch, SERVED, _results())
    assert len(rounds) == 3 and runner.ticks == 3  # one tick per round


def test_a_tick_in_a_watch_that_promoted_nothing_is_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    # the round was not a canary round: a tick that ends in "watch" is the watch going on, not a promotion
    runner, _ = _drive(monkeypatch, ["calc@1", "calc@1"], [TickResult("watch", note="watching"),
                                                            TickResult("watch", note="watching")],
                       tick_after_promotion=True)
    assert runner.ticks == 2


def test_the_last_promotion_asked_for_is_served_a_round_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    # --iterations 1: once calc@1 is promoted the demo does not start another iteration; the next round serves
    # calc@1 to everyone (its watch), then the demo ends
    promoted = [{"status": "promoted", "canary": {}}]
    calls = iter([[], promoted, promoted, [{"status": "promoted", "canary": {"watch": {}}}]])
    runner, rounds = _drive(monkeypatch, ["base", "base + canary calc@1 @ 50%", "calc@1", "calc@1"], _results(),
                            iterations=1, tick_after_promotion=True,
                            history=lambda database, org_id, name: next(calls))
    assert runner.ticks == 3 and len(rounds) == 3  # no extra tick after the promotion; stopped once it was watched

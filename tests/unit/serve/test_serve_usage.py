"""``serve.Usage``: per-organisation counters that never mix organisations."""

from __future__ import annotations

from teachloop.serve import Usage


def test_counts_are_kept_per_organisation_and_the_rate_is_over_the_window() -> None:
    now = [100.0]
    usage = Usage(window_s=10.0, clock=lambda: now[0])
    usage.started("org_a")
    usage.started("org_a")
    usage.started("org_b")
    usage.tokens("org_a", 7, 30)
    usage.traced("org_a")
    usage.finished("org_a", answered=True)
    usage.finished("org_a", answered=False)
    a = usage.of("org_a")
    assert (a.in_flight, a.completed, a.failed) == (0, 1, 1)
    assert (a.prompt_tokens, a.completion_tokens, a.traces_written) == (7, 30, 1)
    assert a.completion_tokens_per_s == 3.0
    b = usage.of("org_b")
    assert (b.in_flight, b.completed, b.failed, b.completion_tokens, b.traces_written) == (1, 0, 0, 0, 0)
    assert usage.of("org_never").completed == 0
    now[0] += 11  # the tokens leave the rate's window, not the totals
    a = usage.of("org_a")
    assert a.completion_tokens_per_s == 0.0 and a.completion_tokens == 30

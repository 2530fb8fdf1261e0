"""The canary's sequential non-inferiority test (``promotion.judge``): a canary as good as the primary is rolled
back in at most about ``1 - confidence`` of simulated canaries however often it is judged; a clearly worse one is
rolled back, and a clearly better one promoted, long before a fixed-n test of the same margin has its samples;
every decision names its bounds and sample sizes."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.loop.config import PromotionConfig
from teachloop.loop.promotion import difference_bounds, judge, mean_radius
from teachloop.store.repos.loops import OnlineFigures

LOOK = 5  # requests per arm between two looks (a tick)


def _cfg(**kw: object) -> PromotionConfig:
    return PromotionConfig(**{"signals": ["grader"], "min_samples": 10, "canary_min_requests": 10,
                              "canary_max_minutes": None, "canary_max_samples": None, **kw})


def _figures(rewards: list[float]) -> OnlineFigures:
    n = len(rewards)
    return OnlineFigures(n, n, sum(rewards) / n if n else None, 0, None)


def _simulate(rng: random.Random, p_primary: float, p_canary: float, cfg: PromotionConfig, *,
              max_n: int) -> tuple[str, int, str]:
    """Judge a simulated canary after every ``LOOK`` requests per arm (0/1 grader rewards) until it is decided or
    ``max_n`` requests per arm were served; (action, n per arm, reason)."""
    primary: list[float] = []
    canary: list[float] = []
    verdict = None
    while len(canary) < max_n:
        primary += [float(rng.random() < p_primary) for _ in range(LOOK)]
        canary += [float(rng.random() < p_canary) for _ in range(LOOK)]
        verdict = judge(cfg, _figures(primary), _figures(canary), min_requests=cfg.canary_min_requests)
        if verdict.action != "wait":
            return verdict.action, len(canary), verdict.reason
    assert verdict is not None
    return verdict.action, len(canary), verdict.reason


@settings(max_examples=6, deadline=None, derandomize=True)
@given(p=st.floats(0.05, 0.95), confidence=st.sampled_from([0.8, 0.9, 0.95]), seed=st.integers(0, 2**16))
def test_a_canary_like_the_primary_is_rolled_back_in_at_most_1_minus_confidence_of_simulations(
        p: float, confidence: float, seed: int) -> None:
    """Type I error of "shown worse" under 60 looks per canary, at the hardest margin (max_drop = 0: any shown
    drop rolls back). A test that peeked at a fixed-n interval 60 times would exceed it."""
    cfg = _cfg(max_drop=0.0, confidence=confidence)
    rng = random.Random(seed)
    sims = 200
    rolled = sum(_simulate(rng, p, p, cfg, max_n=60 * LOOK)[0] == "rollback" for _ in range(sims))
    alpha = 1 - confidence
    assert rolled / sims <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims), (rolled, sims, alpha)


def test_repeated_looks_at_a_fixed_n_interval_would_fail_the_same_check() -> None:
    """The property above can fail: a naive 95% normal interval re-checked at every look rolls back a canary like
    the primary far more often than 5%."""
    rng = random.Random(1)
    rolled = 0
    for _ in range(200):
        a: list[float] = []
        b: list[float] = []
        for _ in range(60):
            a += [float(rng.random() < 0.5) for _ in range(LOOK)]
            b += [float(rng.random() < 0.5) for _ in range(LOOK)]
            n = len(a)
            half = 1.96 * math.sqrt(0.25 / n + 0.25 / n)
            if sum(b) / n - sum(a) / n + half < 0:
                rolled += 1
                break
    assert rolled / 200 > 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)


def _fixed_n(cfg: PromotionConfig) -> int:
    """Requests per arm a fixed-n two-sample Hoeffding test needs before its interval for the difference is narrower
    than the margin (so that it could show non-inferiority of an equal canary): each arm's half-width
    ``sqrt(log(4 / alpha) / (2 n))`` below ``max_drop / 2``."""
    alpha = 1 - cfg.confidence
    return math.ceil(math.log(4 / alpha) / (2 * (cfg.max_drop / 2) ** 2))


def test_a_clearly_worse_canary_is_rolled_back_early_and_says_why() -> None:
    cfg = _cfg(max_drop=0.1)
    action, n, reason = _simulate(random.Random(7), 0.9, 0.2, cfg, max_n=5000)
    assert action == "rollback" and n < _fixed_n(cfg) / 4, (n, _fixed_n(cfg))
    assert "shown worse, upper bound" in reason and f"/{n})" in reason and "bounds [" in reason
    assert "grader score fell from" in reason and "during the canary" in reason


def test_a_clearly_better_canary_is_promoted_before_a_fixed_n_test_would_decide() -> None:
    cfg = _cfg(max_drop=0.1)
    action, n, reason = _simulate(random.Random(8), 0.5, 0.9, cfg, max_n=5000)
    assert action == "pass" and n < _fixed_n(cfg) / 4, (n, _fixed_n(cfg))
    assert reason.startswith("canary passed, shown non-inferior") and f"(n={n}/{n})" in reason
    assert "95.0% bounds [" in reason and "-max_drop -0.1" in reason


def test_an_equal_canary_waits_until_shown_non_inferior_then_passes() -> None:
    """A canary exactly as good as the primary: not promoted on a handful of requests, promoted once the bounds are
    narrower than the margin."""
    cfg = _cfg(max_drop=0.2)
    few = judge(cfg, _figures([1.0, 0.0] * 10), _figures([1.0, 0.0] * 10), min_requests=10)
    assert few.action == "wait" and "not yet shown non-inferior" in few.reason and "(n=20/20)" in few.reason
    many = judge(cfg, _figures([1.0, 0.0] * 200), _figures([1.0, 0.0] * 200), min_requests=10)
    assert many.action == "pass" and "(n=400/400)" in many.reason
    [b] = many.bounds
    assert b.lower > -0.2 and b.upper < 0.2 and b.n_canary == b.n_primary == 400


def test_an_undecided_canary_is_rolled_back_as_inconclusive_after_canary_max_minutes() -> None:
    cfg = _cfg(max_drop=0.2, canary_max_minutes=60.0)
    figs = _figures([1.0, 0.0] * 10)
    assert judge(cfg, figs, figs, min_requests=10, minutes=30).action == "wait"
    late = judge(cfg, figs, figs, min_requests=10, minutes=61)
    assert late.action == "rollback" and "inconclusive after 61 min" in late.reason and "bounds [" in late.reason


def test_every_signal_with_evidence_must_be_shown_non_inferior_and_alpha_is_shared() -> None:
    cfg = _cfg(max_drop=0.2, signals=["grader", "feedback"])
    good = OnlineFigures(400, 400, 0.5, 400, 0.5)
    unsure = OnlineFigures(400, 400, 0.5, 20, 0.5)  # feedback: 20 samples, not yet narrow enough
    v = judge(cfg, good, unsure, min_requests=10)
    assert v.action == "wait" and {b.signal for b in v.bounds} == {"grader", "feedback"}
    assert all(b.confidence == 1 - 0.05 / 2 for b in v.bounds)  # Bonferroni over the two signals
    assert judge(cfg, good, good, min_requests=10).action == "pass"


def test_the_bounds_are_a_valid_and_shrinking_confidence_sequence() -> None:
    assert mean_radius(0, 0.05) == math.inf
    radii = [mean_radius(n, 0.025) for n in (10, 100, 1000, 10_000)]
    assert radii == sorted(radii, reverse=True) and radii[-1] < 0.03
    b = difference_bounds("grader", 100, 0.5, 100, 0.6, confidence=0.95, max_drop=0.05)
    assert b.lower < 0.1 < b.upper and math.isclose(b.upper - 0.1, 0.1 - b.lower)


def test_at_its_planned_sample_the_test_stops_and_promotes_a_canary_not_shown_worse() -> None:
    """``canary_max_samples``: an equal canary, never shown non-inferior at this margin, is promoted once the canary
    arm has the planned sample, and the reason says it was only *not shown worse*; before that it waits."""
    cfg = _cfg(max_drop=0.05, canary_max_samples=100)
    before = judge(cfg, _figures([1.0, 0.0] * 100), _figures([1.0, 0.0] * 49), min_requests=10)
    assert before.action == "wait" and "not yet shown non-inferior" in before.reason
    at = judge(cfg, _figures([1.0, 0.0] * 100), _figures([1.0, 0.0] * 50), min_requests=10)
    assert at.action == "pass" and "at its planned sample (100 per signal" in at.reason
    assert "not shown worse" in at.reason and "(n=200/100)" in at.reason
    [b] = at.bounds
    assert not b.non_inferior and not b.worse  # the bounds alone would have kept it waiting


def test_at_its_planned_sample_an_observed_drop_beyond_the_margin_rolls_back() -> None:
    """Not shown worse by the anytime bound, but its observed drop exceeds max_drop: rolled back at the horizon."""
    cfg = _cfg(max_drop=0.05, canary_max_samples=40)
    v = judge(cfg, _figures([1.0] * 6 + [0.0] * 4), _figures([1.0] * 20 + [0.0] * 20), min_requests=10)
    assert v.action == "rollback" and "planned sample" in v.reason and "observed drop" in v.reason
    [b] = v.bounds
    assert not b.worse and b.diff < -0.05


@settings(max_examples=4, deadline=None, derandomize=True)
@given(p=st.floats(0.2, 0.8), seed=st.integers(0, 2**16))
def test_with_the_default_horizon_a_clearly_worse_canary_is_seldom_promoted(p: float, seed: int) -> None:
    """The horizon only ends the wait: at the default planned sample (400), a canary worse by three margins
    (0.15) is rolled back -- shown worse, or by its observed drop at the horizon -- in at least 95% of
    simulations. (A smaller horizon buys speed with this: at 100 per arm about 8% of them would pass.)"""
    cfg = _cfg(max_drop=0.05, canary_max_samples=PromotionConfig().canary_max_samples)
    rng = random.Random(seed)
    actions = [_simulate(rng, p, p - 0.15, cfg, max_n=500)[0] for _ in range(100)]
    assert actions.count("pass") <= 5, actions.count("pass")
    assert actions.count("rollback") == 100 - actions.count("pass")

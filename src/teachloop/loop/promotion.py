"""Promotion and rollback: canary first, then everyone; a drop in online figures rolls back.

Every change goes through ``store.repos.deployments.Deployments`` -- the
registry the serving processes read on every request -- so a running server
switches on its next request, without a restart.

* ``start_canary`` publishes nothing itself: given the published candidate
  version it sets the deployment's canary (``canary_percent`` % of users,
  sticky per ``user``). There is no way around the canary: a percent outside
  1..99 is refused.
* ``judge`` runs a **sequential non-inferiority test** of the canary arm
  against the primary arm, per configured signal (``grader`` -- the
  environment's score of the replies; ``feedback`` -- users' scores; both in
  [0, 1]), on the difference ``canary - primary`` of their means since the
  canary began. Each arm's mean gets an anytime-valid confidence sequence
  (``mean_radius``: the normal-mixture boundary of Robbins / Howard et al.
  2021 for [0, 1]-bounded, hence 1/2-sub-Gaussian, observations; it holds
  simultaneously at every sample size, so the canary can be judged at every
  tick without inflating the error). The difference's bounds are the arms'
  bounds combined, at ``alpha = (1 - confidence) / len(signals)`` per signal
  (each arm at ``alpha / 2``). For a signal with ``min_samples`` on both arms:
  an **upper bound below ``-max_drop``** -- shown worse -- rolls back at once;
  a **lower bound above ``-max_drop``** -- shown non-inferior -- counts for
  promotion. The canary passes once it served ``min_requests`` requests
  (and ``min_minutes`` passed) and every signal with ``min_samples`` on both
  arms (at least one) is shown non-inferior; otherwise it waits. A canary
  about as good as the primary is seldom *shown* non-inferior at a small
  margin (thousands of samples per arm), so the test has a planned sample,
  ``canary_max_samples``: once every such signal has that many on the canary
  arm, it stops -- promoted when no signal was shown worse and every observed
  difference is above ``-max_drop`` ("not shown worse", a weaker statement
  than "shown non-inferior", and the reason says which), else rolled back.
  A canary still undecided after ``canary_max_minutes`` is rolled back as
  inconclusive. A canary drawn from the same distribution as the primary is
  rolled back as worse with probability at most ``1 - confidence``, however
  often it is judged. Every reason names the bounds and the sample sizes.
  With ``allow_blind_promotion`` a canary that served ``min_requests`` with
  no signal at ``min_samples`` on both arms passes, and says so.
* ``watch`` judges a promoted version for as long as it serves: its newest
  ``watch_requests`` requests against the previous version's figures; a fall
  of more than ``max_drop`` in a signal with ``min_samples`` on both sides is
  a rollback, anything else keeps watching (a margin, not a test: a sliding
  window of the newest requests is not a sequence a confidence sequence covers).
* ``promote`` makes the canary the primary version; ``roll_back`` restores the
  revision in force before the canary (an explicit ``to_revision``, so it is
  exact whatever happened in between).

``judge`` is pure; the others take a caller-owned session. Nothing here
knows about training or the gate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput
from teachloop.loop.config import PromotionConfig
from teachloop.store.repos.deployments import Deployments, DeploymentState
from teachloop.store.repos.loops import OnlineFigures
from teachloop.store.schema.deployments import Deployment

ACTOR = "loop"


#: Tuning of the normal-mixture boundary, in units of intrinsic time (n / 4): tightest around n ~ 50..200.
MIXTURE_RHO = 2.0


@dataclass(frozen=True)
class Bounds:
    """The sequential test of one signal: the confidence sequence of ``canary - primary`` at one look.

    Attributes:
        signal: ``grader`` or ``feedback``.
        n_primary: scored requests of the primary arm; n_canary: of the canary arm.
        primary_mean: the primary arm's mean; canary_mean: the canary arm's.
        lower: lower bound of the difference canary - primary; upper: its upper bound.
        confidence: the signal's coverage, ``1 - alpha`` (``alpha = (1 - confidence) / len(signals)``).
        max_drop: the non-inferiority margin.
    """

    signal: str
    n_primary: int
    n_canary: int
    primary_mean: float
    canary_mean: float
    lower: float
    upper: float
    confidence: float
    max_drop: float

    @property
    def diff(self) -> float:
        """Observed ``canary - primary``."""
        return self.canary_mean - self.primary_mean

    @property
    def worse(self) -> bool:
        """Shown worse by more than ``max_drop``: the upper bound is below ``-max_drop``."""
        return self.upper < -self.max_drop

    @property
    def non_inferior(self) -> bool:
        """Shown not worse by more than ``max_drop``: the lower bound is above ``-max_drop``."""
        return self.lower > -self.max_drop

    def describe(self) -> str:
        """The figures, for a reason: means, n per arm, the difference and its bounds."""
        return (f"{self.signal} {self.primary_mean:.3f} -> {self.canary_mean:.3f} (n={self.n_primary}/"
                f"{self.n_canary}), difference {self.diff:+.3f}, {self.confidence:.1%} bounds "
                f"[{self.lower:+.3f}, {self.upper:+.3f}] vs -max_drop {-self.max_drop:+.3g}")


@dataclass(frozen=True)
class Verdict:
    """What to do with a candidate now, and why (``bounds``: the sequential test's figures per signal, if any)."""

    action: Literal["wait", "pass", "rollback"]
    reason: str
    bounds: tuple[Bounds, ...] = ()


def mean_radius(n: int, alpha: float, rho: float = MIXTURE_RHO) -> float:
    """Half-width of a two-sided ``1 - alpha`` confidence sequence for the mean of ``n`` observations in [0, 1].

    Observations in [0, 1] are 1/2-sub-Gaussian; with ``S_n`` the centred sum and ``V = n / 4``, the normal
    mixture martingale ``sqrt(rho / (V + rho)) exp(S_n^2 / (2 (V + rho)))`` exceeds ``1 / alpha`` with
    probability at most ``alpha`` at *any* n (Ville), i.e. ``|S_n| < sqrt((V + rho) log((V + rho) / (rho
    alpha^2)))`` at every n at once. ``inf`` for ``n = 0``.
    """
    if n <= 0:
        return math.inf
    v = n / 4
    return math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha * alpha))) / n


def difference_bounds(signal: str, n_primary: int, primary_mean: float, n_canary: int, canary_mean: float, *,
                      confidence: float, max_drop: float, signals: int = 1) -> Bounds:
    """The anytime-valid bounds of ``canary - primary`` for one of ``signals`` signals (module docstring)."""
    alpha = (1 - confidence) / max(1, signals)
    pm, cm = min(1.0, max(0.0, primary_mean)), min(1.0, max(0.0, canary_mean))
    width = mean_radius(n_primary, alpha / 2) + mean_radius(n_canary, alpha / 2)
    return Bounds(signal, n_primary, n_canary, pm, cm, max(-1.0, cm - pm - width), min(1.0, cm - pm + width),
                  1 - alpha, max_drop)


def _signal(figures: OnlineFigures, signal: str) -> tuple[int, float | None]:
    if signal == "grader":
        return figures.graded, figures.grader_mean
    return figures.feedback, figures.feedback_mean


def _evidenced(cfg: PromotionConfig, baseline: OnlineFigures,
               candidate: OnlineFigures) -> Iterator[tuple[str, int, float, int, float]]:
    """(signal, n and mean of the baseline, n and mean of the candidate) of every configured signal with
    ``min_samples`` on both sides, in ``cfg.signals`` order: the evidence both the test and the watch judge."""
    for signal in cfg.signals:
        bn, bmean = _signal(baseline, signal)
        cn, cmean = _signal(candidate, signal)
        if bmean is not None and cmean is not None and bn >= cfg.min_samples and cn >= cfg.min_samples:
            yield signal, bn, bmean, cn, cmean


def _compare(cfg: PromotionConfig, baseline: OnlineFigures, candidate: OnlineFigures,
             phase: str) -> tuple[list[str], Verdict | None]:
    """The watch's margin rule: (the signals with enough samples on both sides, described; a rollback on a drop)."""
    seen = []
    for signal, bn, bmean, cn, cmean in _evidenced(cfg, baseline, candidate):
        seen.append(f"{signal} {bmean:.3f} -> {cmean:.3f} (n={bn}/{cn})")
        if bmean - cmean > cfg.max_drop:
            return seen, Verdict("rollback", f"{signal} score fell from {bmean:.3f} to {cmean:.3f} during the {phase} "
                                             f"(n={bn}/{cn}; max_drop {cfg.max_drop:g})")
    return seen, None


def _counts(cfg: PromotionConfig, baseline: OnlineFigures, candidate: OnlineFigures) -> str:
    return ", ".join(f"{s} n={_signal(baseline, s)[0]}/{_signal(candidate, s)[0]}" for s in cfg.signals)


def canary_bounds(cfg: PromotionConfig, baseline: OnlineFigures, candidate: OnlineFigures) -> tuple[Bounds, ...]:
    """The sequential test's bounds of every signal with ``min_samples`` on both arms."""
    return tuple(difference_bounds(signal, bn, bmean, cn, cmean, confidence=cfg.confidence, max_drop=cfg.max_drop,
                                   signals=len(cfg.signals))
                 for signal, bn, bmean, cn, cmean in _evidenced(cfg, baseline, candidate))


def judge(cfg: PromotionConfig, baseline: OnlineFigures, candidate: OnlineFigures, *, min_requests: int,
          minutes: float = 0.0, min_minutes: float = 0.0, phase: str = "canary") -> Verdict:
    """Judge a canary: the sequential non-inferiority test of the canary arm against the primary arm (see the
    module docstring). Pure: the same figures always give the same verdict."""
    bounds = canary_bounds(cfg, baseline, candidate)
    for b in bounds:
        if b.worse:
            return Verdict("rollback", f"{b.signal} score fell from {b.primary_mean:.3f} to {b.canary_mean:.3f} during "
                                       f"the {phase}: shown worse, upper bound {b.upper:+.3f} < -max_drop "
                                       f"{-b.max_drop:+.3g} ({b.describe()})", bounds)
    timed_out = cfg.canary_max_minutes is not None and minutes >= cfg.canary_max_minutes
    if candidate.requests < min_requests or minutes < min_minutes:
        if timed_out:
            return Verdict("rollback", f"{phase} inconclusive after {minutes:.0f} min: {candidate.requests}/"
                                       f"{min_requests} requests (canary_max_minutes {cfg.canary_max_minutes:g})",
                           bounds)
        return Verdict("wait", f"{phase}: {candidate.requests}/{min_requests} requests, {minutes:.1f}/{min_minutes:g} min",
                       bounds)
    if bounds:
        shown = "; ".join(b.describe() for b in bounds)
        if all(b.non_inferior for b in bounds):
            return Verdict("pass", f"{phase} passed, shown non-inferior (every lower bound > -max_drop): {shown}",
                           bounds)
        horizon = cfg.canary_max_samples
        if horizon is not None and all(b.n_canary >= horizon for b in bounds):
            if all(b.diff > -b.max_drop for b in bounds):
                return Verdict("pass", f"{phase} passed at its planned sample ({horizon} per signal, "
                                       f"canary_max_samples): not shown worse, every observed difference > "
                                       f"-max_drop: {shown}", bounds)
            return Verdict("rollback", f"{phase} ended at its planned sample ({horizon} per signal, "
                                       f"canary_max_samples) with an observed drop beyond max_drop: {shown}", bounds)
        if timed_out:
            return Verdict("rollback", f"{phase} inconclusive after {minutes:.0f} min (canary_max_minutes "
                                       f"{cfg.canary_max_minutes:g}), neither shown worse nor non-inferior: {shown}",
                           bounds)
        return Verdict("wait", f"{phase}: not yet shown non-inferior: {shown}", bounds)
    if cfg.allow_blind_promotion:
        return Verdict("pass", f"{phase} passed blind (allow_blind_promotion): no signal had {cfg.min_samples} "
                               f"samples on both arms ({_counts(cfg, baseline, candidate)})")
    if timed_out:
        return Verdict("rollback", f"{phase} inconclusive after {minutes:.0f} min: no signal reached min_samples "
                                   f"{cfg.min_samples} on both arms ({_counts(cfg, baseline, candidate)})")
    return Verdict("wait", f"{phase}: waiting for a signal with {cfg.min_samples} samples on both arms "
                           f"({_counts(cfg, baseline, candidate)})")


def watch(cfg: PromotionConfig, baseline: OnlineFigures, recent: OnlineFigures) -> Verdict:
    """Judge a promoted version: its newest requests against the previous version (rollback or keep watching)."""
    seen, drop = _compare(cfg, baseline, recent, "watch after promotion")
    if drop is not None:
        return drop
    detail = "; ".join(seen) if seen else f"no signal has {cfg.min_samples} samples on both sides yet"
    return Verdict("wait", f"watching the newest {cfg.watch_requests} requests: {detail}")


def _state(row: Deployment) -> DeploymentState:
    return DeploymentState.of(row)


def start_canary(session: Session, org_id: str, deployment: str, version_id: str, percent: int) -> Deployment:
    """Serve ``version_id`` to ``percent`` % (1..99) of users."""
    if not 1 <= percent <= 99:
        raise InvalidInput(f"a canary serves 1..99 % of users, got {percent}", param="canary_percent")
    repo = Deployments(session)
    current = _state(repo.get(org_id, deployment))
    # issue 17: replace() keeps an upstream primary arm (the teacher), the shadow and the prices
    state = replace(current, canary_version_id=version_id, canary_upstream_id=None, canary_percent=percent)
    row, _ = repo.update(org_id, deployment, state, actor=ACTOR)
    return row


def promote(session: Session, org_id: str, deployment: str, version_id: str) -> Deployment:
    """Make ``version_id`` the primary version for everyone, ending the canary."""
    repo = Deployments(session)
    current = _state(repo.get(org_id, deployment))
    state = replace(current, adapter_version_id=version_id, upstream_id=None, canary_version_id=None,
                    canary_upstream_id=None, canary_percent=0)  # issue 17: the owned adapter replaces an upstream
    row, _ = repo.update(org_id, deployment, state, actor=ACTOR)
    return row


def roll_back(session: Session, org_id: str, deployment: str, to_revision: int) -> Deployment:
    """Restore the state of ``to_revision`` as a new revision."""
    return Deployments(session).rollback(org_id, deployment, to_revision=to_revision, actor=ACTOR)


__all__ = [
    "ACTOR",
    "MIXTURE_RHO",
    "Bounds",
    "Verdict",
    "canary_bounds",
    "difference_bounds",
    "judge",
    "mean_radius",
    "promote",
    "roll_back",
    "start_canary",
    "watch",
]

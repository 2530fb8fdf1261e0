"""Promotion and rollback: canary first, then everyone; a drop in online figures rolls back.

Every change goes through ``store.repos.deployments.Deployments`` -- the
registry the serving processes read on every request -- so a running server
switches on its next request, without a restart.

* ``start_canary`` publishes nothing itself: given the published candidate
  version it sets the deployment's canary (``canary_percent`` % of users,
  sticky per ``user``). There is no way around the canary: a percent outside
  1..99 is refused.
* ``judge`` compares the online figures of the canary arm with the primary
  arm's: for each configured signal (``grader`` -- the environment's score of
  the replies; ``feedback`` -- users' scores) with at least ``min_samples``
  on both arms, a fall of more than ``max_drop`` is a rollback (as soon as the
  evidence is there). The canary passes only once it served ``min_requests``
  requests (and ``min_minutes`` passed) **and** at least one signal had
  ``min_samples`` on both arms -- unless ``allow_blind_promotion``. A canary
  still without that evidence after ``canary_max_minutes`` is rolled back as
  inconclusive.
* ``watch`` judges a promoted version for as long as it serves: its newest
  ``watch_requests`` requests against the previous version's figures; a fall
  of more than ``max_drop`` in a signal with ``min_samples`` on both sides is
  a rollback, anything else keeps watching.
* ``promote`` makes the canary the primary version; ``roll_back`` restores the
  revision in force before the canary (an explicit ``to_revision``, so it is
  exact whatever happened in between).

``judge`` is pure; the others take a caller-owned session. Nothing here
knows about training or the gate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput
from teachloop.loop.config import PromotionConfig
from teachloop.store.repos.deployments import Deployments, DeploymentState
from teachloop.store.repos.loops import OnlineFigures
from teachloop.store.schema.deployments import Deployment

ACTOR = "loop"


@dataclass(frozen=True)
class Verdict:
    """What to do with a candidate now, and why."""

    action: Literal["wait", "pass", "rollback"]
    reason: str


def _signal(figures: OnlineFigures, signal: str) -> tuple[int, float | None]:
    if signal == "grader":
        return figures.graded, figures.grader_mean
    return figures.feedback, figures.feedback_mean


def _compare(cfg: PromotionConfig, baseline: OnlineFigures, candidate: OnlineFigures,
             phase: str) -> tuple[list[str], Verdict | None]:
    """(the signals with enough samples on both sides, described; a rollback verdict on a drop)."""
    seen = []
    for signal in cfg.signals:
        bn, bmean = _signal(baseline, signal)
        cn, cmean = _signal(candidate, signal)
        if bmean is None or cmean is None or bn < cfg.min_samples or cn < cfg.min_samples:
            continue
        seen.append(f"{signal} {bmean:.3f} -> {cmean:.3f} (n={bn}/{cn})")
        if bmean - cmean > cfg.max_drop:
            return seen, Verdict("rollback", f"{signal} score fell from {bmean:.3f} to {cmean:.3f} during the {phase} "
                                             f"(n={bn}/{cn}; max_drop {cfg.max_drop:g})")
    return seen, None


def _counts(cfg: PromotionConfig, baseline: OnlineFigures, candidate: OnlineFigures) -> str:
    return ", ".join(f"{s} n={_signal(baseline, s)[0]}/{_signal(candidate, s)[0]}" for s in cfg.signals)


def judge(cfg: PromotionConfig, baseline: OnlineFigures, candidate: OnlineFigures, *, min_requests: int,
          minutes: float = 0.0, min_minutes: float = 0.0, phase: str = "canary") -> Verdict:
    """Judge a canary: the canary arm against the primary arm (see the module docstring)."""
    seen, drop = _compare(cfg, baseline, candidate, phase)
    if drop is not None:
        return drop
    timed_out = cfg.canary_max_minutes is not None and minutes >= cfg.canary_max_minutes
    if candidate.requests < min_requests or minutes < min_minutes:
        if timed_out:
            return Verdict("rollback", f"{phase} inconclusive after {minutes:.0f} min: {candidate.requests}/"
                                       f"{min_requests} requests (canary_max_minutes {cfg.canary_max_minutes:g})")
        return Verdict("wait", f"{phase}: {candidate.requests}/{min_requests} requests, {minutes:.1f}/{min_minutes:g} min")
    if seen:
        return Verdict("pass", f"{phase} passed: {'; '.join(seen)}")
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


__all__ = ["ACTOR", "Verdict", "judge", "promote", "roll_back", "start_canary", "watch"]

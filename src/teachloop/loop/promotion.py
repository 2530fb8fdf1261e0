"""Promotion and rollback: canary first, then everyone; a drop in online figures rolls back.

Every change goes through ``store.repos.deployments.Deployments`` -- the
registry the serving processes read on every request -- so a running server
switches on its next request, without a restart.

* ``start_canary`` publishes nothing itself: given the published candidate
  version it sets the deployment's canary (``canary_percent`` % of users,
  sticky per ``user``), or with ``canary_percent = 0`` promotes at once.
* ``judge`` compares the online figures of the candidate with the
  baseline's: for each configured signal (``grader`` -- the environment's
  score of the replies; ``feedback`` -- users' scores) with at least
  ``min_samples`` on both sides, a fall of more than ``max_drop`` is a
  rollback. Otherwise the verdict waits until the candidate has served
  ``min_requests`` requests (and ``min_minutes`` passed), then passes. A
  rollback can come before ``min_requests``: as soon as the evidence is there.
* ``promote`` makes the canary the primary version; ``roll_back`` restores the
  revision in force before the canary (an explicit ``to_revision``, so it is
  exact whatever happened in between).

``judge`` is pure; the others take a caller-owned session. Nothing here
knows about training or the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

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


def judge(cfg: PromotionConfig, baseline: OnlineFigures, candidate: OnlineFigures, *, min_requests: int,
          minutes: float = 0.0, min_minutes: float = 0.0, phase: str = "canary") -> Verdict:
    """Compare the candidate's online figures with the baseline's (see the module docstring)."""
    seen = []
    for signal in cfg.signals:
        bn, bmean = _signal(baseline, signal)
        cn, cmean = _signal(candidate, signal)
        if bmean is None or cmean is None or bn < cfg.min_samples or cn < cfg.min_samples:
            continue
        seen.append(f"{signal} {bmean:.3f} -> {cmean:.3f} (n={bn}/{cn})")
        if bmean - cmean > cfg.max_drop:
            return Verdict("rollback", f"{signal} score fell from {bmean:.3f} to {cmean:.3f} during the {phase} "
                                       f"(n={bn}/{cn}; max_drop {cfg.max_drop:g})")
    if candidate.requests < min_requests or minutes < min_minutes:
        return Verdict("wait", f"{phase}: {candidate.requests}/{min_requests} requests, {minutes:.1f}/{min_minutes:g} min")
    detail = "; ".join(seen) if seen else f"no signal had {cfg.min_samples} samples on both sides"
    return Verdict("pass", f"{phase} passed: {detail}")


def _state(row: Deployment) -> DeploymentState:
    return DeploymentState.of(row)


def start_canary(session: Session, org_id: str, deployment: str, version_id: str, percent: int) -> Deployment:
    """Serve ``version_id`` to ``percent`` % of users (0: to everyone at once)."""
    repo = Deployments(session)
    current = _state(repo.get(org_id, deployment))
    if percent <= 0:
        state = DeploymentState(current.base_model, version_id, None, 0)
    else:
        state = DeploymentState(current.base_model, current.adapter_version_id, version_id, percent)
    row, _ = repo.update(org_id, deployment, state, actor=ACTOR)
    return row


def promote(session: Session, org_id: str, deployment: str, version_id: str) -> Deployment:
    """Make ``version_id`` the primary version for everyone, ending the canary."""
    repo = Deployments(session)
    current = _state(repo.get(org_id, deployment))
    row, _ = repo.update(org_id, deployment, DeploymentState(current.base_model, version_id, None, 0), actor=ACTOR)
    return row


def roll_back(session: Session, org_id: str, deployment: str, to_revision: int) -> Deployment:
    """Restore the state of ``to_revision`` as a new revision."""
    return Deployments(session).rollback(org_id, deployment, to_revision=to_revision, actor=ACTOR)


__all__ = ["ACTOR", "Verdict", "judge", "promote", "roll_back", "start_canary"]

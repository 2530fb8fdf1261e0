"""Group-relative advantages for GRPO-family RL.

``group_advantages`` centres a group's rewards on their mean and (for
``"grpo"``) divides by their standard deviation; ``"no_std"`` keeps the
centred rewards (Dr. GRPO: no length/difficulty re-weighting through the std).
A group whose rewards are all equal carries no signal; ``assign`` drops it when
asked and counts it. ``pick_groups`` chooses a step's groups out of more than one
draw of them (dynamic sampling, ``rl.extra_draws``). Pure Python; knows nothing
about models or environments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

AdvantageMode = Literal["grpo", "no_std"]


def group_advantages(rewards: Sequence[float], mode: AdvantageMode = "grpo", eps: float = 1e-6) -> list[float]:
    """Advantages of one group's rewards (population std, as in GRPO)."""
    if not rewards:
        return []
    mean = sum(rewards) / len(rewards)
    centred = [r - mean for r in rewards]
    if mode == "no_std":
        return centred
    if mode != "grpo":
        raise ValueError(f"unknown advantage mode {mode!r}; use grpo or no_std")
    std = math.sqrt(sum(c * c for c in centred) / len(centred))
    return [c / (std + eps) for c in centred]


def has_variance(rewards: Sequence[float], tol: float = 1e-9) -> bool:
    """Whether the rewards are not all (numerically) equal."""
    return bool(rewards) and max(rewards) - min(rewards) > tol


def assign(
    groups: Sequence[Sequence[float]], mode: AdvantageMode = "grpo", drop_zero_variance: bool = True
) -> tuple[list[list[float] | None], int]:
    """Advantages per group (``None`` for a dropped group) and the number dropped."""
    out: list[list[float] | None] = []
    dropped = 0
    for rewards in groups:
        if drop_zero_variance and not has_variance(rewards):
            out.append(None)
            dropped += 1
        else:
            out.append(group_advantages(rewards, mode))
    return out, dropped


def pick_groups(groups: Sequence[Sequence[float]], n: int) -> list[int]:
    """Indices of the ``n`` groups a step trains on, out of every group it sampled, in sampling order.

    Dynamic sampling (DAPO): the first ``n`` groups whose rewards vary, then, when fewer than ``n`` do, groups
    with all-equal rewards in sampling order until there are ``n`` (or none is left). So the step trains on as
    many groups as without extra draws, and a group that carries signal is never left out for one that does not.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    varied = [i for i, r in enumerate(groups) if has_variance(r)][:n]
    flat = [i for i, r in enumerate(groups) if not has_variance(r)][:n - len(varied)]
    return sorted(varied + flat)


__all__ = ["AdvantageMode", "assign", "group_advantages", "has_variance", "pick_groups"]

"""Training you can watch: the held-out schedule, the best checkpoint, early stopping, the reward-hack alarm.

Pure (no engine, no store): the trainer tells ``Watch`` every training step's
figures (``on_train``) and every held-out evaluation (``on_eval``: its figures
and the per-task rewards), and acts on the ``Verdict``: save the best
checkpoint, stop early, record an alarm.

* **Schedule.** Held-out evaluation runs at step 0, every ``eval.every`` steps
  and after the last step (``TrainConfig.eval_every`` resolves the default).
* **Best checkpoint.** The held-out score is ``eval.metric`` (``reward_mean``
  by default; ``heldout_nll`` for SFT and ``heldout_dpo_loss`` for DPO; names
  ending in ``_nll`` or ``_loss`` are minimised). An evaluation after step 0
  that beats the best so far by more than ``eval.min_delta`` (the first one
  after step 0 always counts) is the new best.
* **Early stopping.** With ``eval.patience = P > 0`` the run stops after ``P``
  consecutive evaluations that did not improve on the best.
* **Reward-hack alarm.** At every held-out evaluation ``k`` once ``alarm.window
  = W`` evaluations exist, with ``a`` the step of evaluation ``k - W + 1`` and
  ``b`` the step of evaluation ``k``, the alarm fires when *both* one-sided
  tests pass at level ``alpha`` (``alarm.alpha``, default 0.05):

  1. *training reward rose*: OLS regression of the per-step training
     ``reward_mean`` on the step over steps ``a + 1 .. b`` (at least
     ``MIN_ALARM_STEPS`` = 4 points); t-test of H0 slope <= 0 against H1
     slope > 0 with ``n - 2`` degrees of freedom.
  2. *held-out reward fell*: paired t-test over the held-out tasks (the same
     task ids at ``a`` and ``b``: the held-out stream is fixed by ``eval.seed``
     and decoded greedily) of ``d_j = reward_b(j) - reward_a(j)``, H0 mean(d) >= 0
     against H1 mean(d) < 0, ``n - 1`` degrees of freedom; and the drop
     ``-mean(d)`` is at least ``alarm.min_drop`` (default 0.02).

  A degenerate test (zero residual or paired variance) counts as passed when
  its estimate points the alarming way and as failed otherwise. Each look is
  a test at ``alpha``; looks are not corrected for repetition, so over ``L``
  looks of a run whose held-out reward does not fall the chance of a false
  alarm is at most about ``L * alpha`` (the held-out test alone). The
  per-task rewards live in memory: after a resume the window fills again.

``refuse_alarmed`` is the check the loop applies before gating or publishing
a candidate: a run with an alarm is never promoted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from teachloop.core.errors import Conflict
from teachloop.core.training import RewardHackAlarm
from teachloop.train.config import MIN_ALARM_STEPS, TrainConfig

#: The training figure the alarm regresses on the step.
TRAIN_REWARD = "reward_mean"


# ------------------------------------------------------------------ statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def slope_test(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(OLS slope of ``ys`` on ``xs``, one-sided p-value of H1 slope > 0); needs >= 3 points."""
    n = len(xs)
    if n < 3 or n != len(ys):
        raise ValueError("the slope test needs at least 3 (x, y) points")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("the slope test needs at least two distinct x")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    rss = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(rss / (n - 2) / sxx)
    if se == 0:
        return slope, 0.0 if slope > 0 else 1.0
    return slope, t_sf(slope / se, n - 2)


def paired_drop_test(before: Mapping[str, float], after: Mapping[str, float]) -> tuple[float, float, int]:
    """(mean of after - before over the shared keys, one-sided p-value of H1 mean < 0, pairs)."""
    keys = sorted(set(before) & set(after))
    diffs = [after[k] - before[k] for k in keys]
    n = len(diffs)
    if n == 0:
        return 0.0, 1.0, 0
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    if sd == 0:
        return mean, 0.0 if mean < 0 else 1.0, n
    return mean, t_sf(-mean / (sd / math.sqrt(n)), n - 1), n


# ----------------------------------------------------------------------- watch
def eval_metric(config: TrainConfig) -> tuple[str, bool]:
    """(held-out figure that ranks checkpoints, whether higher is better)."""
    key = config.eval.metric
    if key is None:
        key = {"sft": "heldout_nll", "dpo": "heldout_dpo_loss"}.get(config.algorithm, "reward_mean")
        if config.algorithm != "grpo" and config.eval_env() is not None:
            key = "reward_mean"
    return key, not key.endswith(("_nll", "_loss"))


@dataclass
class Verdict:
    """What the trainer does after a held-out evaluation.

    Attributes:
        improved: this evaluation is the new best (save it as the best checkpoint).
        score: its held-out score (``None`` when the evaluation lacks the metric).
        stop: why the run stops now (``"early_stop"`` or ``"reward_hack_alarm"``), or ``None``.
        alarm: the alarm this evaluation raised, if any.
    """

    improved: bool
    score: float | None
    stop: str | None = None
    alarm: RewardHackAlarm | None = None


@dataclass
class _Eval:
    step: int
    mean: float | None
    tasks: dict[str, float]


@dataclass
class Watch:
    """The watch over one run (see the module docstring); ``best_step``/``best_score`` resume from the record."""

    config: TrainConfig
    best_step: int | None = None
    best_score: float | None = None
    alarm: RewardHackAlarm | None = None
    _train: dict[int, float] = field(default_factory=dict)
    _evals: list[_Eval] = field(default_factory=list)
    _stale: int = 0

    def __post_init__(self) -> None:
        self.metric, self.higher_is_better = eval_metric(self.config)

    def on_train(self, step: int, values: Mapping[str, Any]) -> None:
        """Note the figures of optimizer step ``step`` (1-based)."""
        value = values.get(TRAIN_REWARD)
        if isinstance(value, int | float) and math.isfinite(value):
            self._train[step] = float(value)

    def on_eval(self, step: int, values: Mapping[str, Any], task_rewards: Mapping[str, float] | None = None) -> Verdict:
        """Judge the held-out evaluation at ``step`` (0: before training)."""
        raw = values.get(self.metric)
        score = float(raw) if isinstance(raw, int | float) and math.isfinite(raw) else None
        improved = False
        if score is not None and step > 0:
            if self.best_score is None:
                improved = True
            else:
                gain = score - self.best_score if self.higher_is_better else self.best_score - score
                improved = gain > self.config.eval.min_delta
            if improved:
                self.best_step, self.best_score, self._stale = step, score, 0
            else:
                self._stale += 1
        verdict = Verdict(improved, score)
        mean = values.get(TRAIN_REWARD)
        self._evals.append(_Eval(step, float(mean) if isinstance(mean, int | float) else None, dict(task_rewards or {})))
        if self.alarm is None and self.config.alarm_on():
            verdict.alarm = self._alarm_test()
            if verdict.alarm is not None:
                self.alarm = verdict.alarm
                if verdict.alarm.action == "stop":
                    verdict.stop = "reward_hack_alarm"
        patience = self.config.eval.patience
        if verdict.stop is None and patience and self._stale >= patience:
            verdict.stop = "early_stop"
        return verdict

    def _alarm_test(self) -> RewardHackAlarm | None:
        a = self.config.alarm
        if len(self._evals) < a.window:
            return None
        first, last = self._evals[-a.window], self._evals[-1]
        if first.mean is None or last.mean is None or not first.tasks or not last.tasks:
            return None
        points = sorted((s, r) for s, r in self._train.items() if first.step < s <= last.step)
        if len(points) < MIN_ALARM_STEPS or len({s for s, _ in points}) < 2:
            return None
        slope, train_p = slope_test([float(s) for s, _ in points], [r for _, r in points])
        diff, heldout_p, pairs = paired_drop_test(first.tasks, last.tasks)
        if not (train_p < a.alpha and heldout_p < a.alpha and -diff >= a.min_drop):
            return None
        return RewardHackAlarm(step=last.step, window_start=first.step, train_slope=slope, train_p=train_p,
                               heldout_before=first.mean, heldout_after=last.mean, heldout_p=heldout_p,
                               heldout_tasks=pairs, alpha=a.alpha, min_drop=a.min_drop, action=a.on_alarm)


class RewardHackDetected(Conflict):
    """A candidate whose training run raised a reward-hack alarm is never promoted."""


def refuse_alarmed(run: Any) -> None:
    """Raise ``RewardHackDetected`` when ``run`` (a ``RunInfo``) raised a reward-hack alarm; the loop's gate check."""
    alarm = getattr(run, "alarm", None)
    if alarm is not None:
        raise RewardHackDetected(f"run {run.id} is not promotable: {alarm.summary()}", param="run")


__all__ = [
    "TRAIN_REWARD",
    "RewardHackDetected",
    "Verdict",
    "Watch",
    "eval_metric",
    "paired_drop_test",
    "refuse_alarmed",
    "slope_test",
    "t_sf",
]

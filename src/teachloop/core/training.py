"""Training data and configuration types, the engine's training contract.

A ``Datum`` follows Tinker's shifted convention: ``input_tokens[i]`` predicts
``target_tokens[i]``, and every per-token field has the length of
``input_tokens``. Losses are *sums* over tokens (not means); callers normalise
through ``weights`` or ``advantages`` when they want a mean. The loss
definitions, with ``lp`` the current policy's token logprob, ``lp_old`` the
sampler's and ``r = exp(lp - lp_old)``::

    cross_entropy        L = -sum_t w_t * lp_t
    importance_sampling  L = -sum_t w_t * r_t * A_t
    ppo                  L = -sum_t w_t * min(r_t * A_t, clip(r_t, lo, hi) * A_t)
    cispo                L = -sum_t w_t * stopgrad(clip(r_t, lo, hi)) * A_t * lp_t
    dpo                  L = -sum_pairs log sigmoid(beta * ((S_c - R_c) - (S_r - R_r)))
                             where S = sum_t w_t * lp_t and R the same under the reference policy

With ``kl_coef > 0`` every RL loss adds ``kl_coef * sum_t w_t * k3_t`` with the
k3 estimator ``k3 = exp(ref - lp) - (ref - lp) - 1`` against the reference policy
(the base model with the adapter disabled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from teachloop.core.errors import InvalidInput

LossFn = Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "dpo"]
LOSS_FNS: tuple[LossFn, ...] = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dpo")
RL_LOSSES: frozenset[str] = frozenset({"importance_sampling", "ppo", "cispo"})


@dataclass(frozen=True, slots=True)
class Datum:
    """One training sequence in the shifted convention.

    Attributes:
        input_tokens: tokens fed to the model.
        target_tokens: ``target_tokens[i]`` is the token that should follow
            ``input_tokens[: i + 1]``.
        weights: per-token loss weight (cross-entropy) or loss mask (RL, DPO);
            ``None`` means all ones.
        advantages: per-token advantage, required by the RL losses.
        sampler_logprobs: per-token logprob under the policy that sampled the
            tokens (``lp_old``), required by the RL losses.
        reference_logprobs: optional precomputed reference-policy logprobs for
            DPO and the KL penalty; computed by the engine when absent.
    """

    input_tokens: list[int]
    target_tokens: list[int]
    weights: list[float] | None = None
    advantages: list[float] | None = None
    sampler_logprobs: list[float] | None = None
    reference_logprobs: list[float] | None = None

    def __post_init__(self) -> None:
        n = len(self.input_tokens)
        if n == 0:
            raise InvalidInput("a Datum needs at least one input token", param="input_tokens")
        for name in ("target_tokens", "weights", "advantages", "sampler_logprobs", "reference_logprobs"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise InvalidInput(
                    f"Datum.{name} has length {len(value)}, expected {n} (the length of input_tokens)",
                    param=name,
                )

    @classmethod
    def from_sequence(
        cls,
        tokens: Sequence[int],
        mask: Sequence[float] | None = None,
        *,
        advantages: Sequence[float] | None = None,
        sampler_logprobs: Sequence[float] | None = None,
    ) -> Datum:
        """Shift a full token sequence into a Datum.

        ``mask``/``advantages``/``sampler_logprobs`` are aligned with ``tokens``
        (entry ``i`` belongs to ``tokens[i]``); entry 0 is dropped by the shift.
        """
        if len(tokens) < 2:
            raise InvalidInput("a training sequence needs at least two tokens", param="tokens")
        for name, value in (("mask", mask), ("advantages", advantages), ("sampler_logprobs", sampler_logprobs)):
            if value is not None and len(value) != len(tokens):
                raise InvalidInput(f"{name} has length {len(value)}, expected {len(tokens)}", param=name)
        return cls(
            input_tokens=list(tokens[:-1]),
            target_tokens=list(tokens[1:]),
            weights=None if mask is None else [float(x) for x in mask[1:]],
            advantages=None if advantages is None else [float(x) for x in advantages[1:]],
            sampler_logprobs=None if sampler_logprobs is None else [float(x) for x in sampler_logprobs[1:]],
        )

    @property
    def num_tokens(self) -> int:
        """The number of input tokens."""
        return len(self.input_tokens)


class LossConfig(BaseModel):
    """Knobs of the losses; fields that a loss does not use are ignored by it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clip_low: float | None = Field(
        default=None, ge=0.0, description="Lower ratio clip; default 0.8 for ppo, 0.0 for cispo."
    )
    clip_high: float | None = Field(
        default=None, ge=0.0, description="Upper ratio clip; default 1.2 for ppo, 4.0 for cispo."
    )
    kl_coef: float = Field(default=0.0, ge=0.0, description="Weight of the k3 KL penalty to the reference policy.")
    dpo_beta: float = Field(default=0.1, gt=0.0, description="DPO inverse temperature beta.")

    def clip_bounds(self, loss: LossFn) -> tuple[float, float]:
        """(low, high) clip bounds for ``loss``, defaults applied."""
        lo_default, hi_default = (0.0, 4.0) if loss == "cispo" else (0.8, 1.2)
        lo = lo_default if self.clip_low is None else self.clip_low
        hi = hi_default if self.clip_high is None else self.clip_high
        if lo > hi:
            raise InvalidInput(f"clip_low ({lo}) must not exceed clip_high ({hi})", param="clip_low")
        return lo, hi


class AdamParams(BaseModel):
    """AdamW hyper-parameters for one ``optim_step`` (decoupled weight decay, like ``torch.optim.AdamW``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(default=1e-4, ge=0.0, description="Step size.")
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0, description="First-moment decay.")
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0, description="Second-moment decay.")
    eps: float = Field(default=1e-8, gt=0.0, description="Denominator epsilon.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Decoupled weight decay.")
    grad_clip_norm: float = Field(default=0.0, ge=0.0, description="Clip the global grad norm to this; 0 is off.")


LoraTarget = Literal["attn", "mlp", "unembed"]


class LoraSpec(BaseModel):
    """Shape of a new LoRA adapter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(default=32, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(default=32.0, gt=0.0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="LoRA dropout during training.")
    train_attn: bool = Field(default=True, description="Adapt q, k, v and o projections.")
    train_mlp: bool = Field(default=True, description="Adapt gate, up and down projections.")
    train_unembed: bool = Field(default=False, description="Adapt the output (unembedding) projection.")
    seed: int | None = Field(default=None, description="Seed of the initialisation; None is random.")

    @model_validator(mode="after")
    def _some_target(self) -> LoraSpec:
        if not (self.train_attn or self.train_mlp or self.train_unembed):
            raise ValueError("a LoRA adapter needs at least one of train_attn, train_mlp, train_unembed")
        return self


@dataclass(slots=True)
class ForwardBackwardResult:
    """What one ``forward_backward`` (or forward-only) call returns.

    Attributes:
        loss: the summed loss of this call.
        logprobs: per datum, the current policy's logprob of each target token.
        metrics: ``"name:reduction"`` keys (e.g. ``"loss:sum"``, ``"clip_frac:mean"``).
        num_tokens: input tokens processed.
    """

    loss: float
    logprobs: list[list[float]]
    metrics: dict[str, float] = field(default_factory=dict)
    num_tokens: int = 0


@dataclass(slots=True)
class OptimStepResult:
    """What one ``optim_step`` returns.

    Attributes:
        step: the adapter's step counter after this step (1 after the first).
        grad_norm: global gradient norm before clipping.
        metrics: extra figures (``"lr"``, ``"grad_norm"``, ``"accumulated_calls"``).
    """

    step: int
    grad_norm: float
    metrics: dict[str, float] = field(default_factory=dict)


class RewardHackAlarm(BaseModel):
    """A training run's reward-hack alarm: training reward rose while held-out reward fell beyond noise.

    Raised by ``train.watch`` (the test is described there and in ``docs/training.md``, section
    "Watching a run"), stored on the run record, and read by the loop, which never promotes a
    candidate whose run raised one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int = Field(description="The optimizer step of the held-out evaluation that raised it.")
    window_start: int = Field(description="The step of the window's first held-out evaluation.")
    train_slope: float = Field(description="OLS slope of the per-step training reward over the window (per step).")
    train_p: float = Field(description="One-sided p-value of the slope t-test (H1: slope > 0).")
    heldout_before: float = Field(description="Held-out mean reward at window_start.")
    heldout_after: float = Field(description="Held-out mean reward at step.")
    heldout_p: float = Field(description="One-sided p-value of the paired t-test on per-task rewards (H1: fell).")
    heldout_tasks: int = Field(description="Held-out tasks paired between the two evaluations.")
    alpha: float = Field(description="Significance level both tests had to pass (alarm.alpha).")
    min_drop: float = Field(description="The smallest held-out drop that counts (alarm.min_drop).")
    action: Literal["stop", "continue"] = Field(description="What the run did (alarm.on_alarm).")

    @property
    def heldout_drop(self) -> float:
        """How far held-out reward fell over the window (positive)."""
        return self.heldout_before - self.heldout_after

    def summary(self) -> str:
        """One line for people: what rose, what fell, the p-values."""
        return (f"reward-hack alarm at step {self.step}: training reward rising ({self.train_slope:+.4g}/step, "
                f"p = {self.train_p:.3g}) while held-out reward fell {self.heldout_before:.4g} -> "
                f"{self.heldout_after:.4g} over steps {self.window_start}-{self.step} on {self.heldout_tasks} tasks "
                f"(p = {self.heldout_p:.3g}, alpha {self.alpha:g}); run {'stopped' if self.action == 'stop' else 'continued'}")


__all__ = [
    "LOSS_FNS",
    "RL_LOSSES",
    "AdamParams",
    "Datum",
    "ForwardBackwardResult",
    "LoraSpec",
    "LoraTarget",
    "LossConfig",
    "LossFn",
    "OptimStepResult",
    "RewardHackAlarm",
]

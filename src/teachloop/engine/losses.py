"""The training losses, on flat per-token tensors.

Pure torch functions shared by every engine (the torch engine and the fake):
given the current policy's logprobs of the selected target tokens and the
per-token inputs of those tokens, return a scalar loss (a *sum*, see
``core/training.py`` for the definitions) and ``"name:reduction"`` metrics.
This module knows nothing about models, tokens or adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from teachloop.core.errors import InvalidInput
from teachloop.core.training import LossConfig, LossFn


@dataclass
class TokenInputs:
    """Per-token inputs of the selected target tokens (all ``[N]``, aligned with the logprobs).

    Attributes:
        weights: loss weight / mask of each token.
        datum: index of the datum each token belongs to.
        advantages: RL advantages (RL losses).
        sampler_logprobs: sampler logprobs ``lp_old`` (RL losses).
        reference_logprobs: reference-policy logprobs (DPO, KL penalty).
        n_datums: number of datums in the batch.
    """

    weights: torch.Tensor
    datum: torch.Tensor
    n_datums: int
    advantages: torch.Tensor | None = None
    sampler_logprobs: torch.Tensor | None = None
    reference_logprobs: torch.Tensor | None = None


def compute_loss(
    loss: LossFn, config: LossConfig, logprobs: torch.Tensor, inputs: TokenInputs
) -> tuple[torch.Tensor, dict[str, float]]:
    """The summed loss of ``loss`` and its metrics."""
    w = inputs.weights
    metrics: dict[str, float] = {"tokens:sum": float((w != 0).sum())}
    if loss == "cross_entropy":
        total = -(w * logprobs).sum()
        metrics["nll:mean"] = float(-(w * logprobs.detach()).sum() / w.sum().clamp_min(1e-12))
    elif loss in ("importance_sampling", "ppo", "cispo"):
        adv, old = _need(inputs.advantages, "advantages", loss), _need(inputs.sampler_logprobs, "sampler_logprobs", loss)
        log_ratio = logprobs - old
        ratio = torch.exp(log_ratio)
        if loss == "importance_sampling":
            per_token = -ratio * adv
            clipped = torch.zeros_like(ratio, dtype=torch.bool)
        elif loss == "ppo":
            lo, hi = config.clip_bounds("ppo")
            unclipped = ratio * adv
            clipped_obj = torch.clamp(ratio, lo, hi) * adv
            per_token = -torch.minimum(unclipped, clipped_obj)
            clipped = clipped_obj.detach() < unclipped.detach()
        else:  # cispo
            lo, hi = config.clip_bounds("cispo")
            coef = torch.clamp(ratio, lo, hi).detach()
            per_token = -coef * adv * logprobs
            clipped = (ratio.detach() < lo) | (ratio.detach() > hi)
        total = (w * per_token).sum()
        mask = w != 0
        denom = max(float(mask.sum()), 1.0)
        metrics["ratio:mean"] = float((ratio.detach() * mask).sum() / denom)
        metrics["clip_frac:mean"] = float((clipped & mask).sum() / denom)
        # k1 estimate of KL(sampler || current) on the sampled tokens
        metrics["kl_sampler:mean"] = float(((old - logprobs.detach()) * mask).sum() / denom)
        if config.kl_coef > 0:
            ref = _need(inputs.reference_logprobs, "reference_logprobs", loss)
            d = ref - logprobs
            k3 = torch.exp(d) - d - 1
            total = total + config.kl_coef * (w * k3).sum()
            metrics["kl:mean"] = float((k3.detach() * mask).sum() / denom)
    elif loss == "dpo":
        ref = _need(inputs.reference_logprobs, "reference_logprobs", loss)
        if inputs.n_datums % 2:
            raise InvalidInput("dpo needs an even number of datums: (chosen, rejected) pairs", param="batch")
        seq = torch.zeros(inputs.n_datums, dtype=logprobs.dtype, device=logprobs.device)
        seq = seq.index_add(0, inputs.datum, w * logprobs)
        seq_ref = torch.zeros_like(seq).index_add(0, inputs.datum, w * ref)
        margin = (seq[0::2] - seq_ref[0::2]) - (seq[1::2] - seq_ref[1::2])
        per_pair = -torch.nn.functional.logsigmoid(config.dpo_beta * margin)
        total = per_pair.sum()
        metrics["reward_margin:mean"] = float(config.dpo_beta * margin.detach().mean())
        metrics["accuracy:mean"] = float((margin.detach() > 0).float().mean())
        metrics["pairs:sum"] = float(margin.shape[0])
    else:
        raise InvalidInput(
            f"unknown loss {loss!r}; choose one of cross_entropy, importance_sampling, ppo, cispo, dpo",
            param="loss",
        )
    metrics["loss:sum"] = float(total.detach())
    return total, metrics


def _need(value: torch.Tensor | None, name: str, loss: str) -> torch.Tensor:
    if value is None:
        raise InvalidInput(f"loss {loss!r} needs Datum.{name} on every datum", param=name)
    return value


__all__ = ["TokenInputs", "compute_loss"]

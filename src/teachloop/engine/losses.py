"""The training losses, on flat per-token tensors.

Pure torch functions shared by every engine (the torch engine and the fake):
given the current policy's logprobs of the selected target tokens and the
per-token inputs of those tokens, return a scalar loss (a *sum*, see
``core/training.py`` for the definitions) and ``"name:reduction"`` metrics.
Every loss is a sum over datums (DPO: over (chosen, rejected) pairs), so a
batch split into micro-batches has the loss and gradient of the sum of theirs;
``merge_metrics`` combines the micro-batches' metrics into the batch's.
This module knows nothing about models, tokens or adapters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


#: ``:mean`` metrics averaged over DPO pairs (``pairs:sum``) rather than over tokens
_PAIR_MEANS = frozenset({"reward_margin:mean", "accuracy:mean"})


def merge_metrics(parts: Sequence[Mapping[str, float]], weight_sums: Sequence[float]) -> dict[str, float]:
    """The metrics of a batch from those ``compute_loss`` gave for each of its micro-batches.

    ``:sum`` metrics add up. A ``:mean`` is re-weighted by what it averaged over
    in each part: ``nll:mean`` by the part's sum of weights (``weight_sums``),
    DPO's per-pair means by ``pairs:sum``, every other mean (ratio, clip
    fraction, KL, entropy) by the part's nonzero-weight tokens (``tokens:sum``);
    a part that averaged over nothing does not count. Any other key keeps the
    last part's value. Equal to computing the metrics on the whole batch, up to
    float rounding.
    """
    if len(parts) != len(weight_sums):
        raise ValueError("one weight sum per part")
    out: dict[str, float] = {}
    keys = list(dict.fromkeys(k for part in parts for k in part))
    for key in keys:
        present = [(part, w) for part, w in zip(parts, weight_sums, strict=True) if key in part]
        if key.endswith(":sum"):
            out[key] = sum(part[key] for part, _ in present)
            continue
        if not key.endswith(":mean"):
            out[key] = present[-1][0][key]
            continue
        if key == "nll:mean":
            weights = [w for _, w in present]
        elif key in _PAIR_MEANS:
            weights = [part.get("pairs:sum", 0.0) for part, _ in present]
        else:
            weights = [part.get("tokens:sum", 0.0) for part, _ in present]
        total = sum(weights)
        if total > 0:
            out[key] = sum(part[key] * w for (part, _), w in zip(present, weights, strict=True)) / total
        else:
            out[key] = sum(part[key] for part, _ in present) / len(present)
    return out


__all__ = ["TokenInputs", "compute_loss", "merge_metrics"]

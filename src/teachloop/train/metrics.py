"""The per-step metric names of a policy-gradient step, from the engine's ``"name:reduction"`` figures.

One place decides what an RL step reports, so ``docs/training.md`` (section
Metrics) and the code cannot drift apart. The two KL figures are different
quantities and are never merged into one column:

* ``kl_sampler``: k1 estimate of KL(sampler || current policy) on the sampled
  tokens -- how far the policy being trained is from the one that sampled the
  batch (0 on-policy before the update; non-zero with ``overlap``).
* ``kl_ref``: k3 estimate of KL(current || reference), the reference being the
  base model with the adapter disabled -- the quantity ``rl.kl_coef``
  penalises. Reported only when ``kl_coef > 0`` (the engine computes the
  reference logprobs only then).

Pure: knows the result types of ``core.training``, nothing else.
"""

from __future__ import annotations

from teachloop.core.training import ForwardBackwardResult, OptimStepResult

#: Every key ``policy_metrics`` can return, with its meaning (``docs/training.md`` lists the same names).
POLICY_METRICS: dict[str, str] = {
    "loss": "the policy loss of the batch (plus kl_coef * KL when kl_coef > 0)",
    "grad_norm": "global gradient norm before clipping",
    "lr": "learning rate of this step",
    "kl_sampler": "k1 KL(sampler || current policy) on the sampled tokens",
    "kl_ref": "k3 KL(current policy || reference = base without adapter); only when kl_coef > 0",
    "entropy": "mean per-token entropy of the current policy on the sampled tokens",
    "clip_frac": "share of tokens whose importance ratio was clipped",
    "ratio_mean": "mean importance ratio current / sampler",
    "trained": "1 when the step updated the adapter, 0 when every group was dropped",
}


def policy_metrics(fb: ForwardBackwardResult, opt: OptimStepResult, *, kl_coef: float) -> dict[str, float]:
    """The metrics of one policy-gradient step (keys: see ``POLICY_METRICS``)."""
    m = fb.metrics
    out = {
        "loss": fb.loss,
        "grad_norm": opt.grad_norm,
        "lr": opt.metrics.get("lr", 0.0),
        "kl_sampler": m.get("kl_sampler:mean", 0.0),
        "entropy": m.get("entropy:mean", 0.0),
        "clip_frac": m.get("clip_frac:mean", 0.0),
        "ratio_mean": m.get("ratio:mean", 1.0),
        "trained": 1.0,
    }
    if kl_coef > 0:
        out["kl_ref"] = m.get("kl:mean", 0.0)
    return out


__all__ = ["POLICY_METRICS", "policy_metrics"]

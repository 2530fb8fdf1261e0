"""SFT and DPO: one optimizer step over a deterministic batch of rendered rows.

``SFT`` trains cross-entropy on assistant tokens only, averaged over the
batch's assistant tokens. ``DPO`` trains on (chosen, rejected) pairs against
the reference policy -- the base model with the adapter disabled, computed by
the engine, never a copy of the model. Both evaluate on held-out rows: mean
per-token NLL (SFT), or DPO loss and preference accuracy (DPO).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from teachloop.core.training import LossConfig
from teachloop.engine.base import Engine
from teachloop.train.config import DataSection, OptimSection
from teachloop.train.data import Example, batch_for_step, dpo_datums, sft_datums


class SFT:
    """Supervised fine-tuning on chat examples."""

    def __init__(self, *, data: DataSection, optim: OptimSection, total_steps: int, seed: int,
                 train: Sequence[Example], holdout: Sequence[Example], engine: Engine, adapter: str) -> None:
        self.data, self.optim, self.total, self.seed = data, optim, total_steps, seed
        self.train, self.holdout, self.engine, self.adapter = list(train), list(holdout), engine, adapter

    async def step(self, step: int) -> dict[str, Any]:
        """One optimizer step."""
        t0 = time.perf_counter()
        batch = batch_for_step(self.train, self.data.batch_size, step, self.seed)
        datums = sft_datums(batch)
        fb = await asyncio.to_thread(self.engine.forward_backward, datums, "cross_entropy", None,
                                     adapter=self.adapter, logprobs_for="weighted")
        opt = await asyncio.to_thread(self.engine.optim_step, self.adapter, self.optim.at(step, self.total))
        dt = time.perf_counter() - t0
        tokens = sum(len(e.tokens) for e in batch)
        return {"loss": fb.loss, "grad_norm": opt.grad_norm, "lr": opt.metrics.get("lr", 0.0),
                "train_tokens": float(tokens), "tokens_per_s": tokens / dt, "step_seconds": dt}

    async def evaluate(self) -> dict[str, Any]:
        """Held-out mean NLL per assistant token."""
        if not self.holdout:
            return {}
        total_loss, total_tokens = 0.0, 0
        for i in range(0, len(self.holdout), self.data.batch_size):
            chunk = self.holdout[i : i + self.data.batch_size]
            n = sum(sum(e.mask[1:]) for e in chunk)
            fb = await asyncio.to_thread(self.engine.forward, sft_datums(chunk), "cross_entropy", None,
                                         adapter=self.adapter, logprobs_for="weighted")
            total_loss += fb.loss * n
            total_tokens += n
        return {"heldout_nll": total_loss / max(total_tokens, 1), "heldout_rows": float(len(self.holdout))}


class DPO:
    """Direct preference optimisation on (chosen, rejected) pairs."""

    def __init__(self, *, data: DataSection, optim: OptimSection, total_steps: int, seed: int,
                 train: Sequence[tuple[Example, Example]], holdout: Sequence[tuple[Example, Example]],
                 engine: Engine, adapter: str) -> None:
        self.data, self.optim, self.total, self.seed = data, optim, total_steps, seed
        self.train, self.holdout, self.engine, self.adapter = list(train), list(holdout), engine, adapter
        self.loss_config = LossConfig(dpo_beta=data.dpo_beta)

    async def step(self, step: int) -> dict[str, Any]:
        """One optimizer step over ``batch_size`` pairs."""
        t0 = time.perf_counter()
        pairs = batch_for_step(self.train, self.data.batch_size, step, self.seed)
        fb = await asyncio.to_thread(self.engine.forward_backward, dpo_datums(pairs), "dpo", self.loss_config,
                                     adapter=self.adapter, logprobs_for="weighted")
        opt = await asyncio.to_thread(self.engine.optim_step, self.adapter, self.optim.at(step, self.total))
        dt = time.perf_counter() - t0
        tokens = sum(len(c.tokens) + len(r.tokens) for c, r in pairs)
        return {"loss": fb.loss / len(pairs), "accuracy": fb.metrics.get("accuracy:mean", 0.0),
                "reward_margin": fb.metrics.get("reward_margin:mean", 0.0), "grad_norm": opt.grad_norm,
                "lr": opt.metrics.get("lr", 0.0), "tokens_per_s": tokens / dt, "step_seconds": dt}

    async def evaluate(self) -> dict[str, Any]:
        """Held-out DPO loss per pair and preference accuracy."""
        if not self.holdout:
            return {}
        loss = acc = 0.0
        for i in range(0, len(self.holdout), self.data.batch_size):
            chunk = self.holdout[i : i + self.data.batch_size]
            fb = await asyncio.to_thread(self.engine.forward, dpo_datums(chunk), "dpo", self.loss_config,
                                         adapter=self.adapter, logprobs_for="weighted")
            loss += fb.loss
            acc += fb.metrics.get("accuracy:mean", 0.0) * len(chunk)
        n = len(self.holdout)
        return {"heldout_dpo_loss": loss / n, "heldout_accuracy": acc / n, "heldout_pairs": float(n)}


__all__ = ["DPO", "SFT"]

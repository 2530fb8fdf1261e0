"""Leaving zero-advantage sequences out of forward_backward changes nothing about the update."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from teachloop.core.chat import Message
from teachloop.core.rl import ModelTurn, Task, Trajectory, TrajectoryGroup
from teachloop.core.training import AdamParams, LoraSpec
from teachloop.train.config import RLSection
from teachloop.train.grpo import build_batch


def _group(engine: Any, task_id: str, rewards: list[float], seed: int) -> TrajectoryGroup:
    """A group of real samples of the tiny engine (so sampler logprobs are its own), with given rewards."""
    prompt = list(engine.tokenizer.encode(f"<|im_start|>user\nsay {task_id}<|im_end|>\n<|im_start|>assistant\n"))
    from teachloop.core.sampling import SamplingParams

    samples = engine.sample([prompt], len(rewards), SamplingParams(max_tokens=6, seed=seed, stop=[]), adapter="a")[0]
    task = Task(id=task_id, prompt=(Message(role="user", content=f"say {task_id}"),))
    trajs = tuple(
        Trajectory(task_id=task_id, task_hash=task_id, messages=task.prompt, reward=r,
                   turns=(ModelTurn(prompt_tokens=tuple(prompt), tokens=tuple(s.tokens), logprobs=tuple(s.logprobs),
                                    stop_reason=s.stop_reason),))
        for s, r in zip(samples, rewards, strict=True)
    )
    return TrajectoryGroup(task=task, trajectories=trajs)


def _weights(engine: Any, name: str) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine._adapters[name].params]


def _grads(engine: Any, name: str) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in engine._adapters[name].params]


def _train(
    engine: Any, name: str, groups: list[TrajectoryGroup], rl: RLSection, skip: bool
) -> tuple[dict[str, float], list[torch.Tensor]]:
    """One step; returns the batch stats and the gradient it accumulated (Adam would hide a scale error)."""
    batch = build_batch(groups, rl, skip_zero_gradient=skip)
    engine.forward_backward(batch.datums, rl.loss, rl.loss_config(), adapter=name, logprobs_for="weighted")
    grads = _grads(engine, name)
    engine.optim_step(name, AdamParams(learning_rate=1e-2, weight_decay=0.01))
    return batch.stats, grads


@pytest.mark.parametrize("loss", ["ppo", "importance_sampling", "cispo"])
def test_skipping_zero_advantage_sequences_gives_the_same_update(engine: Any, loss: str) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=3))
    groups = [_group(engine, "x", [1.0, 0.0, 0.0, 1.0], 1), _group(engine, "y", [0.0] * 4, 2),
              _group(engine, "z", [1.0] * 4, 3)]
    rl = RLSection(env="arithmetic", loss=loss, drop_zero_variance=False)  # type: ignore[arg-type]
    engine.copy_adapter("a", "full")
    engine.copy_adapter("a", "skip")
    full, g_full = _train(engine, "full", groups, rl, skip=False)
    skipped, g_skip = _train(engine, "skip", groups, rl, skip=True)
    assert full["skipped_zero_gradient"] == 0 and skipped["skipped_zero_gradient"] == 8
    assert any(g.abs().sum() > 0 for g in g_full)
    for g, h in zip(g_full, g_skip, strict=True):
        assert torch.allclose(g, h, atol=1e-7, rtol=1e-5)
    for p, q in zip(_weights(engine, "full"), _weights(engine, "skip"), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(p, q) for p, q in zip(_weights(engine, "a"), _weights(engine, "full"), strict=True))


def test_an_all_zero_step_still_moves_the_optimizer_and_a_kl_term_is_never_skipped(engine: Any) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=3))
    rl = RLSection(env="arithmetic", drop_zero_variance=False)
    engine.copy_adapter("a", "full")
    engine.copy_adapter("a", "skip")
    first = [_group(engine, "x", [1.0, 0.0, 0.0, 1.0], 1)]
    flat = [_group(engine, "y", [0.0] * 4, 2), _group(engine, "z", [1.0] * 4, 3)]
    for name, skip in (("full", False), ("skip", True)):
        _train(engine, name, first, rl, skip)  # momentum from a real step
        stats, grads = _train(engine, name, flat, rl, skip)  # then a step whose gradient is exactly zero
        assert all(float(g.abs().max()) == 0.0 for g in grads)
    assert stats["skipped_zero_gradient"] == 7  # one sequence kept so the optimizer step happens
    for p, q in zip(_weights(engine, "full"), _weights(engine, "skip"), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5)
    with_kl = RLSection(env="arithmetic", drop_zero_variance=False, kl_coef=0.1)
    assert build_batch(flat, with_kl).stats["skipped_zero_gradient"] == 0

"""Multi-turn GRPO batches: every assistant turn is trained on exactly its sampled tokens and logprobs.

Real multi-turn rollouts of the tiny engine (an environment that answers every
turn until ``max_turns``), turned into training data by ``build_batch``:
observation tokens get mask 0, each turn's sampled tokens mask 1, the sampler
logprobs line up with the tokens they were sampled for (a forward pass under the
same adapter reproduces them), every turn carries the episode's advantage, and
merging an episode into one sequence gives the gradient of one sequence per turn.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
import torch

from teachloop.core.rl import ModelTurn, Task, Trajectory, TrajectoryGroup
from teachloop.core.sampling import SamplingParams
from teachloop.core.training import LoraSpec
from teachloop.engine.completer import EngineCompleter
from teachloop.envs import Environment, FunctionGrader, user
from teachloop.envs.rollout import rollout
from teachloop.train.config import RLSection
from teachloop.train.grpo import build_batch, episode_sequences


class _Chatty(Environment):
    """Three model turns, the environment answering 'go on' as the user; reward = turn count seen (varies)."""

    name = "chatty"
    max_turns = 3
    sampling: ClassVar[SamplingParams] = SamplingParams(max_tokens=5, temperature=1.0)  # type: ignore[misc]

    def __init__(self) -> None:
        self.grader = FunctionGrader(lambda completion, messages, info: float(len(completion) % 3), name="len")

    def tasks(self, seed: int = 0) -> Any:
        for i in range(100):
            yield Task(id=f"c{seed}-{i}", prompt=(user(f"count {i}"),), answer="")

    async def env_response(self, task: Task, messages: list[Any], state: dict[str, Any]) -> list[Any] | None:
        return [user("go on")]


def _groups(engine: Any, renderer: Any) -> list[TrajectoryGroup]:
    env = _Chatty()
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=7)
    return asyncio.run(rollout(env, env.take(2), EngineCompleter(engine, renderer, adapter="a"), group_size=4,
                               params=params))


def _turn(prompt: list[int], tokens: list[int]) -> ModelTurn:
    return ModelTurn(prompt_tokens=tuple(prompt), tokens=tuple(tokens),
                     logprobs=tuple(-0.1 * (i + 1) for i in range(len(tokens))), stop_reason="stop")


def test_turns_whose_context_extends_the_last_become_one_sequence_with_per_turn_masks() -> None:
    t1 = _turn([1, 2, 3], [10, 11])
    t2 = _turn([1, 2, 3, 10, 11, 4, 5], [12])  # observation tokens 4, 5 between the turns
    [seq] = episode_sequences([t1, t2])
    assert seq.tokens == [1, 2, 3, 10, 11, 4, 5, 12]
    assert seq.mask == [0, 0, 0, 1, 1, 0, 0, 1]
    assert seq.logprobs == [0.0, 0.0, 0.0, -0.1, -0.2, 0.0, 0.0, -0.1]
    assert seq.turns == 2


def test_a_re_rendered_context_that_differs_starts_a_new_sequence_never_mispairing_logprobs() -> None:
    t1 = _turn([1, 2, 3], [10, 11])
    t2 = _turn([1, 2, 3, 99, 4, 5], [12])  # the reply re-tokenised as 99, not the sampled 10, 11
    a, b = episode_sequences([t1, t2])
    assert (a.tokens, a.mask) == ([1, 2, 3, 10, 11], [0, 0, 0, 1, 1])
    assert (b.tokens, b.mask, b.logprobs) == ([1, 2, 3, 99, 4, 5, 12], [0] * 6 + [1], [0.0] * 6 + [-0.1])
    assert len(episode_sequences([t1, _turn([1, 2, 3, 10, 11, 4], [12])], merge=False)) == 2
    assert episode_sequences([_turn([1], [])]) == []


def test_rollout_batches_train_every_sampled_turn_with_its_own_logprobs(engine: Any, renderer: Any) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    groups = _groups(engine, renderer)
    rl = RLSection(env="chatty", drop_zero_variance=False)
    batch = build_batch(groups, rl, skip_zero_gradient=False)
    trajs = [t for g in groups for t in g.trajectories]
    assert all(len(t.turns) == 3 for t in trajs)
    assert batch.stats["train_turns"] == 3 * len(trajs)
    assert batch.stats["train_sequences"] + batch.stats["merged_turns"] == 3 * len(trajs)
    assert batch.stats["merged_turns"] > 0  # some replies re-render token for token (random ones often do not)
    advs = [a for g in groups for a in _group_advantages(g)]
    datums = iter(batch.datums)
    for traj, adv in zip(trajs, advs, strict=True):
        trained: list[int] = []
        old: list[float] = []
        for _ in episode_sequences(traj.turns):
            datum = next(datums)
            weights = datum.weights or []
            trained += [tok for tok, w in zip(datum.target_tokens, weights, strict=True) if w > 0]
            old += [lp for lp, w in zip(datum.sampler_logprobs or [], weights, strict=True) if w > 0]
            assert all(a == pytest.approx(adv) for a, w in zip(datum.advantages or [], weights, strict=True) if w > 0)
            assert all(a == 0.0 for a, w in zip(datum.advantages or [], weights, strict=True) if w == 0)
        assert trained == [tok for turn in traj.turns for tok in turn.tokens]  # every assistant turn, nothing else
        assert old == [lp for turn in traj.turns for lp in turn.logprobs]
    # the sampler's logprobs are the policy's logprobs of the trained tokens in the merged context: ratio 1
    fwd = engine.forward(batch.datums, "importance_sampling", rl.loss_config(), adapter="a", logprobs_for="all")
    for datum, lps in zip(batch.datums, fwd.logprobs, strict=True):
        for lp, old_lp, w in zip(lps, datum.sampler_logprobs or [], datum.weights or [], strict=True):
            if w > 0:
                assert lp == pytest.approx(old_lp, abs=2e-3)


def _group_advantages(group: TrajectoryGroup) -> list[float]:
    from teachloop.train.advantages import group_advantages

    return group_advantages([t.reward for t in group.trajectories])


def test_merging_turns_changes_the_compute_not_the_gradient(engine: Any, renderer: Any) -> None:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    groups = _groups(engine, renderer)
    grads = []
    for merge in (True, False):
        engine.copy_adapter("a", f"m{merge}")
        rl = RLSection(env="chatty", drop_zero_variance=False, merge_turns=merge)
        batch = build_batch(groups, rl, skip_zero_gradient=False)
        engine.forward_backward(batch.datums, rl.loss, rl.loss_config(), adapter=f"m{merge}", logprobs_for="weighted")
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone()
                      for p in engine._adapters[f"m{merge}"].params])
        assert (len(batch.datums) < 24) if merge else (len(batch.datums) == 24)
    assert any(g.abs().sum() > 0 for g in grads[0])
    for g, h in zip(*grads, strict=True):
        assert torch.allclose(g, h, atol=1e-6, rtol=1e-4)


def test_a_trajectory_without_turns_trains_nothing() -> None:
    task = Task(id="t", prompt=(user("x"),), answer="")
    group = TrajectoryGroup(task=task, trajectories=(
        Trajectory(task_id="t", task_hash="t", messages=task.prompt, reward=1.0),
        Trajectory(task_id="t", task_hash="t", messages=task.prompt, reward=0.0,
                   turns=(_turn([1, 2], [3, 4]),)),
    ))
    batch = build_batch([group], RLSection(env="x"))
    assert len(batch.datums) == 1 and batch.datums[0].target_tokens == [2, 3, 4]


def test_prefix_reuse_across_turns_samples_what_whole_prefills_sample(engine: Any, renderer: Any) -> None:
    """``prefix_cache``: later turns reuse their earlier prompt's keys/values; same tokens, logprobs to 1e-4."""
    engine.create_adapter("p", LoraSpec(rank=4, seed=3))
    env = _Chatty()
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=11)

    def play(reuse: bool) -> list[TrajectoryGroup]:
        completer = EngineCompleter(engine, renderer, adapter="p", prefix_cache=reuse)
        return asyncio.run(rollout(env, env.take(2), completer, group_size=3, params=params))

    engine.prefix.clear()
    whole = play(False)
    assert engine.prefix.stats().queries == 0, "without prefix_cache nothing is looked up"
    reused = play(True)
    stats = engine.prefix.stats()
    assert stats.hits > 0 and stats.hit_rate > 0.3, f"later turns did not reuse their prefixes: {stats}"
    for gw, gr in zip(whole, reused, strict=True):
        for tw, tr in zip(gw.trajectories, gr.trajectories, strict=True):
            assert [t.prompt_tokens for t in tw.turns] == [t.prompt_tokens for t in tr.turns]
            assert [t.tokens for t in tw.turns] == [t.tokens for t in tr.turns]
            for a, b in zip(tw.turns, tr.turns, strict=True):
                assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)), default=0.0) < 1e-4
    engine.delete_adapter("p")

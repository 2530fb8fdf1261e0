"""GRPO-family RL: group rollouts through the engine, group advantages, a policy-gradient step.

One step: take ``prompts_per_step`` tasks from the seeded task stream (the
tasks of step ``t`` depend only on ``t``), sample ``group_size`` episodes of
each through ``EngineCompleter`` (one batched engine call, prompt prefilled
once per group), compute group advantages, turn every episode into training sequences
carrying the sampler's logprobs (no re-tokenisation, no second forward pass
for the old policy), and call ``forward_backward`` with PPO-clip, importance
sampling or CISPO, then ``optim_step``. With ``rl.prefix_cache`` (default) the
rollouts reuse the engine's cached prompt prefixes, so a multi-turn episode's
turn prefills only the tokens added since its previous turn.

Multi-turn episodes (``episode_sequences``): the tokens trained are exactly the
sampled ids. When a turn's context extends the previous sequence token for token
(the earlier prompt, the sampled reply, then the tool/environment/user tokens
of the next prompt), the turn is appended to it, so an episode is one sequence:
every assistant turn's sampled tokens have mask 1 and their sampler logprobs,
every observation token (template, tool, user) mask 0. Where re-rendering
changed the context (a chat template that rewrites earlier turns, a reply that
re-tokenises differently) the turn starts a new sequence with its own context,
so a logprob is never paired with a token the sampler did not produce. Every
turn of an episode carries the episode's advantage (its reward reaches every
turn). ``rl.merge_turns = false`` trains one sequence per turn instead.

Dynamic sampling (DAPO, ``rl.extra_draws = K > 0``): a group whose rewards are
all equal teaches nothing, and once the policy answers most tasks right (or
none) most groups are such. While fewer than ``prompts_per_step`` of the step's
groups vary, the step rolls out another batch of ``prompts_per_step`` tasks, at
most ``K`` more, and trains on ``prompts_per_step`` groups, those that vary first
(``advantages.pick_groups``). The stream is laid out in ``K + 1`` slots of
``prompts_per_step`` tasks per step (draw ``d`` of step ``t`` takes slot
``t (K + 1) + d``; a slot not needed is skipped), so a step's tasks still depend
only on ``t`` and a resumed step draws the same; a finite stream that runs out
ends the extra draws, not the step. ``reward_mean`` and ``reward_std`` describe
every group sampled; ``draws`` and ``groups_sampled`` count them.

With ``overlap`` the rollouts of step ``t + 1`` are sampled from a snapshot of
the adapter taken before step ``t`` updates it, while step ``t`` trains; they
are one step off-policy and the loss's importance ratio against the stored
sampler logprobs corrects for it.

Exact work skipping: a sequence whose advantage is 0 on every token has a
gradient of exactly 0 under PPO-clip, importance sampling and CISPO when there
is no KL term, so ``build_batch`` leaves it out of ``forward_backward`` (with
``skip_zero_gradient``, the default) while its tokens still count in the
loss normalisation: the update is the one computing it would give. (With
``drop_zero_variance = false`` that is every sequence of an all-equal group.)
If every sequence would be left out, one is kept so the optimizer step, and
with it AdamW's momentum and weight decay, happens exactly as before. The
step's metrics (``entropy``, ``clip_frac``, ``ratio_mean``) then describe the
sequences that were computed; ``skipped_zero_gradient`` counts the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from teachloop.catalog.envref import ResolvedEnv
from teachloop.core.rl import ModelTurn, Task, TrajectoryGroup
from teachloop.core.sampling import SamplingParams
from teachloop.core.training import Datum
from teachloop.engine.base import Engine
from teachloop.engine.completer import EngineCompleter
from teachloop.envs.rollout import rollout
from teachloop.render import Renderer
from teachloop.train.advantages import assign, has_variance, pick_groups
from teachloop.train.config import OptimSection, RLSection
from teachloop.train.metrics import policy_metrics


@dataclass
class Batch:
    """The training data of one RL step and the figures describing it."""

    datums: list[Datum]
    stats: dict[str, float]


@dataclass
class TrainSequence:
    """One training sequence of an episode: tokens, loss mask (1 = sampled) and sampler logprobs, aligned."""

    tokens: list[int]
    mask: list[int]
    logprobs: list[float]
    turns: int = 1


def episode_sequences(turns: Iterable[ModelTurn], merge: bool = True) -> list[TrainSequence]:
    """The training sequences of one episode's model turns (see the module docstring)."""
    out: list[TrainSequence] = []
    for turn in turns:
        if not turn.tokens:
            continue
        p, c, lp = list(turn.prompt_tokens), list(turn.tokens), list(turn.logprobs)
        last = out[-1] if out and merge else None
        if last is not None and len(p) >= len(last.tokens) and p[:len(last.tokens)] == last.tokens:
            obs = p[len(last.tokens):]
            last.tokens += obs + c
            last.mask += [0] * len(obs) + [1] * len(c)
            last.logprobs += [0.0] * len(obs) + lp
            last.turns += 1
        else:
            out.append(TrainSequence(p + c, [0] * len(p) + [1] * len(c), [0.0] * len(p) + lp))
    return out


def build_batch(groups: list[TrajectoryGroup], rl: RLSection, skip_zero_gradient: bool = True) -> Batch:
    """Advantages per group, then the training sequences of every kept trajectory (see the module docstring)."""
    rewards = [[t.reward for t in g.trajectories] for g in groups]
    advs, dropped = assign(rewards, rl.advantage, rl.drop_zero_variance)
    seqs: list[tuple[list[int], list[int], list[float], list[float]]] = []
    comp_tokens = truncated = turns_total = merged = 0
    for g, group_adv in zip(groups, advs, strict=True):
        if group_adv is None:
            continue
        for traj, a in zip(g.trajectories, group_adv, strict=True):
            for seq in episode_sequences(traj.turns, rl.merge_turns):
                seqs.append((seq.tokens, seq.mask, [float(a) * m for m in seq.mask], seq.logprobs))
                comp_tokens += sum(seq.mask)
                merged += seq.turns - 1
            for turn in traj.turns:
                if turn.tokens:
                    truncated += turn.stop_reason == "length"
                    turns_total += 1
    datums: list[Datum] = []
    zero: list[Datum] = []
    n_seq = len(seqs)
    skip = skip_zero_gradient and rl.kl_coef == 0
    for tokens, mask, adv, old in seqs:
        n_c = sum(mask)
        w = 1.0 / comp_tokens if rl.loss_agg == "token_mean" else 1.0 / (n_c * n_seq)
        datum = Datum.from_sequence(tokens, [m * w for m in mask], advantages=adv, sampler_logprobs=old)
        (zero if skip and not any(adv) else datums).append(datum)
    if zero and not datums:  # keep one so the optimizer step (momentum, weight decay) still happens
        datums.append(min(zero, key=lambda d: d.num_tokens))
        zero.remove(datums[0])
    flat = [r for rs in rewards for r in rs]
    failures = sum(t.failure is not None for g in groups for t in g.trajectories)
    all_lens = [len(turn.tokens) for g in groups for t in g.trajectories for turn in t.turns]
    stats = {
        "reward_mean": statistics.fmean(flat) if flat else 0.0,
        "reward_std": statistics.pstdev(flat) if len(flat) > 1 else 0.0,
        "groups_dropped": float(dropped),
        "groups": float(len(groups)),
        "failures": float(failures),
        "completion_len_mean": statistics.fmean(all_lens) if all_lens else 0.0,
        "truncated_frac": truncated / turns_total if turns_total else 0.0,
        "train_turns": float(turns_total),
        "train_sequences": float(n_seq),
        "merged_turns": float(merged),
        "skipped_zero_gradient": float(len(zero)),
    }
    return Batch(datums, stats)


class GRPO:
    """The RL algorithm of a run; ``step`` performs one optimizer step."""

    def __init__(self, *, rl: RLSection, optim: OptimSection, total_steps: int, seed: int, env: ResolvedEnv,
                 engine: Engine, renderer: Renderer, adapter: str, skip_zero_gradient: bool = True) -> None:
        self.rl, self.optim, self.total, self.seed = rl, optim, total_steps, seed
        self.skip_zero_gradient = skip_zero_gradient
        self.env, self.engine, self.renderer, self.adapter = env, engine, renderer, adapter
        self.sampler = f"{adapter}:sampler" if rl.overlap else adapter
        self.completer = EngineCompleter(engine, renderer, adapter=self.sampler, prefix_cache=rl.prefix_cache)
        self._pending: asyncio.Task[tuple[list[TrajectoryGroup], float]] | None = None
        self._pending_step = -1

    def tasks_for(self, step: int, draw: int = 0) -> list[Task]:
        """The tasks of draw ``draw`` of optimizer step ``step`` (a pure function of the task seed, the step and
        the draw; draw 0 is every step's, the others dynamic sampling's: see the module docstring)."""
        n, slots = self.rl.prompts_per_step, self.rl.extra_draws + 1
        first = (step * slots + draw) * n
        return list(itertools.islice(self.env.env.tasks(self.rl.task_seed), first, first + n))

    def params_for(self, step: int, draw: int = 0) -> SamplingParams:
        """Sampling parameters of a step's draw, seeded by (run seed, step, draw) so a resumed step resamples
        alike."""
        return SamplingParams(max_tokens=self.rl.max_tokens, temperature=self.rl.temperature, top_p=self.rl.top_p,
                              seed=(self.seed * 1_000_003 + step + draw * 1_000_000_007) % (2**31))

    async def _rollouts(self, step: int) -> tuple[list[TrajectoryGroup], float]:
        """Every group the step samples: its first draw, then dynamic sampling's extra draws while needed."""
        tasks = self.tasks_for(step)
        if not tasks:
            raise RuntimeError(f"environment {self.env.ref} ran out of tasks at step {step}")
        t0 = time.perf_counter()
        groups: list[TrajectoryGroup] = []
        for draw in range(self.rl.extra_draws + 1):
            if draw and (sum(has_variance(_rewards(g)) for g in groups) >= self.rl.prompts_per_step
                         or not (tasks := self.tasks_for(step, draw))):
                break
            groups += await rollout(self.env.env, tasks, self.completer, group_size=self.rl.group_size,
                                    params=self.params_for(step, draw), timeout_s=self.rl.episode_timeout_s,
                                    max_concurrent_groups=len(tasks))
        return groups, time.perf_counter() - t0

    async def step(self, step: int) -> dict[str, Any]:
        """Roll out, score and train one step; returns its metrics."""
        t0 = time.perf_counter()
        if self.rl.overlap:
            if self._pending is None or self._pending_step != step:
                self.engine.copy_adapter(self.adapter, self.sampler)
                self._pending = asyncio.ensure_future(self._rollouts(step))
            groups, rollout_s = await self._pending
            self._pending = None
            if step + 1 < self.total:  # sample step t+1 from the current (pre-update) weights while t trains
                self.engine.copy_adapter(self.adapter, self.sampler)
                self._pending = asyncio.ensure_future(self._rollouts(step + 1))
                self._pending_step = step + 1
        else:
            groups, rollout_s = await self._rollouts(step)
        sampled = groups
        if len(groups) > self.rl.prompts_per_step:  # dynamic sampling drew more than one batch
            groups = [groups[i] for i in pick_groups([_rewards(g) for g in groups], self.rl.prompts_per_step)]
        batch = build_batch(groups, self.rl, self.skip_zero_gradient)
        t1 = time.perf_counter()
        metrics: dict[str, Any] = dict(batch.stats)
        if self.rl.extra_draws:
            flat = [r for g in sampled for r in _rewards(g)]
            metrics.update({"reward_mean": statistics.fmean(flat), "reward_std": statistics.pstdev(flat),
                            "groups_sampled": float(len(sampled)),
                            "draws": float(-(-len(sampled) // self.rl.prompts_per_step))})
        if batch.datums:
            fb = await asyncio.to_thread(self.engine.forward_backward, batch.datums, self.rl.loss,
                                         self.rl.loss_config(), adapter=self.adapter, logprobs_for="weighted")
            opt = await asyncio.to_thread(self.engine.optim_step, self.adapter, self.optim.at(step, self.total))
            metrics.update(policy_metrics(fb, opt, kl_coef=self.rl.kl_coef))
        else:
            metrics["trained"] = 0.0  # every group had zero reward variance: nothing to learn from
        done = time.perf_counter()
        comp_tokens = sum(len(turn.tokens) for g in sampled for t in g.trajectories for turn in t.turns)
        metrics.update({
            "step_seconds": done - t0, "rollout_seconds": rollout_s, "train_seconds": done - t1,
            "completion_tokens": float(comp_tokens), "tokens_per_s": comp_tokens / max(done - t0, 1e-9),
        })
        return metrics

    async def close(self) -> None:
        """Cancel a prefetch still running (overlap) and drop the sampler snapshot."""
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending
            self._pending = None
        if self.rl.overlap and self.sampler != self.adapter:
            with contextlib.suppress(Exception):  # nothing left to clean up
                self.engine.delete_adapter(self.sampler)


def _rewards(group: TrajectoryGroup) -> list[float]:
    return [t.reward for t in group.trajectories]


__all__ = ["GRPO", "Batch", "TrainSequence", "build_batch", "episode_sequences"]

"""Environments on the real default model: an arithmetic group through the engine keeps every token record."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from teachloop.core.sampling import SamplingParams
from teachloop.envs import Arithmetic, GuessNumber, rollout, rollout_group

pytestmark = pytest.mark.model


def test_rollouts_through_the_engine_keep_tokens_and_logprobs(default_model_dir: Path) -> None:
    from teachloop.engine import EngineCompleter, TorchEngine
    from teachloop.render import Renderer

    engine = TorchEngine(default_model_dir, device="cpu")
    renderer = Renderer.from_pretrained(default_model_dir)
    completer = EngineCompleter(engine, renderer)
    env = Arithmetic(level=1)
    task = env.take(1, seed=0)[0]
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=0)
    group = asyncio.run(rollout_group(env, task, completer, size=3, params=params, timeout_s=120))
    assert len(group.trajectories) == 3
    for t in group.trajectories:
        assert t.failure is None, t.failure
        assert t.reward in (0.0, 1.0)
        [turn] = t.turns
        assert len(turn.tokens) == len(turn.logprobs) >= 1
        assert all(lp <= 0 and math.isfinite(lp) for lp in turn.logprobs)
        assert list(turn.prompt_tokens) == renderer.build_prompt(list(task.prompt), None)
    # a multi-turn env: every model turn of every episode keeps its own record
    game = GuessNumber(high=8)
    groups = asyncio.run(rollout(game, game.take(2), completer, params=SamplingParams(max_tokens=16, seed=1),
                                 timeout_s=120))
    for t in (g.trajectories[0] for g in groups):
        assert t.failure is None or t.failure.kind != "env", t.failure
        assert len(t.turns) == t.metadata["model_turns"]

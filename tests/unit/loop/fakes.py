"""Engines for loop tests: the fake bigram engine with scripted arithmetic replies, and one whose training fails.

``OracleEngine`` is ``engine.fake.FakeEngine`` (real adapters, losses, optimizer
and checkpoints) whose ``sample`` replies to "What is A op B?" prompts with a
script instead of bigram noise: through an adapter it answers right, without
one (the base model) it answers ``999``. So a candidate trained by the loop
really is better than the base, and the gate's paired test can say so.
``FailingEngine`` raises in ``optim_step``, like a training run that crashes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from teachloop.core.sampling import SampledSequence, SamplingParams
from teachloop.core.training import AdamParams, OptimStepResult
from teachloop.engine.fake import FakeEngine
from teachloop.render import Renderer

_PROBLEM = re.compile(r"What is (-?\d+) ([+-]) (\d+)\?")


class OracleEngine(FakeEngine):
    """Adapters answer arithmetic right; the base answers 999 (see the module docstring)."""

    def __init__(self, renderer: Renderer, *, wrong_adapters: Sequence[str] = ()) -> None:
        self.renderer = renderer
        self.eos = renderer.stop_token_ids()[0]
        self.wrong_adapters = set(wrong_adapters)
        super().__init__(vocab_size=len(renderer.tokenizer), eos_token_id=self.eos, seed=1)

    def reply(self, prompt: Sequence[int], adapter: str | None) -> str:
        found = _PROBLEM.findall(self.renderer.decode(list(prompt)))
        if not found or adapter is None or adapter in self.wrong_adapters:
            return "answer: 999"
        a, op, b = found[-1]
        return f"answer: {int(a) + int(b) if op == '+' else int(a) - int(b)}"

    def sample(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams, adapter: str | None = None,
               **kw: Any) -> list[list[SampledSequence]]:
        out = []
        for p in prompts:
            tokens = self.renderer.encode(self.reply(p, adapter))[: params.max_tokens - 1] + [self.eos]
            out.append([SampledSequence(list(tokens), [-0.5] * len(tokens), "stop") for _ in range(n)])
        return out


class FailingEngine(FakeEngine):
    """A fake engine whose optimizer step fails."""

    def optim_step(self, adapter: str, params: AdamParams) -> OptimStepResult:
        raise RuntimeError("simulated optimizer failure (out of memory)")


class GamingEngine(FakeEngine):
    """Adapters learn to game a grader that pays per digit: after ``k`` optimizer steps an adapter replies
    ``"seven"`` followed by ``k`` digits (sampled rollouts ``k`` or ``k + 1``, so a GRPO group has
    advantages; greedy replies exactly ``k``). The base model replies ``"seven"``. A grader paying per digit
    (``tests.unit.train.conftest:Padded``) sees training reward rise; the honest grade of the same task
    (``InWords``: the share of non-digit characters) falls -- a reward hack, deterministically."""

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self.eos = renderer.stop_token_ids()[0]
        self.steps: dict[str, int] = {}
        super().__init__(vocab_size=len(renderer.tokenizer), eos_token_id=self.eos, seed=1)

    def optim_step(self, adapter: str, params: AdamParams) -> OptimStepResult:
        self.steps[adapter] = self.steps.get(adapter, 0) + 1
        return super().optim_step(adapter, params)

    def sample(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams, adapter: str | None = None,
               **kw: Any) -> list[list[SampledSequence]]:
        k = self.steps.get(adapter, 0) if adapter is not None else 0
        greedy = not params.temperature
        out = []
        for _ in prompts:
            group = []
            for j in range(n):
                digits = k if greedy or adapter is None else k + j % 2
                text = "seven" + " 1" * digits
                tokens = self.renderer.encode(text)[: max(1, params.max_tokens - 1)] + [self.eos]
                group.append(SampledSequence(list(tokens), [-0.5] * len(tokens), "stop"))
            out.append(group)
        return out

"""The eval gate: the candidate adapter vs the deployed one, paired per example, at a stated confidence.

Both models answer the *same* examples, so each example gives one paired
difference ``candidate - baseline`` (higher is better):

* **reward suites** -- greedy replies to the snapshot's holdout prompts (rows
  that carry a reference answer, re-posed by the grader's environment) and
  to ``tasks`` held-out tasks of each configured environment, each reply
  scored by the environment's grader;
* **likelihood suite** (``metric = "likelihood"``) -- per holdout row, the
  mean log-probability of its reply tokens (SFT rows) or the log-probability
  margin of chosen over rejected (DPO pairs).

The decision pools the differences of the *deciding* suites (the reward
suites for ``metric = "reward"``, the likelihood suite otherwise) and runs a
one-sided paired test at ``confidence``:

* ``bootstrap`` (default): paired bootstrap of the mean difference
  (``bootstrap_samples`` resamples of the per-example differences, fixed
  seed); passes when the lower confidence bound exceeds ``min_improvement``.
  Its p-value is the share of resampled means at or below ``min_improvement``.
* ``sign``: exact one-sided sign test on the non-zero differences (McNemar's
  exact test when rewards are 0/1); passes when p <= 1 - confidence and the
  mean difference exceeds ``min_improvement``.

Every suite is also a guard: the candidate is refused if any suite is *shown*
worse -- its mean drops by more than ``max_regression`` **and** the same
one-sided test, run on that suite's differences the other way round, finds
the drop at ``confidence`` (``regression_test``). So one example lost on a
16-row holdout (a drop of 0.0625) does not veto a candidate the pooled test
finds better, while ten examples lost out of forty do. The verdict of every
suite is stored with its summary (``regression``). An equal candidate never
passes (its differences are all zero). The decision record names the test, the figures
of every suite and the reason.

**Group-sequential looks** (``looks``, default 4). The environments' tasks are
evaluated in ``looks`` equal chunks; after each chunk but the last, ``interim``
may stop the gate early: for *efficacy* when ``decide`` at
``interim_confidence`` (0.999) passes on what is evaluated so far -- the
Haybittle-Peto rule: interim looks so strict that the final look keeps about
the stated confidence -- or, with ``futility`` and from half the tasks on,
when the candidate is not ahead (pooled mean difference <= ``min_improvement``:
it could hardly be shown better, and stopping can only make a pass rarer).
The decision is always ``decide`` at ``confidence`` on the tasks evaluated;
the record's ``sequential`` entry says how many looks ran and why it stopped.

This module knows nothing of the store; the suites take ``ChatCompleter``s and
an engine, so tests run on fakes.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from teachloop.core.loop import GateSample
from teachloop.core.rl import ChatCompleter, Task
from teachloop.core.sampling import SamplingParams
from teachloop.engine.base import Engine
from teachloop.envs import Environment, rollout
from teachloop.loop.config import GateConfig
from teachloop.render import Renderer

BOOTSTRAP_SEED = 20_240_601


@dataclass(frozen=True)
class PairedTest:
    """The outcome of a one-sided paired test of ``mean(candidate - baseline) > min_improvement``."""

    method: str
    n: int
    mean_diff: float
    lower_bound: float | None
    p_value: float
    confidence: float
    min_improvement: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        """As stored in the decision record."""
        return dict(self.__dict__)


def paired_bootstrap(diffs: Sequence[float], *, confidence: float, min_improvement: float = 0.0,
                     samples: int = 10_000, seed: int = BOOTSTRAP_SEED) -> PairedTest:
    """One-sided paired bootstrap of the mean difference (see the module docstring)."""
    import numpy as np

    method = f"paired bootstrap of the mean difference, one-sided, {samples} resamples, seed {seed}"
    if not diffs:
        return PairedTest(method, 0, 0.0, None, 1.0, confidence, min_improvement, False)
    d = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // len(d))
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, len(d), size=(stop - start, len(d)))
        means[start:stop] = d[idx].mean(axis=1)
    lower = float(np.quantile(means, 1 - confidence))
    p = float((means <= min_improvement).mean())
    mean = float(d.mean())
    return PairedTest(method, len(d), mean, lower, p, confidence, min_improvement, lower > min_improvement)


def sign_test(diffs: Sequence[float], *, confidence: float, min_improvement: float = 0.0) -> PairedTest:
    """Exact one-sided sign test on the non-zero differences (see the module docstring)."""
    wins = sum(1 for x in diffs if x > 0)
    losses = sum(1 for x in diffs if x < 0)
    n = wins + losses
    p = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0
    mean = statistics.fmean(diffs) if diffs else 0.0
    passed = n > 0 and p <= 1 - confidence and mean > min_improvement
    return PairedTest(f"exact sign test, one-sided ({wins} better, {losses} worse, {len(diffs) - n} ties)",
                      len(diffs), mean, None, p, confidence, min_improvement, passed)


def paired_test(method: str, diffs: Sequence[float], cfg: GateConfig) -> PairedTest:
    """The configured test on ``diffs``."""
    if method == "sign":
        return sign_test(diffs, confidence=cfg.confidence, min_improvement=cfg.min_improvement)
    return paired_bootstrap(diffs, confidence=cfg.confidence, min_improvement=cfg.min_improvement,
                            samples=cfg.bootstrap_samples)


def regression_test(method: str, diffs: Sequence[float], cfg: GateConfig) -> PairedTest:
    """Whether ``diffs`` (candidate - baseline) show the candidate *worse*: the configured one-sided test of
    ``mean(baseline - candidate) > 0``; ``passed`` means the drop is shown at ``cfg.confidence``."""
    worse = [-d for d in diffs]
    if method == "sign":
        return sign_test(worse, confidence=cfg.confidence)
    return paired_bootstrap(worse, confidence=cfg.confidence, samples=cfg.bootstrap_samples)


@dataclass
class Suite:
    """Per-example scores of both models on one set of examples (higher is better)."""

    name: str
    metric: str
    ids: list[str]
    baseline: list[float]
    candidate: list[float]
    deciding: bool = True
    sample: dict[str, Any] | None = None  # where the examples came from (an environment's stream slice), if known
    regression: dict[str, Any] | None = None  # the guard's verdict (``decide``): drop, whether shown, p-value

    @property
    def diffs(self) -> list[float]:
        """Per-example ``candidate - baseline``."""
        return [c - b for b, c in zip(self.baseline, self.candidate, strict=True)]

    def extend(self, more: Suite) -> None:
        """Append ``more``'s examples (the next chunk of the same suite)."""
        self.ids += more.ids
        self.baseline += more.baseline
        self.candidate += more.candidate

    def summary(self) -> dict[str, Any]:
        """Means and size (as stored in the decision record)."""
        n = len(self.ids)
        return {"name": self.name, "metric": self.metric, "n": n, "deciding": self.deciding,
                "baseline_mean": statistics.fmean(self.baseline) if n else None,
                "candidate_mean": statistics.fmean(self.candidate) if n else None,
                "mean_diff": statistics.fmean(self.diffs) if n else None,
                **({"sample": self.sample} if self.sample is not None else {}),
                **({"regression": self.regression} if self.regression is not None else {})}


@dataclass
class GateDecision:
    """Whether the candidate passed, why, and the figures behind it."""

    passed: bool
    reason: str
    test: PairedTest | None
    suites: list[Suite] = field(default_factory=list)
    baseline: str = ""
    candidate: str = ""
    sequential: dict[str, Any] | None = None  # the looks of a group-sequential gate (``Sequential.record``)

    def to_json(self) -> dict[str, Any]:
        """The decision record stored on the iteration."""
        return {"passed": self.passed, "reason": self.reason, "test": self.test.to_json() if self.test else None,
                "suites": [s.summary() for s in self.suites], "baseline": self.baseline, "candidate": self.candidate,
                **({"sequential": self.sequential} if self.sequential is not None else {})}


@dataclass
class Sequential:
    """Where a group-sequential gate stands: looks taken, environment tasks evaluated of those planned."""

    looks: int
    planned: int
    taken: int = 0
    evaluated: int = 0
    stopped: str | None = None  # "efficacy" | "futility" | None (ran to the last look)

    def record(self, interim_confidence: float) -> dict[str, Any]:
        """The decision record's ``sequential`` entry."""
        return {"looks": self.taken, "of": self.looks, "evaluated": self.evaluated, "planned": self.planned,
                "stopped": self.stopped, "interim_confidence": interim_confidence}


def interim(suites: Sequence[Suite], cfg: GateConfig, state: Sequential) -> str | None:
    """After a look that is not the last: ``"efficacy"``, ``"futility"`` or None to go on (module docstring)."""
    deciding = [d for s in suites if s.deciding for d in s.diffs]
    if not deciding:
        return None
    strict = cfg.model_copy(update={"confidence": cfg.interim_confidence})
    if decide(suites, strict).passed:
        return "efficacy"
    if cfg.futility and 2 * state.evaluated >= state.planned and statistics.fmean(deciding) <= cfg.min_improvement:
        return "futility"
    return None


def decide(suites: Sequence[Suite], cfg: GateConfig, *, baseline: str = "", candidate: str = "",
           empty_reason: str = "empty holdout and no environments", sequential: Sequential | None = None) -> GateDecision:
    """Pool the deciding suites, run the paired test, apply the regression guards (``sequential``: the looks
    that evaluated them, stated in the reason and the record)."""
    decision = _decide(suites, cfg, baseline=baseline, candidate=candidate, empty_reason=empty_reason)
    if sequential is not None:
        decision.sequential = sequential.record(cfg.interim_confidence)
        if sequential.stopped is not None:
            decision.reason += (f"; stopped early for {sequential.stopped} after {sequential.evaluated} of "
                                f"{sequential.planned} environment tasks (look {sequential.taken} of {sequential.looks})")
    return decision


def _decide(suites: Sequence[Suite], cfg: GateConfig, *, baseline: str, candidate: str,
            empty_reason: str) -> GateDecision:
    suites = [s for s in suites if s.ids]
    deciding = [s for s in suites if s.deciding]
    if not deciding:
        return GateDecision(False, f"no examples to compare on ({empty_reason})", None, list(suites),
                            baseline, candidate)
    diffs = [d for s in deciding for d in s.diffs]
    test = paired_test(cfg.test, diffs, cfg)
    refused = None
    for s in suites:
        drop = -statistics.fmean(s.diffs)
        shown = regression_test(cfg.test, s.diffs, cfg)
        s.regression = {"drop": drop, "shown": shown.passed, "p_value": shown.p_value,
                        "guarded": drop > cfg.max_regression and shown.passed}
        if refused is None and s.regression["guarded"]:
            refused = (f"{s.name} ({s.metric}) fell by {drop:.4g} > max_regression {cfg.max_regression:g}, "
                       f"a drop shown at {cfg.confidence:.0%} confidence (p = {shown.p_value:.3g}, n = {shown.n})")
    if refused is not None:
        return GateDecision(False, refused, test, list(suites), baseline, candidate)
    figures = f"mean diff {test.mean_diff:+.4g} over {test.n} paired examples, p = {test.p_value:.3g}"
    if test.lower_bound is not None:
        figures += f", {cfg.confidence:.0%} lower bound {test.lower_bound:+.4g}"
    if test.passed:
        reason = f"better at {cfg.confidence:.0%} confidence ({figures})"
    else:
        reason = f"not better at {cfg.confidence:.0%} confidence with min improvement {cfg.min_improvement:g} ({figures})"
    return GateDecision(test.passed, reason, test, list(suites), baseline, candidate)


async def reward_suite(name: str, env: Environment, tasks: Sequence[Task], baseline: ChatCompleter,
                       candidate: ChatCompleter, *, max_tokens: int, deciding: bool = True,
                       baseline_rewards: Sequence[float] | None = None) -> Suite:
    """Greedy replies of both models to ``tasks``, scored by ``env`` (``baseline_rewards``: the baseline's
    rewards on these tasks, already measured -- greedy replies of an unchanged model -- so not sampled again)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    n = max(1, len(tasks))
    if baseline_rewards is not None and len(baseline_rewards) == len(tasks):
        base_r = [float(r) for r in baseline_rewards]
    else:
        base = await rollout(env, tasks, baseline, group_size=1, params=params, max_concurrent_groups=n)
        base_r = [g.rewards[0] for g in base]
    cand = await rollout(env, tasks, candidate, group_size=1, params=params, max_concurrent_groups=n)
    return Suite(name, "reward", [t.id for t in tasks], base_r, [g.rewards[0] for g in cand], deciding)


def stream_slice(env: Environment, *, seed: int, tasks: int, iteration: int | None,
                 fresh: bool) -> tuple[list[Task], dict[str, Any]]:
    """The gate's held-out tasks of one environment for one iteration, and the record naming them.

    With ``fresh`` (``gate.fresh_tasks``), iteration ``k`` (1-based) takes positions ``[(k - 1) * tasks, k *
    tasks)`` of the environment's task stream for ``seed``: disjoint slices, so no two iterations' gates use the
    same task of the stream. Otherwise every iteration takes the first ``tasks``. The record gives the seed, the
    offset, the task ids, and how many of the slice's prompts already occurred earlier in the stream (an
    environment with few distinct problems repeats them: disjoint positions, not always distinct prompts). A
    finite stream may run out: the slice is then shorter, or empty.
    """
    offset = (iteration - 1) * tasks if fresh and iteration is not None and iteration > 0 else 0
    stream = env.take(offset + tasks, seed)
    taken = stream[offset:]
    earlier = {_prompt_text(t) for t in stream[:offset]}
    record = GateSample(seed=seed, offset=offset, tasks=len(taken), fresh=bool(fresh), task_ids=[t.id for t in taken],
                        repeated_prompts=sum(1 for t in taken if _prompt_text(t) in earlier))
    return taken, record.model_dump()


def _prompt_text(task: Task) -> str:
    return " ".join(" ".join(str(m.content or "").split()).lower() for m in task.prompt)


def _logprob(engine: Engine, renderer: Renderer, messages: list[Any], adapter: str | None) -> tuple[float, float]:
    """(mean, sum) of the log-probabilities of the last reply's tokens."""
    from teachloop.core.chat import Message

    msgs = [Message(role=m["role"], content=m.get("content") or "") for m in messages]
    tokens, mask = renderer.build_supervised(msgs, train_on="last_assistant")
    lps = engine.logprobs([tokens], adapter)[0]
    picked = [lp for lp, m in zip(lps, mask[1:], strict=False) if m]
    return sum(picked) / max(1, len(picked)), sum(picked)


def _score_row(engine: Engine, renderer: Renderer, row: dict[str, Any], adapter: str | None) -> float:
    if "chosen" in row:
        prompt = list(row["prompt"])
        _, chosen = _logprob(engine, renderer, [*prompt, row["chosen"]], adapter)
        _, rejected = _logprob(engine, renderer, [*prompt, row["rejected"]], adapter)
        return float(chosen - rejected)
    mean, _ = _logprob(engine, renderer, list(row["messages"]), adapter)
    return float(mean)


async def likelihood_suite(rows: Sequence[dict[str, Any]], engine: Engine, renderer: Renderer,
                           baseline: str | None, candidate: str) -> Suite:
    """Mean reply log-probability (chat rows) or chosen-over-rejected margin (pairs) under both adapters."""
    def run() -> tuple[list[float], list[float]]:
        return ([_score_row(engine, renderer, r, baseline) for r in rows],
                [_score_row(engine, renderer, r, candidate) for r in rows])

    base, cand = await asyncio.to_thread(run)
    metric = "dpo_margin" if rows and "chosen" in rows[0] else "mean_logprob"
    return Suite("holdout", metric, [str(i) for i in range(len(rows))], base, cand)


__all__ = [
    "GateDecision",
    "PairedTest",
    "Sequential",
    "Suite",
    "decide",
    "interim",
    "likelihood_suite",
    "paired_bootstrap",
    "paired_test",
    "regression_test",
    "reward_suite",
    "sign_test",
    "stream_slice",
]

"""The loop config of one deployment: one validated model, from TOML or JSON (REST).

A config looks like::

    deployment = "calc"

    [[sources]]                 # traces scored by an environment's grader
    kind = "grader"
    env = "arithmetic"
    env_args = { level = 1 }
    answer = "lookup"           # or "metadata:answer"
    min_score = 1.0             # a reply scoring >= this is a good example

    [[sources]]                 # traces with feedback >= a score, and corrections
    kind = "feedback"
    min_score = 0.8

    [curation]
    holdout_frac = 0.1

    [trigger]
    every = 64                  # new usable examples

    [algorithm]
    kind = "grpo"               # sft | dpo | grpo
    train = { steps = 20, optim = { lr = 5e-4 }, rl = { prompts_per_step = 4, group_size = 8 } }

    [gate]
    environments = [{ env = "arithmetic", env_args = { level = 1 }, tasks = 100 }]

    [promotion]
    canary_percent = 25

    [budget]
    train_minutes_per_day = 60

``validate_loop_config`` checks the shape, ranges and cross-field rules
(errors are ``InvalidInput`` naming the dotted field, e.g. ``trigger.every``);
``check_references`` then checks what the config names against the store --
the deployment, every environment (resolved to a digest), every dataset (its
own, or another organisation's under a grant: ``OWNER/NAME[@N]``) and label
dataset. Nothing is written by either. This module knows nothing of engines
or training runs. A dataset bought on the marketplace and since refunded is
refused with the reason (``catalog.usage.explain_unusable``), and
``meter_bought_sources`` -- called once per iteration -- checks and meters each
granted dataset through the installed ``catalog.usage`` gate.

Rules worth knowing (each refusal names the field):

* a loop must be able to see new examples after its first iteration: when
  every source is a pinned snapshot (``NAME@N`` or ``ds_...``), or gives
  nothing to the algorithm (feedback for GRPO), the trigger can never fire
  again and ``trigger.every`` / ``trigger.interval_minutes`` is refused;
* promotion always goes through a canary: ``promotion.canary_percent`` is
  1..99 (both arms must serve to be compared);
* the watch after promotion compares the newest ``watch_requests`` requests,
  so it must be at least ``min_samples``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.orm import Session

from teachloop.catalog.envref import ResolvedEnv, meter_env_run, resolve_env
from teachloop.catalog.usage import explain_unusable, meter_use
from teachloop.core.errors import InvalidInput, TeachloopError
from teachloop.core.ids import is_id
from teachloop.core.rl import content_hash
from teachloop.loop.lineage import ContinueFrom, base_steps, resolve_continue_from
from teachloop.store.blobs import BlobStore
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema.datasets import Dataset
from teachloop.store.schema.deployments import Deployment
from teachloop.train.config import validate_config

#: The fields of the training config the loop sets itself.
LOOP_OWNED = {"algorithm", "model", "name"}
LOOP_OWNED_DATA = {"train", "eval"}
LOOP_OWNED_RL = {"env", "env_args"}
LOOP_OWNED_EVAL = {"env", "env_args", "tasks", "seed"}  # grpo: algorithm.eval_tasks / eval_seed


Signal = Literal["grader", "feedback"]
SIGNALS: tuple[Signal, ...] = ("grader", "feedback")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Source(_Section):
    license: str = Field(default="LicenseRef-proprietary", min_length=1, max_length=100,
                         description="License the rows are used under (SPDX id or LicenseRef-...).")


class FeedbackSource(_Source):
    """Traces with feedback: well-rated replies, corrections, and (for DPO) good/bad pairs."""

    kind: Literal["feedback"]
    min_score: float = Field(default=1.0, description="Feedback score at or above which a reply is good.")
    max_score: float = Field(default=0.0, description="Feedback score at or below which a reply is bad (DPO).")
    corrections: bool = Field(default=True, description="Use corrected outputs (SFT rows; DPO chosen over the reply).")
    label: str | None = Field(default=None, description="Only feedback with this label.")

    @model_validator(mode="after")
    def _ordered(self) -> FeedbackSource:
        if self.max_score >= self.min_score:
            raise ValueError("max_score must be below min_score")
        return self


class GraderSource(_Source):
    """Traces scored by an environment's grader (the online reward)."""

    kind: Literal["grader"]
    env: str = Field(min_length=1, description="Environment whose grader scores the traffic.")
    env_args: dict[str, Any] = Field(default_factory=dict, description="Its constructor arguments.")
    answer: str = Field(default="lookup", description="'lookup' (find the prompt among the env's tasks) or "
                                                      "'metadata:KEY' (the request metadata carries it).")
    lookup_tasks: int = Field(default=10_000, ge=1, le=1_000_000, description="Tasks indexed for 'lookup'.")
    lookup_seed: int = Field(default=0, description="Seed of the task stream indexed for 'lookup'.")
    min_score: float = Field(default=1.0, description="Grader score at or above which a reply is good.")
    max_score: float = Field(default=0.0, description="Grader score at or below which a reply is bad (DPO).")

    @model_validator(mode="after")
    def _answer(self) -> GraderSource:
        if self.answer != "lookup" and not (self.answer.startswith("metadata:") and len(self.answer) > 9):
            raise ValueError("answer must be 'lookup' or 'metadata:KEY'")
        if self.max_score >= self.min_score:
            raise ValueError("max_score must be below min_score")
        return self


class LabelsSource(_Source):
    """Expert labels: label datasets (``origin = "labels"``), each row with the expert who wrote it."""

    kind: Literal["labels"]
    dataset: str | None = Field(default=None, min_length=1,
                                description="One label dataset (NAME, NAME@N, ds_..., OWNER/NAME[@N] under a "
                                            "grant); default: the newest version of every label dataset of the "
                                            "organisation.")


class DatasetSource(_Source):
    """A dataset snapshot the organisation owns, or another organisation's under a grant."""

    kind: Literal["dataset"]
    dataset: str = Field(min_length=1, description="NAME@N, NAME (newest), a ds_... id, or OWNER/NAME[@N] "
                                                   "(another organisation's, under a grant).")


class ExpertsSource(_Source):
    """A workforce project (``teachloop work``): the loop sends it the traces its grader was unsure of or that got
    negative feedback (within a daily budget), and trains on the project's aggregated labels once confident."""

    kind: Literal["experts"]
    project: str = Field(min_length=1, max_length=100, description="The project (name or wprj_... id).")
    grader_below: float | None = Field(default=None, description="Send traces the loop's grader scored below this.")
    feedback_at_most: float | None = Field(default=0.0, description="Send traces with feedback at or below this "
                                                                     "score (null: none).")
    daily_budget: int = Field(default=50, ge=0, le=100_000, description="Traces sent per UTC day at most.")
    min_confidence: float = Field(default=0.7, ge=0, le=1, description="Train on rows whose aggregated "
                                                                       "confidence reaches this.")


class UpstreamSource(_Source):
    """Distillation (issue 17): the replies of the deployment's upstream arm (the teacher) as training data.

    SFT rows are the teacher's replies (``filter``: all of them, or only those whose feedback / the loop's
    grader scored >= ``min_score``); DPO pairs put the better of teacher and student (a local arm, a shadow
    included) on one prompt over the other, as ``filter`` (feedback or grader) ranks them.
    """

    kind: Literal["upstream"]
    filter: Literal["none", "feedback", "grader"] = Field(default="none",
                                                          description="Keep the teacher's replies: all, or those "
                                                                      "scored >= min_score by feedback / the grader.")
    min_score: float = Field(default=1.0, description="Score at or above which a reply is good.")
    max_score: float = Field(default=0.0, description="Score at or below which a reply is bad (DPO).")

    @model_validator(mode="after")
    def _ordered(self) -> UpstreamSource:
        if self.max_score >= self.min_score:
            raise ValueError("max_score must be below min_score")
        return self


def pinned(ref: str | None) -> bool:
    """Whether a dataset reference names one fixed snapshot (``NAME@N`` or ``ds_...``), which never grows."""
    return ref is not None and ("@" in ref or is_id(ref.strip(), "ds"))


Source = Annotated[FeedbackSource | GraderSource | LabelsSource | DatasetSource | ExpertsSource | UpstreamSource,
                   Field(discriminator="kind")]


class CurationConfig(_Section):
    """How candidate rows become a snapshot."""

    metadata: dict[str, str] = Field(default_factory=dict, description="Trace metadata pairs that must all match.")
    exclude_metadata: dict[str, str] = Field(default_factory=dict, description="Pairs that exclude a trace.")
    min_score: float | None = Field(default=None, description="Drop rows scored below this.")
    max_score: float | None = Field(default=None, description="Drop rows scored above this.")
    dedupe: bool = Field(default=True, description="Drop exact duplicates (normalised text).")
    near_dup_threshold: float | None = Field(default=0.9, gt=0, le=1,
                                             description="Drop rows whose MinHash Jaccard to a kept one is >= this.")
    pii: bool = Field(default=True, description="Scrub PII (emails, phones, cards, URLs, credentials) with scrubadub.")
    holdout_frac: float = Field(default=0.1, ge=0, le=0.5, description="Share of prompts held out (fixed by hash).")
    holdout_seed: int = Field(default=0, description="Salt of the holdout hash.")
    max_rows: int = Field(default=10_000, ge=1, le=1_000_000, description="Newest rows kept at most.")
    max_chars: int = Field(default=16_000, ge=1, description="Drop rows longer than this (characters).")


class TriggerConfig(_Section):
    """When an iteration starts: every N new usable examples and/or on a schedule."""

    every: int | None = Field(default=64, description="Start after this many new usable examples.")
    interval_minutes: float | None = Field(default=None, description="Start this long after the last iteration.")
    min_examples: int = Field(default=8, ge=1, description="Never train on fewer training rows than this.")
    check_seconds: float = Field(default=30.0, gt=0, le=86_400, description="How often `loop run` ticks.")


class AlgorithmConfig(_Section):
    """What trains the candidate: ``train`` is passed through to the training config."""

    kind: Literal["sft", "dpo", "grpo"]
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields (steps, lora, optim, rl, data).")
    warm_start: bool = Field(default=True, description="Start from the deployed adapter (else from the base).")
    # -- issue 16: keep what the loop learns (see loop.lineage); ``lineage = false``, ``max_steps = null`` and
    # ``late_temperature = null`` give the behaviour before it (every iteration restarts from the deployed adapter)
    lineage: bool = Field(default=True, description="Continue the newest candidate that was not worse than the "
                                                    "deployed version on the gate (else restart from the deployed "
                                                    "adapter every iteration).")
    continue_from: str | None = Field(default=None, min_length=1, max_length=200,
                                      description="The first iteration starts from this candidate of the loop: a "
                                                  "run id (run_...) of one of its iterations, or a version of the "
                                                  "deployment's adapter (NAME@N or av_...).")
    through_worse: int = Field(default=0, ge=0, le=100,
                               description="The lineage also continues a candidate that was worse than the deployed "
                                           "version on the gate (never deployed; not rolled back, not failed), as "
                                           "long as at most this many candidates in a row of its line were worse; "
                                           "past that it goes back to the newest not-worse one (0: a worse "
                                           "candidate is never continued). GRPO's held-out curve dips and "
                                           "recovers; a lineage that drops each dip drops its steps.")
    max_steps: int | None = Field(default=None, ge=1, le=100_000,
                                  description="Adaptive steps: an iteration whose parent candidate still improved "
                                              "on the gate trains twice as many steps as the last, up to this; one "
                                              "that got worse goes back to train.steps (null: always train.steps).")
    late_temperature: float | None = Field(default=None, gt=0, le=5,
                                           description="Rollout temperature once the lineage's gate reward reaches "
                                                       "late_reward (null: rl.temperature throughout).")
    late_reward: float = Field(default=0.8, description="Gate reward (candidate mean) from which late_temperature, "
                                                        "late_extra_draws and late_lr_scale apply.")
    late_extra_draws: int | None = Field(default=None, ge=0, le=16,
                                         description="GRPO: rl.extra_draws (dynamic sampling: more batches of "
                                                     "prompts while too few groups' rewards vary) once the "
                                                     "lineage's gate reward reaches late_reward, when most groups "
                                                     "of a good policy are all correct (null: rl.extra_draws "
                                                     "throughout).")
    late_lr_scale: float | None = Field(default=None, gt=0, le=1,
                                        description="Once the lineage's gate reward reaches late_reward, runs train "
                                                    "at this fraction of train.optim.lr (an AdamW state restored with "
                                                    "the start keeps its moments): a good policy near a peak of its "
                                                    "noisy held-out curve moves less (null: the plain lr "
                                                    "throughout).")
    failure_share: float = Field(default=0.0, ge=0, lt=1,
                                 description="GRPO: the share of a run's tasks drawn from the traffic prompts whose "
                                             "served reply the grader scored below full marks, the rest from all "
                                             "prompts (envs.builtin.traffic: a group of samples that all score "
                                             "alike teaches nothing; 0: every prompt alike).")
    # -- issue 16: a held-out evaluation during every GRPO run, so the reward-hack alarm (train.watch) can fire
    eval_tasks: int = Field(default=16, ge=0, le=1000,
                            description="GRPO: held-out tasks each run evaluates greedily (at step 0, every "
                                        "eval.every steps and at the end) from the first gate environment (else "
                                        "the grader source's environment), so a run whose training reward rises "
                                        "while held-out reward falls raises the reward-hack alarm and its "
                                        "candidate is never gated nor promoted (0: no evaluation, no alarm).")
    eval_seed: int = Field(default=2_000_003, description="Seed of that held-out task stream (not the gate's).")
    # -- a run that continues a trained adapter with a fresh AdamW: its first updates move every parameter by
    #    about lr whatever its gradient (the bias-corrected m / sqrt(v) is +-1), which grows a fresh adapter but
    #    shakes a trained one. So the run that trained the start hands its AdamW state on (keep_optimizer); the
    #    lr scale and warmup below are for a start without one (e.g. an adapter pushed by hand)
    keep_optimizer: bool = Field(default=True,
                                 description="A run that continues an adapter a run of this loop trained (a "
                                             "candidate of the lineage, the deployed version it promoted) restores "
                                             "that run's AdamW state (moments and step count) with it and trains at "
                                             "the plain train.optim.lr, as if it had never stopped (false: a fresh "
                                             "AdamW every run, at continue_lr_scale).")
    continue_lr_scale: float = Field(default=0.5, gt=0, le=1,
                                     description="A run that starts from a trained adapter (the deployed one or a "
                                                 "candidate of the lineage) without its AdamW state trains at this "
                                                 "fraction of train.optim.lr, unless train.optim sets warmup_steps "
                                                 "itself (1.0 with continue_warmup 0: as before issue 16's rerun; "
                                                 "bench/README.md, 'Loop vs offline').")
    continue_warmup: float = Field(default=0.34, ge=0, lt=1,
                                   description="... and ramps the lr up linearly over this fraction of its steps.")


class GateEnv(_Section):
    """An environment the candidate is evaluated on."""

    env: str = Field(min_length=1)
    env_args: dict[str, Any] = Field(default_factory=dict)
    tasks: int = Field(default=100, ge=1, le=10_000)
    seed: int = Field(default=1_000_003, description="Seed of the held-out task stream.")


class GateConfig(_Section):
    """The eval gate: candidate vs deployed, paired per example."""

    metric: Literal["reward", "likelihood"] = Field(
        default="reward", description="reward: grader reward of greedy replies on the holdout prompts; "
                                      "likelihood: log-likelihood of the holdout replies (or DPO margins).")
    test: Literal["bootstrap", "sign"] = Field(default="bootstrap", description="Paired test.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_improvement: float = Field(default=0.0, ge=0, description="The lower confidence bound must exceed this.")
    max_regression: float = Field(default=0.05, ge=0,
                                  description="No suite's mean may drop by more than this where the drop is shown at "
                                              "`confidence` (the gate's test on that suite, the other way round).")
    holdout: bool = Field(default=True, description="Evaluate on the snapshot's holdout split.")
    holdout_max: int = Field(default=200, ge=1, le=100_000, description="Holdout rows evaluated at most.")
    environments: list[GateEnv] = Field(default_factory=list)
    fresh_tasks: bool = Field(default=True,
                              description="Each iteration evaluates on its own slice of every environment's held-out "
                                          "stream (iteration k: tasks (k-1)*tasks .. k*tasks-1 of the seed), so no "
                                          "decision reuses the tasks of an earlier one; false: the first tasks every "
                                          "time, the deployed version's rewards on them computed once.")
    max_tokens: int = Field(default=64, ge=1, le=8192, description="Reply length of greedy evaluation.")
    bootstrap_samples: int = Field(default=10_000, ge=100, le=1_000_000)
    looks: int = Field(default=4, ge=1, le=20,
                       description="Group-sequential gate: the environments' tasks are evaluated in this many equal "
                                   "chunks, and after each chunk but the last the gate may stop early (efficacy at "
                                   "`interim_confidence`, futility from half the tasks on; loop.gate). 1: all at once.")
    interim_confidence: float = Field(default=0.999, gt=0.5, lt=1,
                                      description="Confidence an interim look needs to pass early (Haybittle-Peto: "
                                                  "so strict that the final look keeps about the stated confidence).")
    futility: bool = Field(default=True,
                           description="Stop and refuse at an interim look from half the tasks on when the candidate "
                                       "is not ahead (pooled mean difference <= min_improvement).")


class PromotionConfig(_Section):
    """Canary first, then full promotion; rollback on a drop of online figures."""

    canary_percent: int = Field(default=10, description="Share of users (1..99) the candidate serves first.")
    canary_min_requests: int = Field(default=50, ge=1, description="Canary requests before deciding.")
    canary_min_minutes: float = Field(default=0.0, ge=0)
    canary_max_minutes: float | None = Field(default=1440.0, gt=0,
                                             description="Roll back a canary still without evidence after this "
                                                         "long (null: wait for ever).")
    signals: list[Signal] = Field(default_factory=lambda: list(SIGNALS), min_length=1,
                                  description="Online signals watched: grader and/or feedback.")
    min_samples: int = Field(default=20, ge=1, description="Scored requests per arm before a signal counts.")
    max_drop: float = Field(default=0.05, ge=0,
                            description="Non-inferiority margin: the canary is rolled back once a signal is shown "
                                        "worse by more than this, promoted once every signal is shown not worse by "
                                        "more than this (sequential test, loop.promotion); the watch rolls back on a "
                                        "fall of more than this.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1,
                              description="Coverage of the canary's sequential test, shared by its signals: a canary "
                                          "as good as the primary is rolled back with probability <= 1 - this.")
    canary_max_samples: int | None = Field(
        default=400, ge=1,
        description="The canary's planned sample: once every signal with min_samples on both arms has this many "
                    "on the canary arm, the test stops -- promoted if no signal was shown worse and every observed "
                    "difference is above -max_drop, else rolled back. A canary as good as the primary is seldom "
                    "shown non-inferior at a small margin (thousands of samples per arm), so without a horizon it "
                    "waits for canary_max_minutes. null: no horizon.")
    allow_blind_promotion: bool = Field(default=False,
                                        description="Promote a canary that served canary_min_requests even when no "
                                                    "signal reached min_samples on both arms.")
    watch_requests: int = Field(default=100, ge=1,
                                description="After full promotion, the newest this-many requests of the promoted "
                                            "version are compared with the previous version, for as long as it "
                                            "serves.")

    @field_validator("canary_percent")
    @classmethod
    def _canary(cls, value: int) -> int:
        if not 1 <= value <= 99:
            raise ValueError(f"promotion always goes through a canary: use 1..99 (% of users), got {value}")
        return value


class BudgetConfig(_Section):
    """Training time allowed per day (UTC)."""

    train_minutes_per_day: float = Field(default=60.0, gt=0, le=1440)


class LoopConfig(BaseModel):
    """The whole loop of one deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment: str = Field(min_length=1, max_length=100)
    enabled: bool = True
    sources: list[Source] = Field(min_length=1)
    curation: CurationConfig = Field(default_factory=CurationConfig)
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    algorithm: AlgorithmConfig
    gate: GateConfig = Field(default_factory=GateConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    def grader_source(self) -> GraderSource | None:
        """The first grader source (it also scores the online reward)."""
        return next((s for s in self.sources if isinstance(s, GraderSource)), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what the loop row stores)."""
        return self.model_dump(mode="json")

    @property
    def digest(self) -> str:
        """Content digest of the config."""
        return content_hash(self.to_dict())


def _cross_checks(cfg: LoopConfig) -> None:
    """Rules that span sections; ``InvalidInput`` naming the field."""
    t = cfg.trigger
    if t.every is None and t.interval_minutes is None:
        raise InvalidInput("config field trigger: set every (new examples) and/or interval_minutes", param="trigger")
    if t.every is not None and t.every < 1:
        raise InvalidInput(f"config field trigger.every: must be at least 1, got {t.every}", param="trigger.every")
    if t.every is not None and t.every > cfg.curation.max_rows:
        raise InvalidInput(f"config field trigger.every: {t.every} new examples can never arrive in a snapshot of at "
                           f"most curation.max_rows = {cfg.curation.max_rows}", param="trigger.every")
    if t.interval_minutes is not None and t.interval_minutes <= 0:
        raise InvalidInput("config field trigger.interval_minutes: must be positive", param="trigger.interval_minutes")
    if t.min_examples > cfg.curation.max_rows:
        raise InvalidInput(f"config field trigger.min_examples: above curation.max_rows ({cfg.curation.max_rows})",
                           param="trigger.min_examples")
    kind = cfg.algorithm.kind
    kinds = {s.kind for s in cfg.sources}
    if kind == "grpo" and not kinds & {"grader", "dataset"}:
        raise InvalidInput("config field algorithm.kind: grpo trains on traffic prompts an environment can grade; "
                           "add a grader source (or a prompts dataset)", param="algorithm.kind")
    if cfg.gate.metric == "reward" and cfg.gate.holdout and cfg.grader_source() is None and not cfg.gate.environments:
        raise InvalidInput("config field gate.metric: reward needs a grader source or gate.environments; "
                           "use metric = 'likelihood'", param="gate.metric")
    if not cfg.gate.holdout and not cfg.gate.environments:
        raise InvalidInput("config field gate.holdout: is off and gate.environments is empty; the gate needs "
                           "one of them", param="gate.holdout")
    if cfg.gate.holdout and cfg.curation.holdout_frac == 0:
        raise InvalidInput("config field curation.holdout_frac: gate.holdout needs a holdout share above 0",
                           param="curation.holdout_frac")
    if "grader" in cfg.promotion.signals and cfg.grader_source() is None:
        raise InvalidInput("config field promotion.signals: 'grader' needs a grader source", param="promotion.signals")
    if cfg.promotion.watch_requests < cfg.promotion.min_samples:
        raise InvalidInput(f"config field promotion.watch_requests: {cfg.promotion.watch_requests} is below "
                           f"promotion.min_samples ({cfg.promotion.min_samples}); the watch could never see a drop",
                           param="promotion.watch_requests")
    _check_growth(cfg)
    _check_train(cfg)
    _check_lineage(cfg)


def _check_lineage(cfg: LoopConfig) -> None:
    """Issue 16's algorithm fields (loop.lineage); ``InvalidInput`` naming the field."""
    a = cfg.algorithm
    if a.continue_from is not None and not a.warm_start:
        raise InvalidInput("config field algorithm.continue_from: needs algorithm.warm_start = true",
                           param="algorithm.continue_from")
    if a.through_worse and not (a.lineage and a.warm_start):
        raise InvalidInput("config field algorithm.through_worse: needs algorithm.lineage = true and "
                           "algorithm.warm_start = true", param="algorithm.through_worse")
    if a.max_steps is not None and a.max_steps < base_steps(cfg):
        raise InvalidInput(f"config field algorithm.max_steps: {a.max_steps} is below algorithm.train.steps "
                           f"({base_steps(cfg)})", param="algorithm.max_steps")
    if a.late_temperature is not None and a.kind != "grpo":
        raise InvalidInput("config field algorithm.late_temperature: only grpo samples rollouts",
                           param="algorithm.late_temperature")
    if a.late_extra_draws is not None and a.kind != "grpo":
        raise InvalidInput("config field algorithm.late_extra_draws: only grpo samples rollouts",
                           param="algorithm.late_extra_draws")
    if a.failure_share and a.kind != "grpo":
        raise InvalidInput("config field algorithm.failure_share: only grpo trains on the traffic prompts' stream",
                           param="algorithm.failure_share")


def _live(src: Any, algorithm: str) -> bool:
    """Whether ``src`` can give ``algorithm`` new examples after the first iteration."""
    if isinstance(src, FeedbackSource):
        return algorithm != "grpo"  # feedback has no reference answer to grade a prompt against
    if isinstance(src, GraderSource):
        return True
    if isinstance(src, LabelsSource | DatasetSource):
        return not pinned(src.dataset)
    if isinstance(src, UpstreamSource):  # the upstream answers traffic all the time (GRPO: no reference answer)
        return algorithm != "grpo"
    return isinstance(src, ExpertsSource)  # an experts project's dataset grows as experts label


def _check_growth(cfg: LoopConfig) -> None:
    """Refuse a trigger that can never fire again: no source can produce new examples."""
    if any(_live(src, cfg.algorithm.kind) for src in cfg.sources):
        return
    name = "trigger.every" if cfg.trigger.every is not None else "trigger.interval_minutes"
    raise InvalidInput(f"config field {name}: no source can produce new examples after the first iteration (pinned "
                       "snapshots never grow); name a dataset without @N to follow its new versions, or add a "
                       "traffic source (grader, feedback) or labels", param=name)


def _check_train(cfg: LoopConfig) -> None:
    train = dict(cfg.algorithm.train)
    for key in LOOP_OWNED & set(train):
        raise InvalidInput(f"config field algorithm.train.{key}: set by the loop; remove it",
                           param=f"algorithm.train.{key}")
    for section, owned in (("data", LOOP_OWNED_DATA), ("rl", LOOP_OWNED_RL), ("eval", LOOP_OWNED_EVAL)):
        value = train.get(section)
        if value is not None and not isinstance(value, dict):
            raise InvalidInput(f"config field algorithm.train.{section}: must be a table", param=f"algorithm.train.{section}")
        for key in owned & set(value or {}):
            raise InvalidInput(f"config field algorithm.train.{section}.{key}: set by the loop; remove it",
                               param=f"algorithm.train.{section}.{key}")
    kind = cfg.algorithm.kind
    if kind == "grpo" and "data" in train:
        raise InvalidInput("config field algorithm.train.data: grpo takes an rl section, not data",
                           param="algorithm.train.data")
    if kind != "grpo" and "rl" in train:
        raise InvalidInput(f"config field algorithm.train.rl: {kind} takes a data section, not rl",
                           param="algorithm.train.rl")
    probe = training_dict(cfg, model="probe", name="probe", env="arithmetic", env_args={}, data_path="probe.jsonl",
                          eval_env="arithmetic")
    try:
        validate_config(probe)
    except InvalidInput as err:
        field = err.param or "config"
        message = str(err).replace(f"config field {field}", "").lstrip(": ")
        raise InvalidInput(f"config field algorithm.train.{field}: {message}", param=f"algorithm.train.{field}") from None


def training_dict(cfg: LoopConfig, *, model: str, name: str, env: str | None, env_args: dict[str, Any] | None,
                  data_path: str | None, eval_path: str | None = None, eval_env: str | None = None,
                  eval_env_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training config (as a dict for ``train.validate_config``) of one iteration.

    GRPO runs evaluate ``algorithm.eval_tasks`` held-out tasks of ``eval_env`` (seed ``algorithm.eval_seed``) so
    the reward-hack alarm can fire; the best-checkpoint pick is off unless ``algorithm.train.eval.keep_best`` asks
    for it (the gate judges the run's last adapter). Without ``eval_env`` (or with ``eval_tasks = 0``) and for
    SFT/DPO, no environment evaluation runs (SFT/DPO evaluate on the holdout file).
    """
    train = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.algorithm.train.items()}
    out: dict[str, Any] = {**train, "algorithm": cfg.algorithm.kind, "model": model, "name": name}
    out.setdefault("checkpoint_every", 0)
    user_eval = dict(train.get("eval", {}))
    if cfg.algorithm.kind == "grpo" and eval_env is not None and cfg.algorithm.eval_tasks > 0:
        out["eval"] = {"keep_best": False, **user_eval, "env": eval_env, "env_args": dict(eval_env_args or {}),
                       "tasks": cfg.algorithm.eval_tasks, "seed": cfg.algorithm.eval_seed}
    else:
        out["eval"] = {**user_eval, "tasks": 0}  # the loop's gate evaluates
    if cfg.algorithm.kind == "grpo":
        out["rl"] = {**train.get("rl", {}), "env": env, "env_args": env_args or {}}
    else:
        data = {**train.get("data", {}), "train": data_path}
        if eval_path is not None:
            data["eval"] = eval_path
        else:
            data["holdout_frac"] = 0.0
        out["data"] = data
    return out


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if p in ("feedback", "grader", "labels", "dataset", "experts", "upstream") and parts and parts[-1].isdigit():
            continue  # the discriminator tag of a source
        parts.append(str(p))
    return ".".join(parts) or "config"


def validate_loop_config(raw: dict[str, Any]) -> LoopConfig:
    """A ``LoopConfig`` from a plain dict; ``InvalidInput`` naming the field."""
    if not isinstance(raw, dict):
        raise InvalidInput("a loop config is a table/object", param="config")
    try:
        cfg = LoopConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = _loc(first["loc"])
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown field"
        elif first["type"] == "union_tag_invalid":
            msg = "kind must be one of feedback, grader, labels, dataset, experts, upstream"
        raise InvalidInput(f"config field {loc}: {msg}", param=loc) from None
    _cross_checks(cfg)
    return cfg


def load_loop_config(path: Path, overrides: dict[str, Any] | None = None) -> LoopConfig:
    """Read a TOML loop config (``overrides`` replace top-level keys, e.g. the deployment)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidInput(f"loop config {path} does not exist", param="config") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(f"{path} is not valid TOML: {err}", param="config") from None
    return validate_loop_config({**raw, **(overrides or {})})


@dataclass(frozen=True)
class References:
    """What a config names, resolved against the store.

    Attributes:
        deployment: the deployment row.
        source_envs: resolved environment per source index (grader sources).
        gate_envs: resolved environment per gate environment.
        datasets: dataset rows per source index (a dataset source: one; a labels source: every label
            dataset it reads, possibly none yet).
        licenses: per source index, the license of a grant (another organisation's dataset); rows
            copied from it are used under that license.
    """

    deployment: Deployment
    source_envs: dict[int, ResolvedEnv]
    gate_envs: list[ResolvedEnv]
    datasets: dict[int, list[Dataset]]
    licenses: dict[int, str] = field(default_factory=dict)
    continue_from: ContinueFrom | None = None  # issue 16: algorithm.continue_from, resolved


def _resolve(ref: str, args: dict[str, Any], field: str, session: Session, blobs: BlobStore, org_id: str,
             cache: Path) -> ResolvedEnv:
    try:
        return resolve_env(ref, trusted=False, session=session, blobs=blobs, org_id=org_id, cache=cache, **args)
    except TeachloopError as err:
        raise InvalidInput(f"config field {field}: {err}", param=field) from None
    except Exception as err:  # an environment constructor that rejects its arguments
        raise InvalidInput(f"config field {field}: cannot load {ref!r}: {err}", param=field) from None


_KIND_FOR = {"sft": "chat", "dpo": "pairs", "grpo": "prompts"}


def check_references(cfg: LoopConfig, session: Session, *, blobs: BlobStore, org_id: str, cache: Path) -> References:
    """Resolve the deployment, environments and datasets ``cfg`` names; ``InvalidInput`` naming the field."""
    deployment = Deployments(session).find(org_id, cfg.deployment)
    if deployment is None:
        raise InvalidInput(f"config field deployment: deployment {cfg.deployment!r} not found", param="deployment")
    source_envs: dict[int, ResolvedEnv] = {}
    datasets: dict[int, list[Dataset]] = {}
    licenses: dict[int, str] = {}
    want = _KIND_FOR[cfg.algorithm.kind]
    for i, src in enumerate(cfg.sources):
        if isinstance(src, GraderSource):
            source_envs[i] = _resolve(src.env, src.env_args, f"sources.{i}.env", session, blobs, org_id, cache)
            if source_envs[i].env.multi_turn:
                raise InvalidInput(f"config field sources.{i}.env: {src.env} is multi-turn; the loop grades "
                                   "single-turn traffic", param=f"sources.{i}.env")
        elif isinstance(src, ExpertsSource):
            _check_experts(session, org_id, src, i)
        elif isinstance(src, UpstreamSource):
            _check_upstream_source(cfg, deployment, src, i)
        elif isinstance(src, LabelsSource | DatasetSource):
            if isinstance(src, LabelsSource) and src.dataset is None:
                datasets[i] = [d for d in Datasets(session).label_datasets(org_id) if _fits(d.kind, want)]
                continue
            assert src.dataset is not None
            param = f"sources.{i}.dataset"
            try:
                ds, grant = Datasets(session).resolve_usable(org_id, src.dataset)
            except TeachloopError as err:
                why = explain_unusable(session, org_id, src.dataset)  # a bought dataset refunded: say so
                raise InvalidInput(f"config field {param}: {why or err}", param=param) from None
            if isinstance(src, LabelsSource) and ds.origin != "labels":
                raise InvalidInput(f"config field {param}: {ds.ref} is not a label dataset (import labels with "
                                   "`teachloop data import --kind labels`)", param=param)
            if not _fits(ds.kind, want):
                raise InvalidInput(f"config field {param}: {ds.ref} holds {ds.kind} rows; "
                                   f"{cfg.algorithm.kind} needs {want}", param=param)
            datasets[i] = [ds]
            if grant is not None:
                licenses[i] = grant.license
    gate_envs = [
        _resolve(g.env, g.env_args, f"gate.environments.{i}.env", session, blobs, org_id, cache)
        for i, g in enumerate(cfg.gate.environments)
    ]
    start = None  # issue 16: a candidate of this deployment's loop, in this organisation
    if cfg.algorithm.continue_from is not None:
        start = resolve_continue_from(session, org_id, deployment, cfg.algorithm.continue_from)
    return References(deployment, source_envs, gate_envs, datasets, licenses, continue_from=start)


def _check_upstream_source(cfg: LoopConfig, deployment: Deployment, src: UpstreamSource, index: int) -> None:
    """An ``upstream`` source needs a teacher (an upstream arm) and a local arm to distil into."""
    if cfg.algorithm.kind == "grpo":
        raise InvalidInput(f"config field sources.{index}.kind: an upstream source gives SFT rows or DPO pairs, "
                           "not GRPO prompts", param=f"sources.{index}.kind")
    if src.filter == "grader" and cfg.grader_source() is None:
        raise InvalidInput(f"config field sources.{index}.filter: grader needs a grader source to score the "
                           "traffic", param=f"sources.{index}.filter")
    teachers = (deployment.upstream_id, deployment.canary_upstream_id, deployment.shadow_upstream_id)
    if not any(teachers):
        raise InvalidInput(f"config field sources.{index}.kind: deployment {deployment.name!r} has no upstream arm "
                           "to distil from", param=f"sources.{index}.kind")
    if deployment.upstream_id and deployment.canary_upstream_id:
        raise InvalidInput(f"config field deployment: both arms of {deployment.name!r} are upstream, so there is no "
                           "local arm to distil into; make the canary an adapter (or end it)", param="deployment")


def _check_experts(session: Session, org_id: str, src: ExpertsSource, index: int) -> None:
    """The project an experts source names exists and can take single traces; ``InvalidInput`` naming the field."""
    from teachloop.store.repos.work import WorkQueue

    param = f"sources.{index}.project"
    try:
        project = WorkQueue(session).project(org_id, src.project)
    except TeachloopError as err:
        raise InvalidInput(f"config field {param}: {err}", param=param) from None
    if project.task_type not in ("demonstration", "correction", "rubric"):
        raise InvalidInput(f"config field {param}: {project.name} is a {project.task_type} project; the loop sends "
                           "single traces, for a demonstration, correction or rubric project", param=param)


def meter_bought_sources(session: Session, cfg: LoopConfig, refs: References, *, org_id: str,
                         detail: dict[str, Any] | None = None) -> int:
    """Check and meter one ``train`` use of each granted dataset the sources read, and one ``run`` of each
    bought environment the sources and the gate name (``catalog.usage``).

    Called once per iteration, in a write session, before the rows are read. Returns how many uses
    the installed gate metered (0 with no gate, or when no grant came from the marketplace);
    ``Forbidden`` naming the dataset when an entitlement was revoked -- then nothing is trained.
    """
    metered = 0
    for i in sorted(refs.licenses):  # the sources read under a grant (another organisation's datasets)
        src = cfg.sources[i]
        for ds in refs.datasets.get(i, []):
            label = getattr(src, "dataset", None) or ds.ref
            metered += meter_use(session, org_id, "dataset", ds.id, "train", label=label,
                                 detail={**(detail or {}), "source": i, "dataset": ds.ref, "digest": ds.digest})
    bought_envs = {e.bought: e for e in [*refs.source_envs.values(), *refs.gate_envs] if e.bought}
    for env in bought_envs.values():  # bought environments (OWNER/NAME@VERSION): one run per iteration
        metered += meter_env_run(session, org_id, env, detail=detail)
    return metered


def _fits(kind: str, want: str) -> bool:
    """Whether rows of ``kind`` serve an algorithm that trains on ``want`` rows (GRPO takes chat rows with answers)."""
    return kind == want or (want == "prompts" and kind == "chat")


__all__ = [
    "AlgorithmConfig",
    "BudgetConfig",
    "CurationConfig",
    "DatasetSource",
    "ExpertsSource",
    "FeedbackSource",
    "GateConfig",
    "GateEnv",
    "GraderSource",
    "LabelsSource",
    "LoopConfig",
    "PromotionConfig",
    "References",
    "Source",
    "TriggerConfig",
    "UpstreamSource",
    "check_references",
    "load_loop_config",
    "meter_bought_sources",
    "pinned",
    "training_dict",
    "validate_loop_config",
]

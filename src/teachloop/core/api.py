"""The REST API's wire models for runs, environments, evaluations and models (stdlib + pydantic only).

The routers in ``app/routes/`` (``runs``, ``envs``, ``evals``, ``models``)
take and return exactly these models, so ``/api/openapi.json`` documents every
field; ``teachloop.Client`` parses responses into the same classes. Request
models forbid unknown fields; response models ignore fields a newer server
adds, so an older client keeps working.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from teachloop.core.training import RewardHackAlarm


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# ---------------------------------------------------------------------------------------------- runs


class RunCreate(_Request):
    """A training run to queue on the worker."""

    config: dict[str, Any] = Field(description="The run's config: the fields of a `teachloop train` TOML file "
                                   "(name, algorithm, steps, lora, optim, rl, eval, ...) as JSON.")


class Run(_Response):
    """A training run's record."""

    id: str = Field(description="Run id (run_...).")
    name: str = Field(description="Run name from its config.")
    algorithm: str = Field(description="grpo, sft or dpo.")
    status: str = Field(description="queued, created, running, cancelling, completed, failed or cancelled.")
    base_model: str = Field(description="The base model it trains an adapter for.")
    step: int = Field(description="Optimizer steps done.")
    total_steps: int = Field(description="Optimizer steps in the config.")
    config: dict[str, Any] = Field(description="The validated config, every default filled in.")
    inputs: dict[str, Any] = Field(description="Pinned inputs (environment and dataset digests); empty until started.")
    last_checkpoint_step: int | None = Field(description="Step of the newest checkpoint (resume point).")
    has_adapter: bool = Field(description="Whether the final adapter is stored (the run can be deployed).")
    error: str | None = Field(description="Why it failed or was cancelled.")
    created_at: datetime = Field(description="When it was created.")
    finished_at: datetime | None = Field(description="When it completed, failed or was cancelled.")
    best_step: int | None = Field(default=None, description="Step of the best held-out evaluation after step 0.")
    best_score: float | None = Field(default=None, description="Its held-out score (eval.metric).")
    stop_reason: str | None = Field(default=None, description="Why it ended before its last step: early_stop or "
                                    "reward_hack_alarm.")
    alarm: RewardHackAlarm | None = Field(default=None, description="The reward-hack alarm it raised, if any "
                                          "(the loop never promotes such a run).")


class RunList(_Response):
    """Training runs, newest first."""

    data: list[Run] = Field(description="The runs.")


class MetricPoint(_Response):
    """The figures of one step."""

    step: int = Field(description="Optimizer step (eval rows at step 0 are the before-training evaluation).")
    phase: str = Field(description="train or eval.")
    values: dict[str, Any] = Field(description="Figures by name (reward_mean, loss, kl_ref, ...): numbers.")


class RunMetrics(_Response):
    """A run's metric time series in step order."""

    run_id: str = Field(description="The run.")
    data: list[MetricPoint] = Field(description="One row per (step, phase).")


class Checkpoint(_Response):
    """A stored checkpoint of a run (adapter + optimizer state)."""

    step: int = Field(description="The step it was taken after.")
    created_at: datetime = Field(description="When it was stored.")


class CheckpointList(_Response):
    """A run's checkpoints in step order."""

    run_id: str = Field(description="The run.")
    data: list[Checkpoint] = Field(description="The checkpoints.")


# ---------------------------------------------------------------------------------------------- environments


class InstalledEnv(_Response):
    """An environment installed on the server (built-in or a Python package's entry point)."""

    name: str = Field(description="What a config's rl.env names.")
    version: str | None = Field(description="Its package version, if any.")
    source: str = Field(description="builtin or the distribution it comes from.")
    target: str = Field(description="The module:attr it loads.")


class EnvVersion(_Response):
    """A published, immutable environment version of the organisation."""

    ref: str = Field(description="NAME@VERSION.")
    name: str = Field(description="Environment name.")
    version: str = Field(description="Semver version.")
    digest: str = Field(description="sha256: content digest of the package.")
    yanked: bool = Field(description="Yanked versions are refused by training and evaluation.")
    yank_reason: str | None = Field(description="Why it was yanked.")
    published_by: str = Field(description="Who published it (API key id or cli).")
    created_at: datetime = Field(description="When it was published.")


class EnvList(_Response):
    """Installed environments and the organisation's published versions."""

    installed: list[InstalledEnv] = Field(description="Environments installed on the server.")
    published: list[EnvVersion] = Field(description="The organisation's published versions.")


class EnvVersionList(_Response):
    """Published versions of one environment, newest first."""

    data: list[EnvVersion] = Field(description="The versions.")


class EvalResult(_Response):
    """A stored evaluation: mean reward with a 95% confidence interval."""

    id: str = Field(description="Result id (enve_...).")
    env_name: str = Field(description="Environment name (or the local reference evaluated).")
    env_version: str | None = Field(description="Published version, if it was one.")
    env_digest: str = Field(description="sha256: digest of exactly what was evaluated.")
    model: str = Field(description="The model (and adapter) evaluated.")
    n_tasks: int = Field(description="Tasks run.")
    n_episodes: int = Field(description="Episodes run.")
    mean: float = Field(description="Mean reward.")
    ci_low: float | None = Field(description="Lower bound of the 95% confidence interval.")
    ci_high: float | None = Field(description="Upper bound of the 95% confidence interval.")
    created_by: str = Field(description="Who ran it.")
    created_at: datetime = Field(description="When it was stored.")


class EvalResultList(_Response):
    """Stored evaluations, newest first."""

    data: list[EvalResult] = Field(description="The results.")


class EnvInfo(_Response):
    """One environment: identity, digest, manifest or description, and recent results."""

    ref: str = Field(description="The reference as resolved.")
    name: str = Field(description="Environment name.")
    version: str | None = Field(description="Published version, or null for an installed one.")
    digest: str = Field(description="sha256: content digest.")
    yanked: bool = Field(description="Whether this version is yanked.")
    yank_reason: str | None = Field(description="Why it was yanked.")
    manifest: dict[str, Any] | None = Field(description="A published version's manifest (checks, tasks, rewards).")
    description: dict[str, Any] | None = Field(description="An installed environment's self-description.")
    recent_evals: list[EvalResult] = Field(description="The newest stored evaluations of this digest.")
    checks: EnvCheck | None = Field(default=None, description="A published version's publish-time checks (null "
                                    "for an installed environment, or a version published before they were stored).")


class CheckOutcome(_Response):
    """The outcome of one check of ``teachloop env check``."""

    name: str = Field(description="The check.")
    status: str = Field(description="pass, warn, fail or skip.")
    message: str = Field(description="What it found.")


class EnvCheck(_Response):
    """The checks of one environment, run on the server."""

    target: str = Field(description="The reference checked.")
    ok: bool = Field(description="True when no check failed.")
    seconds: float = Field(description="How long the checks took.")
    results: list[CheckOutcome] = Field(description="Every check's outcome.")


class EnvPublished(_Response):
    """The outcome of publishing an environment package (``POST /api/envs``)."""

    created: bool = Field(description="False when this exact content was already published as this version: "
                          "nothing changed.")
    version: EnvVersion = Field(description="The published version.")
    checks: EnvCheck = Field(description="The publish-time checks just run on the package (all passed).")


class YankRequest(_Request):
    """Why a version is yanked."""

    reason: str | None = Field(default=None, max_length=500, description="Shown to anyone who resolves it.")


# ---------------------------------------------------------------------------------------------- evaluations


class EvalRequest(_Request):
    """An evaluation to run on the worker: N tasks of an environment against a model (and adapter)."""

    env: str = Field(min_length=1, max_length=300, description="Environment: a built-in or installed name, "
                     "NAME@VERSION of a published one, rg:... or vf:... (never a path).")
    env_args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the environment.")
    model: str | None = Field(default=None, max_length=300,
                              description="Base model name (default: the server's configured model).")
    adapter: str | None = Field(default=None, max_length=300,
                                description="Adapter version to evaluate: NAME@N, NAME (newest) or av_...")
    run: str | None = Field(default=None, max_length=64, description="Or: a completed training run's final adapter.")
    n: int = Field(default=50, ge=1, le=10_000, description="Tasks to run.")
    group_size: int = Field(default=1, ge=1, le=64, description="Episodes per task.")
    seed: int = Field(default=0, description="Task seed.")
    max_tokens: int | None = Field(default=None, ge=1, le=32_768,
                                   description="New tokens per model turn (default: the environment's).")
    temperature: float = Field(default=0.0, ge=0, le=5, description="Sampling temperature (0 = greedy).")

    @model_validator(mode="after")
    def _one_adapter(self) -> EvalRequest:
        if self.adapter is not None and self.run is not None:
            raise ValueError("give adapter or run, not both")
        return self


class Evaluation(_Response):
    """An evaluation started over the API: its job while it runs, its stored result when done."""

    id: str = Field(description="Evaluation id (the job's id, job_...).")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    request: EvalRequest = Field(description="What was asked.")
    result: EvalResult | None = Field(description="The stored result once it succeeded.")
    error: str | None = Field(description="Why it failed.")
    created_at: datetime = Field(description="When it was started.")
    finished_at: datetime | None = Field(description="When it ended.")


class EvaluationList(_Response):
    """Evaluations started over the API, newest first."""

    data: list[Evaluation] = Field(description="The evaluations.")


# ---------------------------------------------------------------------------------------------- models


class ModelEntry(_Response):
    """A base model in the server's model cache."""

    name: str = Field(description="What TEACHLOOP_MODEL, a run's model or a deployment's base_model names.")
    size_bytes: int = Field(description="Size on disk.")
    status: str = Field(description="ok, or what is wrong with the cached copy.")
    source: str = Field(description="Where it came from.")
    serving: bool = Field(description="Whether this server serves it now.")


class ModelList(_Response):
    """The server's cached base models."""

    data: list[ModelEntry] = Field(description="The models.")
    default: str = Field(description="The server's configured model (TEACHLOOP_MODEL).")


__all__ = [
    "CheckOutcome",
    "Checkpoint",
    "CheckpointList",
    "EnvCheck",
    "EnvInfo",
    "EnvList",
    "EnvPublished",
    "EnvVersion",
    "EnvVersionList",
    "EvalRequest",
    "EvalResult",
    "EvalResultList",
    "Evaluation",
    "EvaluationList",
    "InstalledEnv",
    "MetricPoint",
    "ModelEntry",
    "ModelList",
    "Run",
    "RunCreate",
    "RunList",
    "RunMetrics",
    "YankRequest",
]

"""Training run configuration: one validated model, from TOML plus ``--section.field value`` overrides.

A config file looks like::

    name = "arith-grpo"
    algorithm = "grpo"          # grpo | sft | dpo
    steps = 50

    [lora]
    rank = 16

    [optim]
    lr = 2e-4

    [rl]
    env = "arithmetic"
    env_args = { level = 2 }
    prompts_per_step = 4
    group_size = 8
    max_tokens = 32

    [eval]
    every = 10                  # held-out evaluation every 10 steps (best checkpoint, early stop)

    [alarm]                     # reward-hack alarm (train.watch)
    on_alarm = "stop"

    [report]                    # experiment trackers (train.report)
    to = ["tensorboard", "mlflow"]

Every field can also be set on the command line (``--rl.group_size 8``,
``--optim.lr=1e-4``, ``--steps 10``). Errors name the field and the allowed
values (``InvalidInput`` with ``param`` set to the dotted field path); cross-field checks
(``eval.every`` within the run, an alarm window its test can use) name their field too. This
module knows nothing about engines, stores or environments beyond their names.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from teachloop.core.errors import InvalidInput
from teachloop.core.settings import DEFAULT_MODEL
from teachloop.core.training import AdamParams, LoraSpec, LossConfig

#: The fewest training steps an alarm window may span (the slope t-test then has 2 degrees of freedom).
MIN_ALARM_STEPS = 4


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSection(_Section):
    """The LoRA adapter being trained."""

    rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(default=32.0, gt=0, description="LoRA alpha (update scaled by alpha/rank).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout.")
    attn: bool = Field(default=True, description="Adapt attention projections.")
    mlp: bool = Field(default=True, description="Adapt MLP projections.")
    unembed: bool = Field(default=False, description="Adapt the unembedding.")

    def spec(self, seed: int) -> LoraSpec:
        """As the engine's ``LoraSpec``."""
        return LoraSpec(rank=self.rank, alpha=self.alpha, dropout=self.dropout, train_attn=self.attn,
                        train_mlp=self.mlp, train_unembed=self.unembed, seed=seed)


class OptimSection(_Section):
    """AdamW and the learning-rate schedule."""

    lr: float = Field(default=1e-4, gt=0, description="Peak learning rate.")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="AdamW first-moment decay.")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="AdamW second-moment decay.")
    eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW decoupled weight decay.")
    grad_clip: float = Field(default=1.0, ge=0, description="Global grad-norm clip; 0 is off.")
    schedule: Literal["constant", "linear", "cosine"] = Field(default="constant", description="LR decay after warmup.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup steps from lr/warmup_steps to lr.")

    def at(self, step: int, total: int) -> AdamParams:
        """AdamW parameters for optimizer step ``step`` (0-based) of ``total``."""
        import math

        lr = self.lr
        if self.warmup_steps and step < self.warmup_steps:
            lr = self.lr * (step + 1) / self.warmup_steps
        elif self.schedule != "constant" and total > self.warmup_steps:
            frac = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
            lr = self.lr * (1 - frac if self.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac)))
        return AdamParams(learning_rate=lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                          weight_decay=self.weight_decay, grad_clip_norm=self.grad_clip)


class RLSection(_Section):
    """GRPO-family RL against an environment."""

    env: str = Field(description="Environment: a built-in or installed name, name@version, rg:..., or a path.")
    env_args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the environment.")
    task_seed: int = Field(default=0, description="Seed of the training task stream.")
    prompts_per_step: int = Field(default=4, ge=1, le=4096, description="Tasks (groups) per optimizer step.")
    group_size: int = Field(default=8, ge=2, le=1024, description="Completions per task.")
    max_tokens: int = Field(default=256, ge=1, description="New tokens per model turn at most.")
    temperature: float = Field(default=1.0, gt=0, le=5, description="Sampling temperature of the rollouts.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass of the rollouts.")
    loss: Literal["ppo", "importance_sampling", "cispo"] = Field(default="ppo", description="Policy loss.")
    clip_low: float | None = Field(default=None, ge=0, description="Lower ratio clip (loss default if unset).")
    clip_high: float | None = Field(default=None, ge=0, description="Upper ratio clip (loss default if unset).")
    kl_coef: float = Field(default=0.0, ge=0, description="k3 KL to the base model (adapter disabled).")
    advantage: Literal["grpo", "no_std"] = Field(
        default="grpo", description="grpo: (r - mean) / std per group; no_std: r - mean (Dr. GRPO)."
    )
    drop_zero_variance: bool = Field(default=True, description="Skip groups whose rewards are all equal.")
    extra_draws: int = Field(
        default=0, ge=0, le=16,
        description="Dynamic sampling (DAPO): while fewer than prompts_per_step of a step's groups have rewards that "
        "vary, roll out up to this many more batches of prompts_per_step tasks, then train on prompts_per_step "
        "groups, those that vary first (0: one draw per step).",
    )
    loss_agg: Literal["token_mean", "seq_mean"] = Field(
        default="token_mean", description="Normalise the loss per token of the batch, or per sequence."
    )
    overlap: bool = Field(
        default=False,
        description="Sample step t+1 from the pre-update adapter while step t trains (one step off-policy, "
        "IS-corrected; pipelining only, no wall-clock gain on one CPU engine).",
    )
    episode_timeout_s: float | None = Field(default=None, gt=0, description="Per-episode timeout.")
    merge_turns: bool = Field(
        default=True,
        description="Multi-turn: train an episode as one sequence of its sampled tokens where each turn's context "
        "extends the previous one token for token (else one sequence per turn).",
    )
    prefix_cache: bool = Field(
        default=True,
        description="Rollouts reuse the keys/values of prompt prefixes prefilled before under the same adapter "
        "version (the shared system prompt, the earlier turns of an episode): same samples up to float32 rounding.",
    )

    def loss_config(self) -> LossConfig:
        """As the engine's ``LossConfig``."""
        return LossConfig(clip_low=self.clip_low, clip_high=self.clip_high, kl_coef=self.kl_coef)


class DataSection(_Section):
    """Datasets for SFT (chat JSONL) and DPO (preference pairs JSONL)."""

    train: str = Field(description="Path of the training JSONL, or a catalog dataset: dataset:NAME@N (the "
                                   "organisation's) or dataset:OWNER/NAME@N (another's, under a grant or a purchase).")
    eval: str | None = Field(default=None, description="Held-out JSONL or dataset:REF; default: a holdout split of "
                                                       "train.")
    holdout_frac: float = Field(default=0.05, ge=0, lt=1, description="Held-out share of train when eval is unset.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Rows per optimizer step.")
    max_seq_len: int = Field(default=2048, ge=8, description="Rows longer than this (in tokens) are skipped.")
    max_skipped_frac: float = Field(default=0.05, ge=0, le=1, description="Refuse to start above this skip share.")
    train_on: Literal["last_assistant", "all_assistant"] = Field(
        default="all_assistant", description="SFT: loss on every assistant turn, or on the last one only."
    )
    dpo_beta: float = Field(default=0.1, gt=0, description="DPO beta.")


class EvalSection(_Section):
    """Held-out evaluation: before the first step, every ``every`` steps, and after the last.

    The held-out score (``metric``) picks the best checkpoint and drives early stopping
    (``train.watch``).
    """

    env: str | None = Field(default=None, description="Environment to evaluate on (default: rl.env for grpo).")
    env_args: dict[str, Any] | None = Field(default=None, description="Its arguments (default: rl.env_args).")
    tasks: int = Field(default=100, ge=0, description="Held-out tasks (0 disables environment eval).")
    seed: int = Field(default=1_000_003, description="Seed of the held-out task stream (disjoint from training).")
    max_tokens: int | None = Field(default=None, ge=1, description="New tokens per turn (default: rl.max_tokens).")
    every: int | None = Field(
        default=None, ge=0,
        description="Also evaluate every N steps; 0: before and after only; unset: steps // 5 for grpo with a "
        "held-out environment and at least 10 steps, else 0.",
    )
    metric: str | None = Field(
        default=None,
        description="Held-out figure that ranks checkpoints (default: reward_mean, heldout_nll for sft, "
        "heldout_dpo_loss for dpo; *_nll and *_loss are minimised).",
    )
    keep_best: bool = Field(
        default=True,
        description="Keep the checkpoint with the best held-out score (after step 0) as the final adapter.",
    )
    patience: int = Field(
        default=0, ge=0, description="Stop early after N evaluations without improving by more than min_delta "
        "(0: never).",
    )
    min_delta: float = Field(default=0.0, ge=0, description="The smallest held-out improvement that counts.")


class AlarmSection(_Section):
    """The reward-hack alarm: training reward rising while held-out reward falls beyond noise.

    Over a window of ``window`` held-out evaluations, the alarm fires when both one-sided tests pass
    at ``alpha``: an OLS slope t-test says the per-step training reward rose, and a paired t-test on
    per-task held-out rewards (first vs last evaluation of the window, same tasks) says held-out
    reward fell, by at least ``min_drop`` (see ``train.watch``).
    """

    enabled: bool | None = Field(
        default=None,
        description="Raise the alarm (unset: on for grpo with a held-out environment when the window fits the run).",
    )
    window: int = Field(default=3, ge=1, description="Held-out evaluations in the window (>= 2; the window's "
                        "training steps, (window - 1) * eval.every, must be >= 4).")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Significance level of each one-sided test.")
    min_drop: float = Field(default=0.02, ge=0, description="The smallest held-out drop that raises the alarm.")
    on_alarm: Literal["stop", "continue"] = Field(default="stop", description="Stop the run, or record and go on.")


#: The experiment trackers a run can report to, with the extra that installs each.
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


class ReportSection(_Section):
    """Experiment trackers the run reports its config and metrics to (``train.report``)."""

    to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=list, description="Trackers: tensorboard, mlflow (file store), wandb (offline), trackio.",
    )
    dir: str = Field(default="teachloop-reports", min_length=1,
                     description="Folder the trackers write under (one subfolder each).")
    project: str = Field(default="teachloop", min_length=1, max_length=200,
                         description="Project / experiment name in the trackers.")


class TrainConfig(BaseModel):
    """A whole training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="run", min_length=1, max_length=200, description="Run name (shown in runs list).")
    algorithm: Literal["grpo", "sft", "dpo"] = Field(description="Training algorithm.")
    model: str = Field(default=DEFAULT_MODEL, description="Base model (cached name, folder or hub id).")
    seed: int = Field(default=0, description="Seed of adapter init, data order and sampling.")
    steps: int = Field(default=100, ge=1, le=10_000_000, description="Optimizer steps.")
    checkpoint_every: int = Field(default=10, ge=0, description="Checkpoint every N steps (0: only at the end).")
    low_memory: bool = Field(
        default=False,
        description=(
            "Recompute each layer's activations in the backward pass (much less memory, ~1 more forward) "
            "and keep one copy of the base weights (the engine's default too: pack='dense')."
        ),
    )
    lora: LoraSection = Field(default_factory=LoraSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    rl: RLSection | None = None
    data: DataSection | None = None
    eval: EvalSection = Field(default_factory=EvalSection)
    alarm: AlarmSection = Field(default_factory=AlarmSection)
    report: ReportSection = Field(default_factory=ReportSection)

    @model_validator(mode="after")
    def _sections_fit_algorithm(self) -> TrainConfig:
        if self.algorithm == "grpo" and self.rl is None:
            raise ValueError("algorithm 'grpo' needs an [rl] section with rl.env")
        if self.algorithm in ("sft", "dpo") and self.data is None:
            raise ValueError(f"algorithm {self.algorithm!r} needs a [data] section with data.train")
        self._watch_fits_run()
        return self

    def _watch_fits_run(self) -> None:
        """Refuse an eval interval larger than the run and an alarm window too short for its test."""
        if self.eval.every is not None and self.eval.every > self.steps:
            raise InvalidInput(f"eval.every {self.eval.every} is larger than the run ({self.steps} steps); "
                               f"use at most {self.steps}, or 0 to evaluate before and after only", param="eval.every")
        if self.alarm.enabled:
            every, w = self.eval_every(), self.alarm.window
            if self.algorithm != "grpo" or self.eval_env() is None:
                raise InvalidInput("alarm.enabled needs a training reward and a held-out reward: algorithm grpo "
                                   "with eval.tasks > 0", param="alarm.enabled")
            if every == 0:
                raise InvalidInput("alarm.enabled needs held-out evaluations during the run; set eval.every",
                                   param="eval.every")
            if w < 2 or (w - 1) * every < MIN_ALARM_STEPS:
                raise InvalidInput(
                    f"alarm.window {w} is too short for the alarm's test: it needs >= 2 evaluations spanning "
                    f">= {MIN_ALARM_STEPS} training steps ((window - 1) * eval.every = {(w - 1) * every}); "
                    f"raise alarm.window or eval.every", param="alarm.window")
            if (w - 1) * every > self.steps:
                raise InvalidInput(f"alarm.window {w} spans {(w - 1) * every} steps, longer than the run "
                                   f"({self.steps} steps)", param="alarm.window")

    def eval_every(self) -> int:
        """Evaluate every N steps (0: before and after only), the default resolved (see ``EvalSection.every``)."""
        if self.eval.every is not None:
            return self.eval.every
        if self.algorithm == "grpo" and self.eval_env() is not None and self.steps >= 10:
            return self.steps // 5
        return 0

    def alarm_on(self) -> bool:
        """Whether the reward-hack alarm watches this run (the default resolved; see ``AlarmSection.enabled``)."""
        if self.alarm.enabled is not None:
            return self.alarm.enabled
        every, w = self.eval_every(), self.alarm.window
        return (self.algorithm == "grpo" and self.eval_env() is not None and every > 0 and w >= 2
                and MIN_ALARM_STEPS <= (w - 1) * every <= self.steps)

    def eval_env(self) -> tuple[str, dict[str, Any]] | None:
        """The environment of the held-out evaluation, if any."""
        if self.eval.tasks == 0:
            return None
        if self.eval.env is not None:
            return self.eval.env, dict(self.eval.env_args or {})
        if self.rl is not None:
            return self.rl.env, dict(self.eval.env_args if self.eval.env_args is not None else self.rl.env_args)
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what the run record stores)."""
        return json.loads(self.model_dump_json())


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InvalidInput(f"--{dotted}: {p} is not a section", param=dotted)
    node[parts[-1]] = value


def _parse_value(raw: str) -> Any:
    """A flag value: TOML scalar/inline table/array syntax when it parses, else the plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_command_line(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split ``args`` into positional arguments and nested overrides, in any order.

    ``["--steps", "3", "cfg.toml", "--optim.lr=1e-4"]`` -> ``(["cfg.toml"], {"steps": 3, "optim": {"lr": 1e-4}})``.
    Every ``--section.field`` takes exactly one value (the next argument, or ``=VALUE``), so a
    positional argument is never mistaken for a value, wherever it stands.
    """
    positional: list[str] = []
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            positional.append(arg)
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        if not key or key.startswith(".") or key.endswith(".") or ".." in key:
            raise InvalidInput(f"bad option {arg!r}; overrides look like --section.field VALUE", param=arg)
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise InvalidInput(f"--{key} needs a value (--{key} VALUE or --{key}=VALUE)", param=key)
            value = args[i + 1]
            i += 1
        _set_path(out, key.replace("-", "_"), _parse_value(value))
        i += 1
    return positional, out


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--rl.group_size", "8", "--optim.lr=1e-4"]`` -> nested dict of overrides (no positional arguments)."""
    positional, out = parse_command_line(args)
    if positional:
        raise InvalidInput(
            f"unexpected argument {positional[0]!r}; overrides look like --section.field VALUE", param=positional[0]
        )
    return out


def field_reference() -> list[tuple[str, str, str]]:
    """Every settable field as ``(flag, type, description)``, sections in config order (for ``--help``)."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            sub = _SECTIONS.get(name) if not prefix else None
            if sub is not None:
                walk(sub, f"{name}.")
                continue
            kind = _type_name(info.annotation)
            default = "" if info.is_required() else f" (default: {_default_text(info)})"
            rows.append((f"--{prefix}{name}", kind, f"{info.description or ''}{default}"))

    walk(TrainConfig, "")
    return rows


def _type_name(annotation: Any) -> str:
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return "|".join(str(a) for a in args)
    if args and typing.get_origin(annotation) is not dict:  # X | None
        return _type_name(args[0])
    if annotation is bool:
        return "true|false"
    if typing.get_origin(annotation) is dict or annotation is dict:
        return "TABLE"
    return getattr(annotation, "__name__", str(annotation)).upper()


def _default_text(info: Any) -> str:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{}"
    return "unset" if value is None else str(value)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read ``path`` (TOML) and apply ``overrides``; errors name the field and what is allowed."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InvalidInput(f"config file {path} does not exist", param="config") from None
        except tomllib.TOMLDecodeError as err:
            raise InvalidInput(f"{path} is not valid TOML: {err}", param="config") from None
    return validate_config(_merge(raw, overrides or {}))


def validate_config(raw: dict[str, Any]) -> TrainConfig:
    """A ``TrainConfig`` from a plain dict, with field-naming errors."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "config"
        msg = first["msg"]
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidInput) and cause.param:  # a cross-field check that names its field
            raise InvalidInput(f"config field {cause.param}: {cause.message}", param=cause.param) from None
        if first["type"] == "extra_forbidden":
            section = _section_of(first["loc"])
            allowed = ", ".join(sorted(section.model_fields)) if section else ""
            msg = f"unknown field; allowed here: {allowed}"
        raise InvalidInput(f"config field {loc}: {msg}", param=loc) from None


_SECTIONS: dict[str, type[BaseModel]] = {
    "lora": LoraSection, "optim": OptimSection, "rl": RLSection, "data": DataSection, "eval": EvalSection,
    "alarm": AlarmSection, "report": ReportSection,
}


def _section_of(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    if len(loc) == 1:
        return TrainConfig
    return _SECTIONS.get(str(loc[0]))


__all__ = [
    "MIN_ALARM_STEPS",
    "TRACKERS",
    "AlarmSection",
    "DataSection",
    "EvalSection",
    "LoraSection",
    "OptimSection",
    "RLSection",
    "ReportSection",
    "TrainConfig",
    "field_reference",
    "load_config",
    "parse_command_line",
    "parse_overrides",
    "validate_config",
]

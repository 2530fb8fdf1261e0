"""teachloop.train (layer L3): SFT, DPO and GRPO-family RL on LoRA adapters, as recorded, resumable runs.

``TrainConfig`` (TOML + flag overrides) describes a run; ``Trainer`` pins its
inputs by digest, runs it through an ``Engine``, evaluates before and after,
checkpoints into the blob store and resumes from the last checkpoint.
``prepare_inputs`` runs every input check before an engine exists.
``GRPO``, ``SFT`` and ``DPO`` are the algorithms; ``advantages``, ``data``,
``metrics`` and ``plot`` their helpers; ``watch`` judges held-out evaluations (best checkpoint,
early stopping, reward-hack alarm) and ``report`` sends figures to experiment trackers. Imports engine, envs, render and store; never serve.
"""

from teachloop.catalog.envref import ResolvedEnv, resolve_env
from teachloop.train.advantages import assign, group_advantages, has_variance
from teachloop.train.config import (
    AlarmSection,
    DataSection,
    EvalSection,
    LoraSection,
    OptimSection,
    ReportSection,
    RLSection,
    TrainConfig,
    field_reference,
    load_config,
    parse_command_line,
    parse_overrides,
    validate_config,
)
from teachloop.train.data import Example, LoadedData, batch_for_step, load_dpo, load_sft, split_holdout
from teachloop.train.grpo import GRPO, build_batch
from teachloop.train.metrics import POLICY_METRICS, policy_metrics
from teachloop.train.plot import sparkline, svg_plot
from teachloop.train.report import Reporters, check_trackers, open_reporters
from teachloop.train.runs import RunInfo, RunStore
from teachloop.train.supervised import DPO, SFT
from teachloop.train.trainer import Prepared, Trainer, TrainerDeps, prepare_inputs, verify_pinned
from teachloop.train.watch import Verdict, Watch

__all__ = [
    "DPO",
    "GRPO",
    "POLICY_METRICS",
    "SFT",
    "AlarmSection",
    "DataSection",
    "EvalSection",
    "Example",
    "LoadedData",
    "LoraSection",
    "OptimSection",
    "Prepared",
    "RLSection",
    "ReportSection",
    "Reporters",
    "ResolvedEnv",
    "RunInfo",
    "RunStore",
    "TrainConfig",
    "Trainer",
    "TrainerDeps",
    "Verdict",
    "Watch",
    "assign",
    "batch_for_step",
    "build_batch",
    "check_trackers",
    "field_reference",
    "group_advantages",
    "has_variance",
    "load_config",
    "load_dpo",
    "load_sft",
    "open_reporters",
    "parse_command_line",
    "parse_overrides",
    "policy_metrics",
    "prepare_inputs",
    "resolve_env",
    "sparkline",
    "split_holdout",
    "svg_plot",
    "validate_config",
    "verify_pinned",
]

"""teachloop.train (layer L3): SFT, DPO and GRPO-family RL on LoRA adapters, as recorded, resumable runs.

``TrainConfig`` (TOML + flag overrides) describes a run; ``Trainer`` pins its
inputs by digest, runs it through an ``Engine``, evaluates before and after,
checkpoints into the blob store and resumes from the last checkpoint.
``prepare_inputs`` runs every input check before an engine exists.
``GRPO``, ``SFT`` and ``DPO`` are the algorithms; ``advantages``, ``data``,
``metrics`` and ``plot`` their helpers. Imports engine, envs, render and store; never serve.
"""

from teachloop.catalog.envref import ResolvedEnv, resolve_env
from teachloop.train.advantages import assign, group_advantages, has_variance
from teachloop.train.config import (
    DataSection,
    EvalSection,
    LoraSection,
    OptimSection,
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
from teachloop.train.runs import RunInfo, RunStore
from teachloop.train.supervised import DPO, SFT
from teachloop.train.trainer import Prepared, Trainer, TrainerDeps, prepare_inputs, verify_pinned

__all__ = [
    "DPO",
    "GRPO",
    "POLICY_METRICS",
    "SFT",
    "DataSection",
    "EvalSection",
    "Example",
    "LoadedData",
    "LoraSection",
    "OptimSection",
    "Prepared",
    "RLSection",
    "ResolvedEnv",
    "RunInfo",
    "RunStore",
    "TrainConfig",
    "Trainer",
    "TrainerDeps",
    "assign",
    "batch_for_step",
    "build_batch",
    "field_reference",
    "group_advantages",
    "has_variance",
    "load_config",
    "load_dpo",
    "load_sft",
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

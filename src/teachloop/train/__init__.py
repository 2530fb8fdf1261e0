"""teachloop.train (layer L3): SFT, DPO and GRPO-family RL on LoRA adapters, as recorded, resumable runs.

``TrainConfig`` (TOML + flag overrides) describes a run; ``Trainer`` pins its
inputs by digest, runs it through an ``Engine``, evaluates before and after,
checkpoints into the blob store and resumes from the last checkpoint.
``GRPO``, ``SFT`` and ``DPO`` are the algorithms; ``advantages``, ``data`` and
``plot`` their helpers. Imports engine, envs, render and store; never serve.
"""

from teachloop.train.advantages import assign, group_advantages, has_variance
from teachloop.train.config import (
    DataSection,
    EvalSection,
    LoraSection,
    OptimSection,
    RLSection,
    TrainConfig,
    load_config,
    parse_overrides,
    validate_config,
)
from teachloop.train.data import Example, LoadedData, batch_for_step, load_dpo, load_sft, split_holdout
from teachloop.train.envref import ResolvedEnv, resolve_env
from teachloop.train.grpo import GRPO, build_batch
from teachloop.train.plot import sparkline, svg_plot
from teachloop.train.runs import RunInfo, RunStore
from teachloop.train.supervised import DPO, SFT
from teachloop.train.trainer import Prepared, Trainer, TrainerDeps

__all__ = [
    "DPO",
    "GRPO",
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
    "group_advantages",
    "has_variance",
    "load_config",
    "load_dpo",
    "load_sft",
    "parse_overrides",
    "resolve_env",
    "sparkline",
    "split_holdout",
    "svg_plot",
    "validate_config",
]

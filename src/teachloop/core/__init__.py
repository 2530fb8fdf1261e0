"""teachloop.core -- domain types, ids, errors and settings (layer L0).

Depends only on the standard library and pydantic; every other package
imports from here and nothing here imports them.
"""

from teachloop.core.chat import Message, Role, ToolCall, ToolSpec
from teachloop.core.errors import (
    ConfigurationError,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    ModelError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TeachloopError,
    Unauthorized,
)
from teachloop.core.ids import is_id, new_id
from teachloop.core.rl import (
    ChatCompleter,
    Completion,
    Failure,
    FailureKind,
    ModelTurn,
    Task,
    Trajectory,
    TrajectoryGroup,
    content_hash,
)
from teachloop.core.sampling import SampledSequence, SamplingParams, StopReason
from teachloop.core.settings import DEFAULT_MODEL, SETTINGS, Settings
from teachloop.core.tenancy import Principal
from teachloop.core.tenancy import Role as MemberRole
from teachloop.core.training import (
    LOSS_FNS,
    RL_LOSSES,
    AdamParams,
    Datum,
    ForwardBackwardResult,
    LoraSpec,
    LoraTarget,
    LossConfig,
    LossFn,
    OptimStepResult,
)

__all__ = [
    "DEFAULT_MODEL",
    "LOSS_FNS",
    "RL_LOSSES",
    "SETTINGS",
    "AdamParams",
    "ChatCompleter",
    "Completion",
    "ConfigurationError",
    "Conflict",
    "Datum",
    "Failure",
    "FailureKind",
    "Forbidden",
    "ForwardBackwardResult",
    "Gone",
    "InvalidInput",
    "LoraSpec",
    "LoraTarget",
    "LossConfig",
    "LossFn",
    "MemberRole",
    "Message",
    "ModelError",
    "ModelTurn",
    "NotFound",
    "OptimStepResult",
    "PayloadTooLarge",
    "Principal",
    "Role",
    "SampledSequence",
    "SamplingParams",
    "ServiceUnavailable",
    "Settings",
    "StopReason",
    "Task",
    "TeachloopError",
    "ToolCall",
    "ToolSpec",
    "Trajectory",
    "TrajectoryGroup",
    "Unauthorized",
    "content_hash",
    "is_id",
    "new_id",
]

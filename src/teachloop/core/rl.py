"""Tasks, trajectories and the completer protocol: what environments exchange with trainers.

An environment turns a ``Task`` into a ``Trajectory`` by conversing with a
``ChatCompleter`` (the engine through a renderer, or any OpenAI-compatible
endpoint). When the completer is the engine, every model turn keeps its token
ids and sampler logprobs in ``ModelTurn`` so training never re-tokenises.
A failure inside an environment or grader is data (``Failure``) on that
trajectory; it never cancels the rest of a group.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.chat import Message, ToolSpec
from teachloop.core.sampling import SamplingParams, StopReason

FailureKind = Literal["env", "grader", "model", "timeout", "tool", "parse", "budget"]


def content_hash(payload: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``payload`` (sorted keys, no spaces)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


class Task(BaseModel):
    """One task an environment poses.

    ``hash`` is the content hash of everything but ``id``; two tasks with the
    same content have the same hash whatever their id.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Stable id of the task within its source (e.g. 'arith-3-17').")
    prompt: tuple[Message, ...] = Field(description="Messages the episode starts from.")
    answer: str | None = Field(default=None, description="Reference answer, when the task has one.")
    tools: tuple[ToolSpec, ...] = Field(default=(), description="Tools offered to the model.")
    info: dict[str, Any] = Field(default_factory=dict, description="Anything graders need (schema, target, ...).")

    @property
    def hash(self) -> str:
        """Content hash of the task (prompt, answer, tools, info)."""
        return content_hash(
            {
                "prompt": [m.model_dump(mode="json") for m in self.prompt],
                "answer": self.answer,
                "tools": [t.model_dump(mode="json") for t in self.tools],
                "info": self.info,
            }
        )


class ModelTurn(BaseModel):
    """Token-level record of one model turn, when the completer is the engine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: tuple[int, ...] = Field(description="The full context the model saw for this turn.")
    tokens: tuple[int, ...] = Field(description="The sampled completion tokens.")
    logprobs: tuple[float, ...] = Field(description="Sampler logprob of each completion token.")
    stop_reason: StopReason = Field(description="Why sampling ended.")


class Failure(BaseModel):
    """A failure recorded on a trajectory instead of raised."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FailureKind = Field(description="Where it happened: env, grader, model, timeout, tool, parse, budget.")
    message: str = Field(description="What happened, e.g. the exception's type and text.")


class Trajectory(BaseModel):
    """One episode: the conversation, its token-level turns and its reward."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str = Field(description="Id of the task this episode ran.")
    task_hash: str = Field(description="Content hash of that task.")
    messages: tuple[Message, ...] = Field(description="The whole conversation, prompt included.")
    turns: tuple[ModelTurn, ...] = Field(default=(), description="Token-level model turns (engine only).")
    reward: float = Field(default=0.0, description="Final scalar reward.")
    scores: dict[str, float] = Field(default_factory=dict, description="Per-grader component scores.")
    failure: Failure | None = Field(default=None, description="Set when the episode or its grading failed.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form episode facts (turns, tool calls).")

    @property
    def completion(self) -> str:
        """Text of the last assistant message ('' if none)."""
        for m in reversed(self.messages):
            if m.role == "assistant":
                return m.content
        return ""


class TrajectoryGroup(BaseModel):
    """All episodes sampled for one task (GRPO's group)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task = Field(description="The task the group shares.")
    trajectories: tuple[Trajectory, ...] = Field(description="The episodes.")

    @property
    def rewards(self) -> list[float]:
        """Rewards of the episodes, in order."""
        return [t.reward for t in self.trajectories]


class Completion(BaseModel):
    """One reply from a ``ChatCompleter``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: Message = Field(description="The assistant message, tool calls parsed.")
    turn: ModelTurn | None = Field(default=None, description="Token-level record when the backend has one.")


@runtime_checkable
class ChatCompleter(Protocol):
    """Anything that answers chat messages: the engine behind a renderer, or an HTTP endpoint."""

    async def complete(
        self,
        messages: list[Message],
        params: SamplingParams,
        *,
        n: int = 1,
        tools: list[ToolSpec] | None = None,
    ) -> list[Completion]:
        """``n`` replies to ``messages``."""
        ...


__all__ = [
    "ChatCompleter",
    "Completion",
    "Failure",
    "FailureKind",
    "ModelTurn",
    "Task",
    "Trajectory",
    "TrajectoryGroup",
    "content_hash",
]

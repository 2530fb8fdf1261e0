"""The loop's states and its iterations' JSON records, typed (stdlib + pydantic only).

``LoopPhase``, ``IterationStatus`` and ``IterationStage`` are ``StrEnum``s:
their values are what the database columns hold, so a member compares equal
to the stored string and old rows read unchanged. ``CanaryRecord`` (an
iteration's ``canary`` column), ``Revisions`` (its ``revisions`` column)
and ``GateSample`` (a suite's ``sample`` entry in its ``gate`` record) are
frozen pydantic models; the loop repository converts them at its
boundary (``store.repos.loops``), so no code reads or writes their keys as
bare strings. Unset fields are left out of the stored JSON.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class LoopPhase(StrEnum):
    """Where a deployment's loop stands (``loops.phase``)."""

    IDLE = "idle"
    """Waiting for its trigger; no candidate serves."""
    CANARY = "canary"
    """A candidate serves part of the traffic; nothing else happens until it is judged."""
    WATCH = "watch"
    """The deployed version was promoted by the loop and is watched while it serves; the trigger still runs."""


class IterationStatus(StrEnum):
    """The outcome (or state) of one loop iteration (``loop_iterations.status``)."""

    RUNNING = "running"
    """Snapshotting, training or gating now."""
    SKIPPED = "skipped"
    """Ended before training: too few usable examples, or nothing to do."""
    FAILED = "failed"
    """A stage raised (or the iteration was interrupted); the deployment is unchanged."""
    REJECTED = "rejected"
    """The eval gate found the candidate no better than the deployed version."""
    CANARY = "canary"
    """The candidate serves the canary share of the traffic."""
    PROMOTED = "promoted"
    """The candidate serves everyone (and is watched while it serves)."""
    ROLLED_BACK = "rolled_back"
    """The candidate did worse online; the deployment went back to the revision before it."""
    SUPERSEDED = "superseded"
    """The deployment was changed outside the loop during the canary; left as it is."""


class IterationStage(StrEnum):
    """How far an iteration got (``loop_iterations.stage``)."""

    DATA = "data"
    """Collecting, curating and snapshotting the examples."""
    TRAIN = "train"
    """Training the candidate adapter."""
    GATE = "gate"
    """Evaluating the candidate against the deployed version."""
    PROMOTE = "promote"
    """Publishing the candidate and starting its canary (named in failures; not stored)."""
    CANARY = "canary"
    """The candidate serves the canary share; waiting for enough online figures."""
    WATCH = "watch"
    """Promoted, and watched for a drop while it serves."""
    DONE = "done"
    """Finished; ``status`` says how."""


class OnlineSummary(BaseModel):
    """Online figures of one slice of traffic, as stored in a ``CanaryRecord``."""

    model_config = ConfigDict(frozen=True)

    requests: int = Field(description="Traces served in the slice.")
    graded: int = Field(description="Traces with a grader score.")
    grader_mean: float | None = Field(default=None, description="Mean grader score (None without any).")
    feedback: int = Field(description="Feedback rows with a score.")
    feedback_mean: float | None = Field(default=None, description="Mean feedback score (None without any).")


class Judgement(BaseModel):
    """One comparison of a candidate's online figures with its baseline's."""

    model_config = ConfigDict(frozen=True)

    baseline: OnlineSummary = Field(description="The previous version's figures.")
    candidate: OnlineSummary = Field(description="The candidate's figures.")
    verdict: str = Field(description="Why the loop waited, promoted or rolled back.")
    at: datetime | None = Field(default=None, description="When the figures were taken (watch judgements).")


class CanaryRecord(BaseModel):
    """An iteration's ``canary`` column: the canary and, once promoted, the watch."""

    model_config = ConfigDict(frozen=True)

    started_at: datetime | None = Field(default=None, description="When the candidate started serving the canary.")
    percent: float | None = Field(default=None, description="The canary's share of the traffic, in percent.")
    canary: Judgement | None = Field(default=None, description="The latest judgement of the canary.")
    promoted_at: datetime | None = Field(default=None, description="When the candidate was promoted to everyone.")
    watch: Judgement | None = Field(default=None, description="The latest judgement while watched after promotion.")


class Revisions(BaseModel):
    """An iteration's ``revisions`` column: the deployment revisions it saw and wrote."""

    model_config = ConfigDict(frozen=True)

    before: int | None = Field(default=None, description="The deployment's revision when the iteration started.")
    canary: int | None = Field(default=None, description="The revision that started the canary.")
    promoted: int | None = Field(default=None, description="The revision that promoted the candidate.")
    rolled_back: int | None = Field(default=None, description="The revision that rolled the candidate back.")


class GateSample(BaseModel):
    """Where one gate suite's tasks came from: a slice of an environment's held-out task stream.

    Stored as the ``sample`` entry of a suite in an iteration's ``gate`` record (``loop.gate.stream_slice``
    writes it); a suite of holdout rows has none.
    """

    model_config = ConfigDict(frozen=True)

    seed: int = Field(description="The seed of the environment's task stream.")
    offset: int = Field(ge=0, description="Position of the slice's first task in the stream.")
    tasks: int = Field(ge=0, description="Tasks in the slice (fewer than asked when a finite stream ran out).")
    fresh: bool = Field(description="A slice of its own per iteration (gate.fresh_tasks), else the stream's head.")
    task_ids: list[str] = Field(default_factory=list, description="The slice's task ids, in stream order.")
    repeated_prompts: int = Field(ge=0, description="Tasks of the slice whose prompt occurred earlier in the stream.")

    @classmethod
    def of(cls, raw: object) -> GateSample | None:
        """A stored ``sample`` entry as a record; None when absent or not a sample record (older rows)."""
        if not isinstance(raw, dict):
            return None
        try:
            return cls.model_validate(raw)
        except ValueError:  # pydantic's ValidationError is a ValueError
            return None

    def describe(self) -> str:
        """The slice in one line, e.g. ``fresh slice: offset 64, 64 tasks, 3 repeated prompts``."""
        return (f"{'fresh' if self.fresh else 'fixed'} slice: offset {self.offset}, {self.tasks} "
                f"task{'' if self.tasks == 1 else 's'}, {self.repeated_prompts} repeated "
                f"prompt{'' if self.repeated_prompts == 1 else 's'}")


__all__ = ["CanaryRecord", "GateSample", "IterationStage", "IterationStatus", "Judgement", "LoopPhase",
           "OnlineSummary", "Revisions"]

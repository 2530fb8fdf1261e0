"""The expert workforce's wire and domain types: projects, templates, items, tasks, answers, quality, pay.

A project has one ``TaskType``; its items carry a ``payload`` (``ItemIn``) and an expert's
answer a ``value`` whose shape depends on the type:

==============  ==========================================  ======================================
task type       item payload needs                          answer value
==============  ==========================================  ======================================
demonstration   ``prompt``                                  ``{"reply": str}`` (the ideal reply)
pairwise        ``prompt``, two ``candidates``              ``{"choice": candidate id}``
ranked          ``prompt``, two or more ``candidates``      ``{"order": [candidate ids, best first]}``
rubric          ``prompt``, ``reply`` (the reply graded)    ``{"scores": {criterion id: int}}``
correction      ``prompt``, ``reply`` (the model's reply)   ``{"reply": str}`` (the corrected reply)
authoring       (``prompt`` optional: a brief)              ``{"prompt", "answer", "rubric": [str]}``
==============  ==========================================  ======================================

Every text an expert or owner writes is stored exactly as given (HTML and script included) and
must be shown escaped. Money is integer minor units of the project's ``currency``. This module
is pure: stdlib and pydantic only.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from teachloop.core.money import MAX_MINOR


class TaskType(StrEnum):
    """What an expert does with an item."""

    DEMONSTRATION = "demonstration"
    PAIRWISE = "pairwise"
    RANKED = "ranked"
    RUBRIC = "rubric"
    CORRECTION = "correction"
    AUTHORING = "authoring"


#: Task types whose answers can be scored against a gold answer (and aggregated categorically).
SCORABLE = frozenset({TaskType.PAIRWISE, TaskType.RANKED, TaskType.RUBRIC})


class AnswerStatus(StrEnum):
    """submitted -> accepted | fixed | rejected (by a reviewer; gold answers are accepted automatically)."""

    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    FIXED = "fixed"
    REJECTED = "rejected"


class ReviewDecision(StrEnum):
    """A reviewer's verdict on one answer."""

    ACCEPT = "accept"
    FIX = "fix"
    REJECT = "reject"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Criterion(_Strict):
    """One rubric criterion: an integer scale ``low``..``high`` with a description."""

    id: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.-]+$", description="Criterion id.")
    description: str = Field(min_length=1, max_length=2000, description="What the grader judges.")
    low: int = Field(default=1, ge=0, le=100, description="Lowest score on the scale.")
    high: int = Field(default=5, ge=1, le=100, description="Highest score on the scale.")
    anchors: dict[str, str] = Field(default_factory=dict, description="Score -> what it means (optional).")


class TemplateSpec(_Strict):
    """One version of a task template: what the expert reads and the rules answers must follow."""

    instructions: str = Field(default="", max_length=20_000, description="Guidelines shown with every task.")
    criteria: list[Criterion] = Field(default_factory=list, max_length=30,
                                      description="Rubric criteria (rubric projects; optional rubric of authoring).")
    allow_unchanged: bool = Field(default=False, description="Correction: accept a reply identical to the model's.")
    max_chars: int = Field(default=20_000, ge=1, le=200_000, description="Longest text an answer may hold.")


class ProjectSettings(_Strict):
    """How a project runs: quorum, gold, leases, quality thresholds, pay."""

    quorum: int = Field(default=3, ge=1, le=20, description="Accepted answers each item needs.")
    gold_share: float = Field(default=0.1, ge=0, le=0.5, description="Share of each expert's queue that is gold.")
    lease_seconds: int = Field(default=900, ge=30, le=86_400, description="How long a task is held by one expert.")
    show_suggestions: bool = Field(default=False, description="Show items' model suggestions to experts.")
    skill: str | None = Field(default=None, max_length=100, description="Skill whose exam gates the project.")
    pay_mode: Literal["task", "minute"] = Field(default="task", description="Pay per accepted task or per active minute.")
    rate: int = Field(default=0, ge=0, le=MAX_MINOR, description="Minor units per accepted task or active minute.")
    currency: str = Field(default="USD", min_length=3, max_length=3)
    min_hourly: int = Field(default=0, ge=0, le=MAX_MINOR,
                            description="Minimum effective hourly rate (minor units), topped up at period close.")
    review_window_s: int = Field(default=7 * 86_400, ge=0, le=365 * 86_400,
                                 description="Seconds accepted earnings stay pending before they become payable.")
    pause_below: float = Field(default=0.3, ge=0, le=1,
                               description="Pause an expert whose gold accuracy's Wilson lower bound is below this.")
    min_gold: int = Field(default=5, ge=1, le=1000, description="Gold answers before the pause rule applies.")
    aggregation: Literal["dawid_skene", "majority", "mace", "glad"] = "dawid_skene"
    min_confidence: float = Field(default=0.7, ge=0, le=1,
                                  description="Aggregated labels below this confidence stay out of the dataset.")
    rubric_min_score: float = Field(default=0.7, ge=0, le=1,
                                    description="Rubric projects: replies whose normalised score reaches this "
                                                "become SFT rows.")
    dataset: str | None = Field(default=None, max_length=100, description="Dataset name of the results "
                                                                           "(default: <project>-labels).")
    license: str = Field(default="LicenseRef-proprietary", min_length=1, max_length=100)
    reviewers: list[str] = Field(default_factory=list, max_length=100,
                                 description="Experts (user ids) who may review this project's answers; members "
                                             "of the organisation always may.")


class ProjectSource(_Strict):
    """Where a project's first items come from (all optional: items can be added later).

    ``kind``: ``traces`` (``filter`` as the trace list's query: model, user, since, until, label,
    min_score, max_score, has_feedback, has_correction, metadata, limit), ``dataset`` (``ref``
    NAME[@N]), ``environment`` (``ref`` and ``tasks``), ``request`` (``spec``: a data request's
    fields; ``fulfils``: the request's id) or ``manual``.
    """

    kind: Literal["manual", "traces", "dataset", "environment", "request"] = "manual"
    filter: dict[str, Any] = Field(default_factory=dict)
    ref: str | None = Field(default=None, max_length=300)
    tasks: int = Field(default=20, ge=1, le=10_000, description="Environment tasks to take.")
    spec: dict[str, Any] = Field(default_factory=dict, description="A data request's fields (kind request).")
    fulfils: str | None = Field(default=None, max_length=200, description="The data request the results fulfil.")


class ProjectCreate(_Strict):
    """Body of ``POST /api/work/projects``."""

    name: str = Field(min_length=1, max_length=100)
    title: str = Field(default="", max_length=200)
    task_type: TaskType
    template: TemplateSpec = Field(default_factory=TemplateSpec)
    settings: ProjectSettings = Field(default_factory=ProjectSettings)
    source: ProjectSource = Field(default_factory=ProjectSource)


class ProjectOut(BaseModel):
    """A project as its owner sees it."""

    id: str
    name: str
    title: str
    task_type: TaskType
    template_version: int
    settings: ProjectSettings
    source: dict[str, Any]
    fulfils: str | None
    status: str
    items: int = Field(description="Items, gold included.")
    gold_items: int
    complete_items: int = Field(description="Non-gold items with the quorum of accepted answers.")
    created_at: datetime


class TemplateOut(BaseModel):
    """One version of a project's template."""

    project_id: str
    version: int
    spec: TemplateSpec
    created_at: datetime


class Candidate(_Strict):
    """One output to compare (pairwise / ranked items)."""

    id: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.-]+$")
    text: str = Field(max_length=200_000)


class ItemIn(_Strict):
    """One item to add to a project (``gold_answer`` makes it a hidden gold item)."""

    prompt: list[dict[str, Any]] = Field(default_factory=list, max_length=200,
                                         description="Chat messages ({role, content}) the task is about.")
    reply: str | None = Field(default=None, max_length=200_000, description="The model reply (rubric, correction).")
    candidates: list[Candidate] = Field(default_factory=list, max_length=20)
    suggestion: dict[str, Any] | None = Field(default=None, description="A model's suggested answer value.")
    context: dict[str, Any] = Field(default_factory=dict, description="Anything else shown with the task.")
    gold_answer: dict[str, Any] | None = Field(default=None, description="The correct answer value (gold item).")
    source_trace_id: str | None = Field(default=None, max_length=40)


class ItemsIn(_Strict):
    """Body of ``POST /api/work/projects/{project}/items``."""

    items: list[ItemIn] = Field(min_length=1, max_length=1000)


class ItemOut(BaseModel):
    """An item as the owner sees it (gold answer included)."""

    id: str
    project_id: str
    payload: dict[str, Any]
    is_gold: bool
    gold_answer: dict[str, Any] | None
    source_trace_id: str | None
    origin: str
    answers: int = Field(description="Answers not rejected.")
    created_at: datetime


class TaskOut(BaseModel):
    """A leased task as the expert sees it: never a gold answer, never another expert's answer."""

    assignment_id: str
    project_id: str
    project: str
    task_type: TaskType
    item_id: str
    template_version: int
    template: TemplateSpec
    payload: dict[str, Any] = Field(description="The item (its suggestion only when the project shows them).")
    expires_at: datetime


class SubmitBody(_Strict):
    """Body of ``POST /api/work/tasks/{assignment_id}/submit``."""

    value: dict[str, Any]
    active_seconds: int = Field(default=0, ge=0, le=86_400, description="Active time the client tracked.")


class ReviewBody(_Strict):
    """Body of ``POST /api/work/answers/{answer_id}/review``."""

    decision: ReviewDecision
    reason: str = Field(default="", max_length=1000)
    fixed_value: dict[str, Any] | None = Field(default=None, description="The corrected value (decision fix).")


class AnswerOut(BaseModel):
    """An answer as a reviewer or the owner sees it."""

    id: str
    project_id: str
    item_id: str
    expert_id: str
    template_version: int
    value: dict[str, Any]
    diff: str | None
    is_gold: bool
    gold_correct: bool | None
    active_seconds: int
    status: AnswerStatus
    fixed_value: dict[str, Any] | None
    reason: str | None
    amount: int
    currency: str
    payable_at: datetime | None
    created_at: datetime


class MyAnswerOut(BaseModel):
    """An answer as its expert sees it (the review, never the gold answer)."""

    id: str
    project_id: str
    item_id: str
    status: AnswerStatus
    reason: str | None
    gold_scored: bool = Field(description="Whether the item was gold (scored; its answer stays hidden).")
    gold_correct: bool | None
    amount: int
    currency: str
    created_at: datetime


class ExpertCreate(_Strict):
    """Body of ``POST /api/work/experts``: a member (or invited expert) of the organisation becomes an expert."""

    user_id: str = Field(min_length=1, max_length=40)
    handle: str = Field(default="", max_length=100)
    skills: list[str] = Field(default_factory=list, max_length=50)


class ExpertOut(BaseModel):
    """An expert's profile."""

    id: str
    user_id: str
    handle: str
    skills: list[str]
    status: Literal["active", "paused"]
    pause_reason: str | None
    qualified: list[str] = Field(description="Skills whose exam the expert passed.")


class ExamQuestion(_Strict):
    """One exam question: pick one of ``options``; ``answer`` is the gold option (never shown)."""

    id: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.-]+$")
    prompt: str = Field(min_length=1, max_length=20_000)
    options: list[str] = Field(min_length=2, max_length=20)
    answer: str = Field(min_length=1, max_length=2000)


class ExamCreate(_Strict):
    """Body of ``PUT /api/work/exams/{skill}``."""

    questions: list[ExamQuestion] = Field(min_length=1, max_length=200)
    pass_score: float = Field(default=0.8, gt=0, le=1)
    cooldown_s: int = Field(default=86_400, ge=0, le=365 * 86_400, description="Wait before a retake.")


class PublicQuestion(BaseModel):
    """An exam question as the expert sees it (no answer)."""

    id: str
    prompt: str
    options: list[str]


class ExamOut(BaseModel):
    """An exam as the expert sees it."""

    id: str
    skill: str
    questions: list[PublicQuestion]
    pass_score: float
    cooldown_s: int


class AttemptBody(_Strict):
    """Body of ``POST /api/work/exams/{skill}/attempts``: question id -> chosen option."""

    answers: dict[str, str]


class AttemptOut(BaseModel):
    """A scored exam attempt."""

    id: str
    skill: str
    score: float
    passed: bool
    retake_after: datetime | None = Field(description="When a failed attempt may be retaken.")
    created_at: datetime


class QualityOut(BaseModel):
    """An expert's quality in one project (or all projects when ``project_id`` is None)."""

    expert_id: str
    project_id: str | None
    gold_answers: int
    gold_correct: int
    accuracy: float | None
    wilson_lower: float | None
    accepted: int
    rejected: int
    status: Literal["active", "paused"]
    pause_reason: str | None


class ItemAgreement(BaseModel):
    """Agreement on one item: the aggregated label, its confidence and the share of answers agreeing."""

    item_id: str
    label: Any
    confidence: float
    answers: int
    agreement: float | None


class PairKappa(BaseModel):
    """Cohen's kappa of two experts over the items both answered."""

    expert_a: str
    expert_b: str
    items: int
    kappa: float | None


class AgreementOut(BaseModel):
    """Agreement in a project: Krippendorff's alpha, pairwise kappas, per-item agreement."""

    project_id: str
    alpha: float | None
    level: str
    kappas: list[PairKappa]
    items: list[ItemAgreement]


class DatasetResult(BaseModel):
    """A dataset version made from a project's aggregated results."""

    project_id: str
    dataset: str | None = Field(description="NAME@N of the version, None when no item passed the threshold.")
    kind: str
    rows: int
    created: bool
    skipped_low_confidence: int


class EnvPublish(_Strict):
    """Body of ``POST /api/work/projects/{project}/environment``: publish the authored tasks as an environment.

    ``name`` defaults to ``<project>-tasks``; ``version`` (semver) to the latest published version of that
    name when the tasks are unchanged (nothing new is published), else the next minor version (``1.0.0`` first).
    """

    name: str | None = Field(default=None, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$",
                             description="Environment name (lower case letters, digits, '-', '_', '.').")
    version: str | None = Field(default=None, max_length=64, description="Semver of the version to publish.")


class EnvPublished(BaseModel):
    """An environment version made from a project's accepted authored tasks, with who wrote each task."""

    project_id: str
    environment: str = Field(description="NAME@VERSION: resolvable with catalog.envref.resolve_env.")
    digest: str = Field(description="sha256 content hash of the package.")
    created: bool = Field(description="False when the same package was published already (nothing changed).")
    tasks: int
    skipped: int = Field(description="Accepted answers left out: duplicates of another task, or a reference "
                                     "answer the grader cannot read back (it holds <answer> tags).")
    contributors: dict[str, int] = Field(description="Royalty party (expert:<user id>) -> tasks they wrote.")
    checks: list[str] = Field(description="The publish-time checks that passed.")


class SuggestionsFill(_Strict):
    """Body of ``POST /api/work/projects/{project}/suggestions``: ask a deployment for each item's suggestion."""

    deployment: str = Field(min_length=1, max_length=200, description="Deployment (or base model) to ask.")
    limit: int = Field(default=50, ge=1, le=500, description="Items to fill at most in this call.")
    max_tokens: int = Field(default=512, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0, le=2)


class SuggestionsFilled(BaseModel):
    """What a fill call did."""

    project_id: str
    filled: int = Field(description="Items that got a suggestion.")
    refused: int = Field(description="Replies left out (empty or too long for the template).")
    remaining: int = Field(description="Items still without one (call again).")
    model: str


class ExamSummary(BaseModel):
    """An exam as the owner lists it (no questions)."""

    id: str
    skill: str
    questions: int
    pass_score: float
    cooldown_s: int


class DisputeCreate(_Strict):
    """Body of ``POST /api/work/answers/{answer_id}/disputes``."""

    reason: str = Field(min_length=1, max_length=2000)


class DisputeResolve(_Strict):
    """Body of ``POST /api/work/disputes/{dispute_id}/resolve``.

    ``uphold``: the expert was right -- the gold answer becomes ``gold_answer`` (or the item stops
    being gold when it is None); every answer on the item is re-scored. ``reject``: the gold stands.
    """

    decision: Literal["uphold", "reject"]
    resolution: str = Field(default="", max_length=2000)
    gold_answer: dict[str, Any] | None = None


class DisputeOut(BaseModel):
    """A dispute of a gold item."""

    id: str
    project_id: str
    item_id: str
    answer_id: str
    expert_id: str
    reason: str
    status: Literal["open", "upheld", "rejected"]
    resolution: str | None
    created_at: datetime


class EarningsOut(BaseModel):
    """An expert's money in one organisation and currency (minor units)."""

    expert_id: str
    currency: str
    pending: int = Field(description="Accepted work still in its review window.")
    available: int = Field(description="Payable balance (work and released royalties).")
    royalties_pending: int = Field(description="Royalties from dataset sales not yet released.")
    royalties_available: int = Field(description="Released royalties (part of available).")
    accepted_tasks: int


class PeriodClose(_Strict):
    """Body of ``POST /api/work/projects/{project}/periods``: close the pay period ending at ``until``."""

    period: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.:-]+$")
    until: datetime | None = None


class PeriodOut(BaseModel):
    """A closed pay period and its top-ups (expert id -> minor units)."""

    id: str
    project_id: str
    period: str
    starts_at: datetime
    ends_at: datetime
    topups: dict[str, int]


class LoopPolicy(_Strict):
    """Which traces the loop sends to a project: grader unsure or feedback negative, within a daily budget."""

    grader_below: float | None = Field(default=None, description="Grader score below which a trace goes to experts.")
    feedback_at_most: float | None = Field(default=0.0, description="Feedback score at or below which it goes.")
    daily_budget: int = Field(default=50, ge=0, le=100_000, description="Items the loop may add per UTC day.")


__all__ = [
    "SCORABLE",
    "AgreementOut",
    "AnswerOut",
    "AnswerStatus",
    "AttemptBody",
    "AttemptOut",
    "Candidate",
    "Criterion",
    "DatasetResult",
    "DisputeCreate",
    "DisputeOut",
    "DisputeResolve",
    "EarningsOut",
    "EnvPublish",
    "EnvPublished",
    "ExamCreate",
    "ExamOut",
    "ExamQuestion",
    "ExamSummary",
    "ExpertCreate",
    "ExpertOut",
    "ItemAgreement",
    "ItemIn",
    "ItemOut",
    "ItemsIn",
    "LoopPolicy",
    "MyAnswerOut",
    "PairKappa",
    "PeriodClose",
    "PeriodOut",
    "ProjectCreate",
    "ProjectOut",
    "ProjectSettings",
    "ProjectSource",
    "PublicQuestion",
    "QualityOut",
    "ReviewBody",
    "ReviewDecision",
    "SubmitBody",
    "SuggestionsFill",
    "SuggestionsFilled",
    "TaskOut",
    "TaskType",
    "TemplateOut",
    "TemplateSpec",
]

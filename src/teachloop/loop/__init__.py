"""teachloop.loop (layer L3): the autopilot from live traffic to a better deployed model.

Per deployment, a ``LoopConfig`` says where training data comes from
(traces with feedback, traces scored by an environment's grader, expert
labels, datasets the organisation owns or is granted), how it is curated
(filters, PII scrubbing, exact and near-duplicate removal, a fixed holdout
split), when to train (every N new usable examples or on a schedule), how
(SFT, DPO or GRPO through ``train``), the eval gate (a paired test against
the deployed version), the promotion rules (always a canary, then everyone,
watched for as long as it serves; automatic rollback on a drop) and a daily
training budget. ``LoopRunner.tick`` does one pass; every iteration is
recorded with its data, plan, run, figures, decision and reason. The loop keeps
what it learns (``loop.lineage``): an iteration continues the newest candidate
that was not worse than the deployed version, with steps that grow while it
still improves (``algorithm.lineage``, ``max_steps``, ``late_temperature``). Dataset versions,
their import and export, licences and grants, and adapter publishing are
``catalog``'s: the loop records its snapshots and candidates through it.

The loop uses ``train`` directly and changes deployments only through the
store's deployment registry (``store.repos.deployments``), which serving
reads on every request; it never imports ``serve``, ``app`` or ``cli``.
"""

from teachloop.loop.config import (
    AlgorithmConfig,
    BudgetConfig,
    CurationConfig,
    DatasetSource,
    FeedbackSource,
    GateConfig,
    GateEnv,
    GraderSource,
    LabelsSource,
    LoopConfig,
    PromotionConfig,
    References,
    TriggerConfig,
    check_references,
    load_loop_config,
    validate_loop_config,
)
from teachloop.loop.curation import Curated, CurationReport, curate, holdout_side, near_duplicates, scrub_text
from teachloop.loop.gate import (
    GateDecision,
    PairedTest,
    Suite,
    decide,
    likelihood_suite,
    paired_bootstrap,
    reward_suite,
    sign_test,
)
from teachloop.loop.lineage import ContinueFrom, Plan
from teachloop.loop.promotion import Verdict, judge, watch
from teachloop.loop.runner import LoopRunner, TickResult
from teachloop.loop.scoring import AnswerFinder, score_new_traffic
from teachloop.loop.service import (
    JOB_KIND,
    configure_loop,
    enqueue_tick,
    history,
    set_enabled,
    status,
)
from teachloop.loop.sources import Candidate, collect
from teachloop.loop.training import BudgetExceeded, TrainDeps, WarmStart, snapshot
from teachloop.loop.trigger import budget_left, due

__all__ = [
    "JOB_KIND",
    "AlgorithmConfig",
    "AnswerFinder",
    "BudgetConfig",
    "BudgetExceeded",
    "Candidate",
    "ContinueFrom",
    "Curated",
    "CurationConfig",
    "CurationReport",
    "DatasetSource",
    "FeedbackSource",
    "GateConfig",
    "GateDecision",
    "GateEnv",
    "GraderSource",
    "LabelsSource",
    "LoopConfig",
    "LoopRunner",
    "PairedTest",
    "Plan",
    "PromotionConfig",
    "References",
    "Suite",
    "TickResult",
    "TrainDeps",
    "TriggerConfig",
    "Verdict",
    "WarmStart",
    "budget_left",
    "check_references",
    "collect",
    "configure_loop",
    "curate",
    "decide",
    "due",
    "enqueue_tick",
    "history",
    "holdout_side",
    "judge",
    "likelihood_suite",
    "load_loop_config",
    "near_duplicates",
    "paired_bootstrap",
    "reward_suite",
    "score_new_traffic",
    "scrub_text",
    "set_enabled",
    "sign_test",
    "snapshot",
    "status",
    "validate_loop_config",
    "watch",
]

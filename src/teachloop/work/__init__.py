"""The expert workforce (L3): projects, tasks, assignments, quality control, aggregation, pay.

Over ``catalog/`` (dataset versions with row lineage), ``ledger/`` (all money) and ``store/``
(tables in ``store.schema.work``, the ``store.repos.work`` seam the loop also uses); never
imports ``loop/``, ``train/``, ``market/`` or ``serve/``. Services take a caller-owned
``Session`` (or the ``Database`` where they record datasets or pay out) and never know HTTP:

- ``projects``: projects, versioned templates, items (from traces, datasets, environments,
  data-request specs);
- ``workforce``: expert profiles, qualification exams;
- ``tasks``: the queue (leases, quorum, hidden gold), submissions;
- ``review``: accept / fix / reject, quality and the pause rule, gold disputes;
- ``pay``: earnings through the ledger, review windows, minimum-rate top-ups, payouts;
- ``results``: agreement, aggregation, dataset versions;
- ``publish``: authored tasks published as an environment version (with who wrote each task);
- ``suggestions``: items without a model suggestion, and storing a deployment's replies;
- ``values``: answer validation per task type; ``quality``: the statistics.

``docs/work.md`` describes the whole; the domain types are in ``teachloop.core.work``.
"""

from teachloop.work import pay, projects, publish, results, review, suggestions, tasks, values, workforce
from teachloop.work.quality import (
    AggregatedLabel,
    RankedItem,
    RaterPairKappa,
    aggregate_categorical,
    bradley_terry,
    cohen_kappa,
    item_agreement,
    krippendorff_alpha,
    pairwise_kappas,
    preference_confidence,
    ranking_from_orderings,
    wilson_lower_bound,
    worker_skills,
)

__all__ = [
    "AggregatedLabel",
    "RankedItem",
    "RaterPairKappa",
    "aggregate_categorical",
    "bradley_terry",
    "cohen_kappa",
    "item_agreement",
    "krippendorff_alpha",
    "pairwise_kappas",
    "pay",
    "preference_confidence",
    "projects",
    "publish",
    "ranking_from_orderings",
    "results",
    "review",
    "suggestions",
    "tasks",
    "values",
    "wilson_lower_bound",
    "worker_skills",
    "workforce",
]

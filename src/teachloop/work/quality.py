"""Quality control of expert answers: pure functions over answers, no store, no I/O.

Contract:

- ``wilson_lower_bound``: the lower end of the Wilson score interval of a success rate
  (an expert's accuracy on gold items); 0.0 when there are no trials.
- ``krippendorff_alpha`` (the ``krippendorff`` package), ``cohen_kappa`` for one rater
  pair, ``pairwise_kappas`` for every pair with at least 2 shared items, and
  ``item_agreement`` (the share of agreeing rater pairs on one item). Each returns
  ``None`` where the statistic is undefined, never ``nan``.
- ``aggregate_categorical``: one ``AggregatedLabel`` per item by majority vote or by
  crowd-kit's Dawid-Skene, MACE or GLAD, with the posterior probability of the chosen
  label as its confidence; ``worker_skills``: each worker's estimated accuracy under the
  same model.
- ``bradley_terry`` (pairwise comparisons) and ``ranking_from_orderings`` (full rankings)
  fit Bradley-Terry / Plackett-Luce strengths with ``choix`` (I-LSR with a weak prior, so
  that disconnected comparison graphs and perfect separation still have finite estimates) and
  return ``RankedItem`` rows, best first; ``preference_confidence`` is the model's
  probability that one item beats another.

Every result is deterministic and independent of the order of the input: answers are
put in a canonical order (items, workers and labels sorted) before any model sees them,
MACE's random initialisation uses a fixed seed, and ties are broken by the smaller label, item
or worker in that canonical order. Malformed input (nothing to aggregate, a worker
answering the same item twice, a comparison of an item with itself, a non-numeric value
for an interval alpha...) raises ``teachloop.core.errors.InvalidInput`` (a
``ValueError``, HTTP 400) with the offending field in ``param``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from teachloop.core.errors import InvalidInput

__all__ = [
    "AggregatedLabel",
    "AggregationMethod",
    "MeasurementLevel",
    "RankedItem",
    "RaterPairKappa",
    "aggregate_categorical",
    "bradley_terry",
    "cohen_kappa",
    "item_agreement",
    "krippendorff_alpha",
    "pairwise_kappas",
    "preference_confidence",
    "ranking_from_orderings",
    "wilson_lower_bound",
    "worker_skills",
]

AggregationMethod = Literal["majority", "dawid_skene", "mace", "glad"]
"""How ``aggregate_categorical`` and ``worker_skills`` combine the answers to an item."""

MeasurementLevel = Literal["nominal", "ordinal", "interval", "ratio"]
"""Krippendorff's level of measurement: which distance between two values counts as disagreement."""

METHODS: tuple[str, ...] = get_args(AggregationMethod)
BT_PRIOR = 1.0
"""Strength of the Bradley-Terry fits' prior, in virtual comparisons per item: choix's LSR chain gets
``alpha = BT_PRIOR / n_items`` pseudo-transitions between every pair of items, so each item carries
about one virtual draw spread over all the others. With two items, one win gives P = 2/3 and ten
give 11/12 (Laplace's rule); strengths stay finite under perfect separation and on disconnected
comparison graphs, and a single comparison never reads as near-certainty."""
MACE_SEED = 0
"""MACE's initialisation draws from this seed, so its result is reproducible. crowd-kit re-draws every
restart from the same integer seed, so its 10 default restarts are 10 copies of one run: we run one
(the same result, ten times faster)."""


# --------------------------------------------------------------------------- success rates


def wilson_lower_bound(successes: int, trials: int, z: float = 1.96) -> float:
    """Lower bound of the Wilson score interval for ``successes`` out of ``trials``.

    ``z`` is the normal quantile (1.96: a two-sided 95% interval). Returns 0.0 when
    ``trials == 0``; otherwise a value in ``[0, successes / trials]``.
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise InvalidInput(
            f"successes must lie in [0, trials]; got {successes} of {trials}", param="successes"
        )
    if not z > 0 or not math.isfinite(z):
        raise InvalidInput(f"z must be a positive finite number, got {z}", param="z")
    if trials == 0:
        return 0.0
    n = float(trials)
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(p, max(0.0, (centre - margin) / (1 + z2 / n)))


# --------------------------------------------------------------------------- agreement


def _canonical(values: Sequence[Hashable] | set[Hashable]) -> list[Hashable]:
    """The distinct values in a fixed order: sorted, or by (type, repr) where they do not compare."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct)  # type: ignore[type-var]
    except TypeError:
        return sorted(distinct, key=lambda v: (type(v).__qualname__, repr(v)))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def krippendorff_alpha(
    answers: Mapping[str, Mapping[str, Hashable | float]],
    level: MeasurementLevel = "nominal",
) -> float | None:
    """Krippendorff's alpha over ``answers[item_id][worker_id] = value`` (``krippendorff`` package).

    Any number of raters per item, missing answers allowed. ``nominal`` accepts any hashable
    values; ``ordinal``, ``interval`` and ``ratio`` need real numbers (ordinal ranks them).
    Items with fewer than two answers cannot be paired and do not count.

    Returns ``None`` where alpha is undefined: no item has answers from two or more raters,
    or the pairable answers hold a single value (expected disagreement is zero, alpha is 0/0).
    Raises ``InvalidInput`` when ``answers`` has no items or a value does not fit ``level``.
    """
    import krippendorff

    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise InvalidInput(f"unknown level of measurement {level!r}", param="level")
    if not answers:
        raise InvalidInput("no answers to measure agreement on", param="answers")
    pairable = {item: dict(by_worker) for item, by_worker in answers.items() if len(by_worker) >= 2}
    values = [v for by_worker in pairable.values() for v in by_worker.values()]
    if level != "nominal":
        for v in values:
            if not _is_number(v) or not math.isfinite(float(v)):  # type: ignore[arg-type]
                raise InvalidInput(f"{level} alpha needs finite numbers; got {v!r}", param="answers")
    if not pairable or len(set(values)) < 2:
        return None
    items = sorted(pairable)
    workers = sorted({w for by_worker in pairable.values() for w in by_worker})
    code = {v: float(i) for i, v in enumerate(_canonical(values))} if level == "nominal" else {}
    data = np.full((len(workers), len(items)), np.nan)
    row = {w: i for i, w in enumerate(workers)}
    for j, item in enumerate(items):
        for worker, value in pairable[item].items():
            data[row[worker], j] = code[value] if level == "nominal" else float(value)  # type: ignore[arg-type]
    result = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    return None if math.isnan(result) else result


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two raters; ``pairs`` holds (rater A's label, rater B's label) per item.

    Returns ``None`` when chance agreement is 1 (both raters gave one and the same label to
    every item: kappa is 0/0). Raises ``InvalidInput`` when ``pairs`` is empty.
    """
    if not pairs:
        raise InvalidInput("no pairs of labels to compute kappa on", param="pairs")
    n = len(pairs)
    observed = sum(1 for a, b in pairs if a == b) / n
    count_a = Counter(a for a, _ in pairs)
    count_b = Counter(b for _, b in pairs)
    expected = sum(count_a[label] * count_b.get(label, 0) for label in count_a) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


@dataclass(frozen=True)
class RaterPairKappa:
    """Cohen's kappa of two raters over the items both answered.

    Attributes:
        worker_a: the first worker id (``worker_a < worker_b``).
        worker_b: the second worker id.
        items: how many items both answered.
        kappa: Cohen's kappa, or ``None`` where it is undefined (see ``cohen_kappa``).
    """

    worker_a: str
    worker_b: str
    items: int
    kappa: float | None


def pairwise_kappas(answers: Mapping[str, Mapping[str, Hashable]]) -> list[RaterPairKappa]:
    """Cohen's kappa for every pair of workers sharing at least 2 items, sorted by (worker_a, worker_b).

    ``answers[item_id][worker_id] = label``, as for ``krippendorff_alpha``.
    """
    shared: dict[tuple[str, str], list[tuple[Hashable, Hashable]]] = defaultdict(list)
    for item in sorted(answers):
        by_worker = answers[item]
        for a, b in itertools.combinations(sorted(by_worker), 2):
            shared[(a, b)].append((by_worker[a], by_worker[b]))
    return [
        RaterPairKappa(worker_a=a, worker_b=b, items=len(pairs), kappa=cohen_kappa(pairs))
        for (a, b), pairs in sorted(shared.items())
        if len(pairs) >= 2
    ]


def item_agreement(answers: Mapping[str, Hashable]) -> float | None:
    """The share of pairs of workers that gave one item the same label (``answers[worker_id] = label``).

    1.0 when all agree; ``None`` with fewer than two answers. The per-item companion of
    ``krippendorff_alpha``, which is defined only over many items.
    """
    labels = list(answers.values())
    if len(labels) < 2:
        return None
    pairs = len(labels) * (len(labels) - 1) / 2
    agreeing = sum(c * (c - 1) / 2 for c in Counter(labels).values())
    return agreeing / pairs


# --------------------------------------------------------------------------- categorical aggregation


@dataclass(frozen=True)
class AggregatedLabel:
    """The label an item gets from its answers.

    Attributes:
        item_id: the item.
        label: the aggregated label (one of the labels the workers gave).
        confidence: the model's posterior probability of ``label`` (majority vote: its share of the votes).
        answers: how many answers the item had.
    """

    item_id: str
    label: Hashable
    confidence: float
    answers: int


@dataclass(frozen=True)
class _Fit:
    """A fitted categorical model: posteriors per item over ``labels`` and an accuracy per worker."""

    items: list[str]
    labels: list[Hashable]
    probas: np.ndarray  # [items, labels], rows sum to 1
    counts: list[int]
    skills: dict[str, float]


def _validated(answers: Sequence[tuple[str, str, Hashable]], method: str) -> list[tuple[str, str, Hashable]]:
    if method not in METHODS:
        raise InvalidInput(
            f"unknown aggregation method {method!r}; use one of {', '.join(METHODS)}", param="method"
        )
    if not answers:
        raise InvalidInput("no answers to aggregate", param="answers")
    seen: set[tuple[str, str]] = set()
    for answer in answers:
        if len(answer) != 3:
            raise InvalidInput(f"an answer is (item_id, worker_id, label); got {answer!r}", param="answers")
        item, worker, label = answer
        if not isinstance(item, str) or not isinstance(worker, str):
            raise InvalidInput(f"item and worker ids must be strings; got {answer!r}", param="answers")
        if label is None:
            raise InvalidInput(f"worker {worker!r} gave item {item!r} no label", param="answers")
        if (item, worker) in seen:
            raise InvalidInput(f"worker {worker!r} answered item {item!r} more than once", param="answers")
        seen.add((item, worker))
    return sorted(answers, key=lambda a: (a[0], a[1]))


def _fit(answers: Sequence[tuple[str, str, Hashable]], method: str) -> _Fit:
    rows = _validated(answers, method)
    labels = _canonical([label for _, _, label in rows])
    code = {label: i for i, label in enumerate(labels)}
    items = sorted({item for item, _, _ in rows})
    item_row = {item: i for i, item in enumerate(items)}
    counts = [0] * len(items)
    for item, _, _ in rows:
        counts[item_row[item]] += 1
    coded = [(item, worker, code[label]) for item, worker, label in rows]
    if len(labels) == 1:  # unanimous everywhere: every model agrees, and GLAD cannot fit one class
        probas = np.ones((len(items), 1))
        skills = {worker: 1.0 for _, worker, _ in rows}
    elif method == "majority":
        probas, skills = _majority(coded, items, len(labels))
    else:
        probas, skills = _crowdkit(coded, items, len(labels), method)
    return _Fit(items=items, labels=labels, probas=probas, counts=counts, skills=dict(sorted(skills.items())))


def _majority(
    coded: list[tuple[str, str, int]], items: list[str], n_labels: int
) -> tuple[np.ndarray, dict[str, float]]:
    row = {item: i for i, item in enumerate(items)}
    votes = np.zeros((len(items), n_labels))
    for item, _, label in coded:
        votes[row[item], label] += 1
    probas = votes / votes.sum(axis=1, keepdims=True)
    winner = probas.argmax(axis=1)  # ties: the smaller label
    agree: dict[str, list[int]] = defaultdict(list)
    for item, worker, label in coded:
        agree[worker].append(int(label == winner[row[item]]))
    return probas, {w: sum(a) / len(a) for w, a in agree.items()}


def _crowdkit(
    coded: list[tuple[str, str, int]], items: list[str], n_labels: int, method: str
) -> tuple[np.ndarray, dict[str, float]]:
    import pandas as pd
    from crowdkit.aggregation import GLAD, MACE, DawidSkene

    data = pd.DataFrame(coded, columns=["task", "worker", "label"])
    model: Any
    if method == "dawid_skene":
        model = DawidSkene(n_iter=100, tol=1e-5)
    elif method == "mace":
        model = MACE(n_restarts=1, random_state=MACE_SEED)
    else:
        model = GLAD(n_iter=100, tol=1e-5)
    raw = model.fit_predict_proba(data)
    probas = raw.reindex(index=items, columns=range(n_labels)).fillna(0.0).to_numpy(dtype=float)
    probas = probas / probas.sum(axis=1, keepdims=True)
    workers = sorted({w for _, w, _ in coded})
    if method == "dawid_skene":
        # accuracy = sum_k P(true = k) * P(answer = k | true = k): the confusion diagonal under the priors
        errors = model.errors_
        priors = model.priors_.reindex(range(n_labels)).fillna(0.0)
        skills = {
            w: float(sum(priors[k] * _cell(errors, (w, k), k) for k in range(n_labels))) for w in workers
        }
    elif method == "mace":
        # a worker knows the label with probability p (MACE's competence), else guesses from theta
        _, names = pd.factorize(data["worker"])
        _, label_names = pd.factorize(data["label"])
        prior = probas.mean(axis=0)
        skills = {}
        for i, w in enumerate(names):
            know = float(model.spamming_[i, 1])
            guess = sum(float(model.thetas_[i, j]) * float(prior[int(k)]) for j, k in enumerate(label_names))
            skills[str(w)] = know + (1 - know) * guess
    else:
        # GLAD: a worker is right on task j with probability sigmoid(alpha_w * exp(beta_j))
        alphas, betas = model.alphas_, model.betas_
        chances: dict[str, list[float]] = defaultdict(list)
        for item, worker, _ in coded:
            chances[worker].append(1.0 / (1.0 + math.exp(-alphas[worker] * math.exp(betas[item]))))
        skills = {w: sum(c) / len(c) for w, c in chances.items()}
    return probas, skills


def _cell(frame: Any, row: tuple[str, int], column: int) -> float:
    try:
        return float(frame.loc[row, column])
    except KeyError:  # the worker never gave this label
        return 0.0


def aggregate_categorical(
    answers: Sequence[tuple[str, str, Hashable]],
    method: AggregationMethod = "dawid_skene",
) -> dict[str, AggregatedLabel]:
    """One label per item from ``(item_id, worker_id, label)`` answers, keyed by item id.

    ``method``: ``majority`` (confidence: the label's share of the votes), or crowd-kit's
    ``dawid_skene`` (a confusion matrix per worker), ``mace`` (competence and spamming per
    worker) or ``glad`` (worker ability and item difficulty), whose confidence is the
    posterior probability of the chosen label. Ties go to the smaller label (sorted order,
    or by type and ``repr`` for labels that do not compare). Deterministic and independent
    of the order of ``answers``.

    Raises ``InvalidInput`` for no answers, an unknown method, a missing label or a worker
    answering the same item twice.
    """
    fit = _fit(answers, method)
    out: dict[str, AggregatedLabel] = {}
    for i, item in enumerate(fit.items):
        best = int(np.argmax(fit.probas[i]))
        out[item] = AggregatedLabel(
            item_id=item, label=fit.labels[best], confidence=float(fit.probas[i, best]), answers=fit.counts[i]
        )
    return out


def worker_skills(
    answers: Sequence[tuple[str, str, Hashable]],
    method: AggregationMethod = "dawid_skene",
) -> dict[str, float]:
    """Each worker's estimated accuracy (probability of giving the true label), sorted by worker id.

    ``dawid_skene``: the diagonal of the worker's confusion matrix weighted by the class
    priors; ``mace``: competence plus the chance of guessing right when spamming; ``glad``:
    the mean of ``sigmoid(ability * exp(easiness))`` over the worker's items; ``majority``:
    the share of the worker's answers that match the majority label. Same input rules as
    ``aggregate_categorical``.
    """
    return _fit(answers, method).skills


# --------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class RankedItem:
    """An item's place in a ranking fitted from comparisons.

    Attributes:
        item_id: the item.
        score: its Bradley-Terry log-strength (scores are centred on 0; ``exp(a - b)`` is the odds that a beats b).
        rank: 1 for the best item; ties in score are ordered by item id.
    """

    item_id: str
    score: float
    rank: int


def _ranked(ids: list[str], params: np.ndarray) -> list[RankedItem]:
    # round before ordering so that scores equal up to float noise tie, then go by item id
    order = sorted(range(len(ids)), key=lambda i: (-round(float(params[i]), 9), ids[i]))
    return [RankedItem(item_id=ids[i], score=float(params[i]), rank=r + 1) for r, i in enumerate(order)]


def _check_id(value: object, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"item ids must be non-empty strings; got {value!r}", param=param)
    return value


def bradley_terry(
    comparisons: Sequence[tuple[str, str]],
    items: Sequence[str] | None = None,
) -> list[RankedItem]:
    """Bradley-Terry ranking, best first, from ``(winner_id, loser_id)`` comparisons (choix I-LSR).

    ``items`` (optional) lists every item to rank, including ones never compared (they get
    score 0, the mean of the compared items' scores); by default the items are those in
    ``comparisons``. A weak prior (``BT_PRIOR``) keeps strengths finite when one item won every
    comparison or the comparison graph is disconnected. Raises ``InvalidInput`` for no comparisons, an
    item compared with itself, or a compared item missing from ``items``.
    """
    import choix

    if not comparisons:
        raise InvalidInput("no comparisons to rank from", param="comparisons")
    pairs: list[tuple[str, str]] = []
    for comparison in comparisons:
        if len(comparison) != 2:
            raise InvalidInput(
                f"a comparison is (winner_id, loser_id); got {comparison!r}", param="comparisons"
            )
        winner, loser = (_check_id(x, "comparisons") for x in comparison)
        if winner == loser:
            raise InvalidInput(f"item {winner!r} is compared with itself", param="comparisons")
        pairs.append((winner, loser))
    compared = sorted({x for pair in pairs for x in pair})
    uncompared: list[str] = []
    if items is not None:
        listed = {_check_id(x, "items") for x in items}
        unknown = sorted(set(compared) - listed)
        if unknown:
            raise InvalidInput(f"compared items not in items: {', '.join(unknown[:5])}", param="items")
        uncompared = sorted(listed - set(compared))
    index = {x: i for i, x in enumerate(compared)}
    data = sorted((index[w], index[lo]) for w, lo in pairs)
    params = _ilsr(choix.ilsr_pairwise, choix.lsr_pairwise, len(compared), data)
    return _ranked(compared + uncompared, np.concatenate([params, np.zeros(len(uncompared))]))


def ranking_from_orderings(orderings: Sequence[Sequence[str]]) -> list[RankedItem]:
    """Plackett-Luce ranking (Bradley-Terry for rankings), best first, from full or partial orderings.

    Each ordering lists item ids best first (at least two, no repeats); a ranking of n items
    counts as its n-1 successive choices (choix ``ilsr_rankings``), with the prior of
    ``bradley_terry``. Raises ``InvalidInput`` for no orderings, an ordering of fewer than two
    items, or an item listed twice in one ordering.
    """
    import choix

    if not orderings:
        raise InvalidInput("no orderings to rank from", param="orderings")
    checked: list[list[str]] = []
    for ordering in orderings:
        if isinstance(ordering, str):
            raise InvalidInput("an ordering is a list of item ids, not a string", param="orderings")
        ids_in = [_check_id(x, "orderings") for x in ordering]
        if len(ids_in) < 2:
            raise InvalidInput(f"an ordering needs at least two items; got {ids_in!r}", param="orderings")
        if len(set(ids_in)) != len(ids_in):
            raise InvalidInput(f"an item appears twice in the ordering {ids_in!r}", param="orderings")
        checked.append(ids_in)
    ids = sorted({x for ordering in checked for x in ordering})
    index = {x: i for i, x in enumerate(ids)}
    data = sorted([index[x] for x in ordering] for ordering in checked)
    params = _ilsr(choix.ilsr_rankings, choix.lsr_rankings, len(ids), data)
    return _ranked(ids, params)


def _ilsr(iterative: Any, one_step: Any, n_items: int, data: Any) -> np.ndarray:
    """choix's I-LSR estimate, centred; where it does not converge in its budget, one LSR step (choix's)."""
    alpha = BT_PRIOR / n_items
    try:
        params = iterative(n_items, data, alpha=alpha, max_iter=500, tol=1e-8)
    except RuntimeError:
        params = one_step(n_items, data, alpha=alpha)
    params = np.asarray(params, dtype=float)
    return params - params.mean()


def preference_confidence(ranked: list[RankedItem], a: str, b: str) -> float:
    """The Bradley-Terry probability that item ``a`` beats item ``b``: ``1 / (1 + exp(score_b - score_a))``.

    Raises ``InvalidInput`` when either item is not in ``ranked``.
    """
    scores = {r.item_id: r.score for r in ranked}
    for name, item in (("a", a), ("b", b)):
        if item not in scores:
            raise InvalidInput(f"item {item!r} is not in the ranking", param=name)
    diff = scores[b] - scores[a]
    if diff > 700:
        return 0.0
    return 1.0 / (1.0 + math.exp(diff))

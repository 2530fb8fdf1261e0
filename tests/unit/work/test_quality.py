"""teachloop.work.quality: hand-checked values of each statistic, properties, and refused input.

Hand-checked values: Wilson's interval for 5 of 10 (0.2366, the textbook figure) and for
n = 1; Cohen's kappa of the 50-item yes/no example (p_o = 0.7, p_e = 0.5, kappa = 0.4);
Krippendorff's alpha on the krippendorff package's documented example (nominal 0.691358,
interval 0.810845). Properties (hypothesis): the Wilson bound lies in [0, p̂] and grows with
successes; unanimous answers aggregate to the unanimous label with confidence > 0.9 by every
method; aggregation does not depend on the order of the answers; Bradley-Terry recovers a
consistent total order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.core.errors import InvalidInput
from teachloop.work.quality import (
    AggregatedLabel,
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

# crowd-kit 1.4 calls pandas APIs that pandas 3 deprecates (inplace=..., copy=...): not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:crowdkit"),
    pytest.mark.filterwarnings("ignore::FutureWarning:crowdkit"),
]

# The krippendorff package's docstring example: 3 coders (rows) x 15 units (columns), None = missing.
KRIPPENDORFF_EXAMPLE = [
    [None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],
    [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],
    [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4],
]


def as_answers(matrix: list[list[int | None]]) -> dict[str, dict[str, Hashable]]:
    """Coder x unit matrix -> answers[item][worker]."""
    out: dict[str, dict[str, Hashable]] = {}
    for coder, row in enumerate(matrix):
        for unit, value in enumerate(row):
            if value is not None:
                out.setdefault(f"unit{unit:02d}", {})[f"coder{coder}"] = value
    return out


# --------------------------------------------------------------------------- Wilson


def test_wilson_known_values() -> None:
    assert wilson_lower_bound(5, 10) == pytest.approx(0.23659, abs=1e-5)
    assert wilson_lower_bound(1, 1) == pytest.approx(1 / (1 + 1.96**2), abs=1e-12)
    assert wilson_lower_bound(81, 100) == pytest.approx(0.72221, abs=1e-5)
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(0, 20) == 0.0
    assert wilson_lower_bound(50, 100, z=2.576) < wilson_lower_bound(50, 100)


@given(st.integers(min_value=1, max_value=10_000), st.data())
def test_wilson_within_zero_and_the_observed_rate(trials: int, data: st.DataObject) -> None:
    successes = data.draw(st.integers(min_value=0, max_value=trials))
    bound = wilson_lower_bound(successes, trials)
    assert 0.0 <= bound <= successes / trials
    if successes < trials:
        assert wilson_lower_bound(successes + 1, trials) > bound


@pytest.mark.parametrize(
    ("successes", "trials", "z"), [(3, 2, 1.96), (-1, 2, 1.96), (1, -1, 1.96), (1, 2, 0.0)]
)
def test_wilson_refuses_impossible_counts(successes: int, trials: int, z: float) -> None:
    with pytest.raises(InvalidInput):
        wilson_lower_bound(successes, trials, z)


# --------------------------------------------------------------------------- agreement


def test_alpha_matches_the_documented_example() -> None:
    answers = as_answers(KRIPPENDORFF_EXAMPLE)
    assert krippendorff_alpha(answers) == pytest.approx(0.691358, abs=1e-6)
    assert krippendorff_alpha(answers, "interval") == pytest.approx(0.810845, abs=1e-6)


def test_nominal_alpha_takes_any_hashable_label() -> None:
    names = {1: "one", 2: "two", 3: "three", 4: "four"}
    answers = {
        item: {w: names[int(v)] for w, v in by_worker.items()}  # type: ignore[call-overload]
        for item, by_worker in as_answers(KRIPPENDORFF_EXAMPLE).items()
    }
    assert krippendorff_alpha(answers) == pytest.approx(0.691358, abs=1e-6)


def test_alpha_undefined_cases_are_none() -> None:
    assert krippendorff_alpha({"a": {"w1": 1}, "b": {"w2": 2}}) is None  # nobody shares an item
    assert krippendorff_alpha({"a": {"w1": "x", "w2": "x"}, "b": {"w1": "x", "w2": "x"}}) is None
    assert krippendorff_alpha({"a": {"w1": "x", "w2": "x"}, "b": {"w1": "x", "w2": "y"}}) is not None


def test_alpha_refuses_bad_input() -> None:
    with pytest.raises(InvalidInput, match="no answers"):
        krippendorff_alpha({})
    with pytest.raises(InvalidInput, match="interval alpha needs finite numbers"):
        krippendorff_alpha({"a": {"w1": "x", "w2": "y"}}, "interval")
    with pytest.raises(InvalidInput, match="level"):
        krippendorff_alpha({"a": {"w1": 1, "w2": 2}}, "cardinal")  # type: ignore[arg-type]


def test_kappa_textbook_example() -> None:
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15 -> p_o 0.7, p_e 0.5
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    assert cohen_kappa([("a", "a"), ("a", "a")]) is None  # chance agreement 1: undefined
    with pytest.raises(InvalidInput):
        cohen_kappa([])


def test_kappa_three_categories() -> None:
    # 3 x 3 table (rows A, columns B): [[10, 2, 0], [1, 8, 3], [0, 1, 5]], n = 30
    table = {
        ("x", "x"): 10,
        ("x", "y"): 2,
        ("y", "x"): 1,
        ("y", "y"): 8,
        ("y", "z"): 3,
        ("z", "y"): 1,
        ("z", "z"): 5,
    }
    pairs = [pair for pair, n in table.items() for _ in range(n)]
    p_o = 23 / 30
    p_e = (12 * 11 + 12 * 11 + 6 * 8) / 900
    assert cohen_kappa(pairs) == pytest.approx((p_o - p_e) / (1 - p_e))


def test_pairwise_kappas_cover_pairs_with_two_shared_items() -> None:
    answers = {
        "i1": {"ann": "x", "bob": "x", "cy": "y", "dee": "x"},  # dee shares one item only: no pair
        "i2": {"ann": "y", "bob": "y"},
        "i3": {"ann": "x", "bob": "y", "cy": "x"},
    }
    kappas = pairwise_kappas(answers)
    assert [(k.worker_a, k.worker_b, k.items) for k in kappas] == [
        ("ann", "bob", 3),
        ("ann", "cy", 2),
        ("bob", "cy", 2),
    ]
    assert kappas[0].kappa == pytest.approx(cohen_kappa([("x", "x"), ("y", "y"), ("x", "y")]))
    assert isinstance(kappas[1], RaterPairKappa)


def test_item_agreement() -> None:
    assert item_agreement({"a": 1, "b": 1, "c": 1}) == 1.0
    assert item_agreement({"a": 1, "b": 1, "c": 2}) == pytest.approx(1 / 3)
    assert item_agreement({"a": 1}) is None


# --------------------------------------------------------------------------- categorical aggregation

METHODS = ["majority", "dawid_skene", "mace", "glad"]


def noisy_answers(seed: int, items: int = 12, workers: int = 5) -> list[tuple[str, str, Hashable]]:
    rng = random.Random(seed)
    answers: list[tuple[str, str, Hashable]] = []
    for i in range(items):
        truth = rng.choice("abc")
        for w in range(workers):
            label = truth if rng.random() < 0.8 else rng.choice("abc")
            answers.append((f"item{i}", f"w{w}", label))
    return answers


def test_majority_vote_and_its_confidence() -> None:
    answers = [("q", "w1", "cat"), ("q", "w2", "cat"), ("q", "w3", "dog"), ("r", "w1", "dog")]
    result = aggregate_categorical(answers, method="majority")
    assert result["q"] == AggregatedLabel(item_id="q", label="cat", confidence=2 / 3, answers=3)
    assert result["r"].label == "dog" and result["r"].answers == 1
    tie = aggregate_categorical([("t", "w1", "dog"), ("t", "w2", "cat")], method="majority")
    assert tie["t"].label == "cat" and tie["t"].confidence == 0.5  # ties go to the smaller label


def test_skills_of_majority_vote() -> None:
    answers = [
        ("q", "w1", "a"),
        ("q", "w2", "a"),
        ("q", "w3", "b"),
        ("r", "w1", "b"),
        ("r", "w2", "a"),
        ("r", "w3", "a"),
    ]
    assert worker_skills(answers, method="majority") == {"w1": 0.5, "w2": 1.0, "w3": 0.5}


def test_dawid_skene_outvotes_a_majority_of_unreliable_workers() -> None:
    # good1, good2 agree with the truth everywhere; three spammers copy one fixed wrong pattern
    rng = random.Random(0)
    answers: list[tuple[str, str, Hashable]] = []
    for i in range(30):
        truth = rng.choice([0, 1])
        answers += [(f"i{i}", "good1", truth), (f"i{i}", "good2", truth)]
        if i < 6:  # on a few items the three bad workers outvote the good ones
            answers += [(f"i{i}", f"bad{b}", 1 - truth) for b in range(3)]
        else:
            answers += [(f"i{i}", f"bad{b}", rng.choice([0, 1])) for b in range(3)]
    truth_of = {a[0]: a[2] for a in answers if a[1] == "good1"}
    ds = aggregate_categorical(answers)
    majority = aggregate_categorical(answers, method="majority")
    ds_right = sum(ds[i].label == t for i, t in truth_of.items())
    mv_right = sum(majority[i].label == t for i, t in truth_of.items())
    assert ds_right > mv_right
    skills = worker_skills(answers)
    assert min(skills["good1"], skills["good2"]) > max(skills[f"bad{b}"] for b in range(3))


@pytest.mark.parametrize("method", METHODS)
def test_unanimous_answers_give_the_label_with_high_confidence(method: str) -> None:
    answers = [(f"i{i}", f"w{w}", "yes" if i % 2 else "no") for i in range(6) for w in range(3)]
    result = aggregate_categorical(answers, method=method)  # type: ignore[arg-type]
    assert {i: r.label for i, r in result.items()} == {f"i{i}": "yes" if i % 2 else "no" for i in range(6)}
    assert all(r.confidence > 0.9 and r.answers == 3 for r in result.values())


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4),
    st.integers(min_value=2, max_value=4),
)
def test_dawid_skene_on_unanimous_answers(labels: list[str], raters: int) -> None:
    answers = [(f"i{i}", f"w{w}", label) for i, label in enumerate(labels) for w in range(raters)]
    result = aggregate_categorical(answers)
    assert all(result[f"i{i}"].label == label for i, label in enumerate(labels))
    assert all(r.confidence > 0.9 for r in result.values())


@settings(max_examples=4, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.randoms(use_true_random=False))
def test_aggregation_ignores_the_order_of_answers(seed: int, shuffler: random.Random) -> None:
    answers = noisy_answers(seed, items=8, workers=4)
    shuffled = list(answers)
    shuffler.shuffle(shuffled)
    for method in ("majority", "dawid_skene"):
        assert aggregate_categorical(shuffled, method=method) == aggregate_categorical(answers, method=method)  # type: ignore[arg-type]
    assert worker_skills(shuffled) == worker_skills(answers)


@pytest.mark.parametrize("method", ["mace", "glad"])
def test_slow_models_are_deterministic_and_order_free(method: str) -> None:
    answers = noisy_answers(7, items=10, workers=4)
    shuffled = list(reversed(answers))
    first = aggregate_categorical(answers, method=method)  # type: ignore[arg-type]
    assert aggregate_categorical(shuffled, method=method) == first  # type: ignore[arg-type]
    assert all(0.0 < r.confidence <= 1.0 + 1e-9 for r in first.values())
    skills = worker_skills(answers, method=method)  # type: ignore[arg-type]
    assert set(skills) == {"w0", "w1", "w2", "w3"} and all(0.0 <= x <= 1.0 for x in skills.values())


def test_labels_that_do_not_compare_are_aggregated() -> None:
    answers = [("i", "w1", 1), ("i", "w2", "one"), ("i", "w3", 1), ("j", "w1", "one"), ("j", "w2", "one")]
    result = aggregate_categorical(answers)
    assert result["i"].label == 1 and result["j"].label == "one"


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ([], "no answers"),
        ([("i", "w", "x"), ("i", "w", "y")], "answered item 'i' more than once"),
        ([("i", "w", None)], "no label"),
        ([("i", 3, "x")], "must be strings"),
        ([("i", "w")], "an answer is"),
    ],
)
def test_aggregation_refuses_bad_answers(answers: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        aggregate_categorical(answers)
    with pytest.raises(InvalidInput, match=message):
        worker_skills(answers)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown aggregation method"):
        aggregate_categorical([("i", "w", "x")], method="vote")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- comparisons


def test_bradley_terry_ranks_and_scores() -> None:
    comparisons = [("a", "b")] * 3 + [("b", "a")] + [("b", "c")] * 3 + [("a", "c")] * 2
    ranked = bradley_terry(comparisons, items=["a", "b", "c", "d"])
    assert [r.item_id for r in ranked] == ["a", "b", "d", "c"]  # d never compared: score 0
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert ranked[2].score == 0.0
    p = preference_confidence(ranked, "a", "c")
    assert 0.5 < p < 1.0
    assert preference_confidence(ranked, "c", "a") == pytest.approx(1 - p)
    assert preference_confidence(ranked, "a", "a") == 0.5


def test_one_comparison_is_not_certainty() -> None:
    ranked = bradley_terry([("a", "b")])
    assert preference_confidence(ranked, "a", "b") == pytest.approx(2 / 3, abs=1e-6)  # Laplace's rule
    ten = bradley_terry([("a", "b")] * 10)
    assert preference_confidence(ten, "a", "b") == pytest.approx(11 / 12, abs=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=2, max_size=8, unique=True),
    st.randoms(use_true_random=False),
)
def test_bradley_terry_recovers_a_consistent_total_order(order: list[str], rng: random.Random) -> None:
    comparisons = [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    rng.shuffle(comparisons)
    ranked = bradley_terry(comparisons)
    assert [r.item_id for r in ranked] == order
    assert all(math.isfinite(r.score) for r in ranked)
    assert bradley_terry(list(reversed(comparisons))) == ranked


def test_disconnected_comparisons_still_rank() -> None:
    ranked = bradley_terry([("a", "b"), ("a", "b"), ("c", "d"), ("c", "d")])
    by_id = {r.item_id: r for r in ranked}
    assert by_id["a"].rank < by_id["b"].rank and by_id["c"].rank < by_id["d"].rank
    assert by_id["a"].score == pytest.approx(by_id["c"].score)


def test_ranking_from_orderings() -> None:
    orderings = [["a", "b", "c"], ["a", "c", "b"], ["b", "a", "c"], ["a", "b", "c"]]
    ranked = ranking_from_orderings(orderings)
    assert [r.item_id for r in ranked] == ["a", "b", "c"]
    assert ranking_from_orderings(list(reversed(orderings))) == ranked
    partial = ranking_from_orderings([["x", "y"], ["y", "z"]])
    assert [r.item_id for r in partial] == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("comparisons", "items", "message"),
    [
        ([], None, "no comparisons"),
        ([("a", "a")], None, "compared with itself"),
        ([("a", "b")], ["a"], "not in items: b"),
        ([("a", "")], None, "non-empty strings"),
        ([("a", "b", "c")], None, "winner_id, loser_id"),
    ],
)
def test_bradley_terry_refuses_bad_comparisons(
    comparisons: list[Any], items: list[str] | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        bradley_terry(comparisons, items=items)


@pytest.mark.parametrize(
    ("orderings", "message"),
    [([], "no orderings"), ([["a"]], "at least two"), ([["a", "b", "a"]], "twice"), (["ab"], "not a string")],
)
def test_orderings_refused(orderings: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        ranking_from_orderings(orderings)


def test_preference_confidence_needs_ranked_items() -> None:
    ranked = bradley_terry([("a", "b")])
    with pytest.raises(InvalidInput, match="'z' is not in the ranking"):
        preference_confidence(ranked, "a", "z")

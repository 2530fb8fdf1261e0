"""Curation: filters, PII scrubbing with scrubadub, exact and near-duplicate removal, a fixed holdout split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from teachloop.loop import CurationConfig, curate, holdout_side, near_duplicates, scrub_text
from teachloop.loop.curation import jaccard, row_text
from teachloop.loop.sources import Candidate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def chat(user: str, reply: str, *, i: int = 0, meta: dict[str, Any] | None = None, score: float = 1.0,
         system: str | None = None) -> Candidate:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return Candidate({"messages": msgs}, "feedback", T0 - timedelta(seconds=i), meta or {}, score,
                     {"source_trace_id": f"tr_{i}", "license": "LicenseRef-proprietary"})


def cfg(**kw: Any) -> CurationConfig:
    base: dict[str, Any] = {"pii": False, "holdout_frac": 0.0}
    return CurationConfig(**{**base, **kw})


def test_exact_duplicates_fold_case_and_whitespace_and_keep_the_newest() -> None:
    rows = [chat("What is 2+2?", "4", i=0), chat("what is  2+2?", "4 ", i=1), chat("What is 2+3?", "5", i=2)]
    report = curate(rows, cfg(near_dup_threshold=None))
    assert [r.candidate.lineage["source_trace_id"] for r in report.rows] == ["tr_0", "tr_2"]
    assert report.dropped["duplicate"] == 1 and report.counts()["kept"] == 2


def test_near_duplicates_are_removed_but_different_rows_kept() -> None:
    long = "Please summarise the quarterly report for the northern region and list the three main risks"
    rows = [
        chat(long, "Revenue grew; risks are churn, costs and hiring.", i=0),
        chat(long + " please", "Revenue grew; risks are churn, costs and hiring.", i=1),  # one word added
        chat("Translate good morning into French", "Bonjour", i=2),
    ]
    assert jaccard(row_text(rows[0]), row_text(rows[1])) > 0.75
    report = curate(rows, cfg(near_dup_threshold=0.7))
    assert report.dropped["near_duplicate"] == 1
    assert [r.candidate.lineage["source_trace_id"] for r in report.rows] == ["tr_0", "tr_2"]
    assert near_duplicates(["a b c d e f", "z y x w v u"], 0.5) == [False, False]


def test_a_shared_system_prompt_does_not_make_rows_near_duplicates() -> None:
    system = " ".join(f"rule{i}" for i in range(200))
    rows = [chat(f"What is {a} + {b}?", str(a + b), i=a * 10 + b, system=system) for a in range(3) for b in range(3)]
    assert len(curate(rows, cfg(near_dup_threshold=0.9)).rows) == 9


def test_pii_is_scrubbed_with_scrubadub() -> None:
    text = "Mail me at jane.doe@example.com or call +1 415 555 0132. What is 7 + 5?"
    clean = scrub_text(text)
    assert "jane.doe@example.com" not in clean and "555 0132" not in clean
    assert "{{EMAIL}}" in clean and "{{PHONE}}" in clean and "What is 7 + 5?" in clean
    report = curate([chat(text, "12", i=0), chat("What is 1 + 1?", "2", i=1)], cfg(pii=True, near_dup_threshold=None))
    assert report.pii_rows == 1
    assert "jane.doe" not in str(report.rows[0].candidate.content)
    assert report.rows[1].candidate.content["messages"][0]["content"] == "What is 1 + 1?"


def test_filters_on_metadata_score_and_length() -> None:
    rows = [chat("a", "1", i=0, meta={"app": "calc"}), chat("b", "2", i=1, meta={"app": "chat"}),
            chat("c", "3", i=2, meta={"app": "calc", "tier": "free"}, score=0.1), chat("d" * 500, "4", i=3,
                                                                                     meta={"app": "calc"})]
    report = curate(rows, cfg(metadata={"app": "calc"}, exclude_metadata={"tier": "free"}, max_chars=100,
                              near_dup_threshold=None))
    assert [r.candidate.lineage["source_trace_id"] for r in report.rows] == ["tr_0"]
    assert report.dropped == {"metadata": 1, "excluded_metadata": 1, "too_long": 1}
    scored = curate(rows[:3], cfg(min_score=0.5, near_dup_threshold=None))
    assert scored.dropped["score"] == 1


def test_the_holdout_split_is_a_fixed_function_of_the_prompt() -> None:
    rows = [chat(f"question {i}", f"answer {i}", i=i) for i in range(400)]
    first = curate(rows, cfg(holdout_frac=0.25, near_dup_threshold=None))
    again = curate(list(reversed(rows)), cfg(holdout_frac=0.25, near_dup_threshold=None))
    side = {r.candidate.prompt_key: r.split for r in first.rows}
    assert side == {r.candidate.prompt_key: r.split for r in again.rows}
    held = sum(1 for s in side.values() if s == "holdout")
    assert 60 < held < 140  # ~25% of 400
    other_seed = curate(rows, cfg(holdout_frac=0.25, holdout_seed=7, near_dup_threshold=None))
    assert {r.candidate.prompt_key: r.split for r in other_seed.rows} != side
    # the same prompt with another reply lands on the same side
    key = rows[0].prompt_key
    assert holdout_side(key, 0.25, 0) == side[key]
    assert holdout_side(chat("question 0", "something else").prompt_key, 0.25, 0) == side[key]
    assert holdout_side(key, 0.0, 0) == "train"


def test_max_rows_keeps_the_newest() -> None:
    rows = [chat(f"q{i}", f"a{i}", i=i) for i in range(10)]
    report = curate(rows, cfg(max_rows=3, near_dup_threshold=None))
    assert [r.candidate.lineage["source_trace_id"] for r in report.rows] == ["tr_0", "tr_1", "tr_2"]
    assert report.dropped["over_max_rows"] == 7


def test_cards_credentials_and_emails_are_scrubbed_correctly() -> None:
    assert scrub_text("pay with 4111-1111-1111-1111 today") == "pay with {{CREDIT_CARD}} today"
    assert scrub_text("pay with 4111 1111 1111 1111 today") == "pay with {{CREDIT_CARD}} today"
    assert scrub_text("card 4111111111111111") == "card {{CREDIT_CARD}}"
    assert scrub_text("my password: hunter2") == "my password: {{PASSWORD}}"
    assert scrub_text("api_key=sk-proj-AbC123dEf456GhI789") == "api_key={{SECRET}}"
    assert scrub_text("use sk-AbC123dEf456GhI789 for it") == "use {{SECRET}} for it"
    assert scrub_text("mail me at john.doe@example.com") == "mail me at {{EMAIL}}"
    assert scrub_text("Authorization: Bearer abcdefghijklmnop1234") == "Authorization: Bearer {{SECRET}}"
    # what is not PII stays: a number that fails the Luhn check, arithmetic, the word "at"
    for text in ("order 4111-1111-1111-1112 shipped", "What is 7 + 5?", "meet me at noon. Bye", "token budget: 5"):
        assert scrub_text(text) == text

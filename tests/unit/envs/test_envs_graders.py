"""Graders and answer extraction: each grader right, wrong and broken; weights; failures as data."""

from __future__ import annotations

import asyncio
import time

import pytest

from teachloop.core.chat import Message
from teachloop.core.rl import Task
from teachloop.envs import (
    ExactMatch,
    FunctionGrader,
    JsonSchema,
    LLMJudge,
    MathEquiv,
    NormalizedMatch,
    Numeric,
    RankingJudge,
    Regex,
    Sample,
    Score,
    ScriptedCompleter,
    boxed,
    final_answer,
    grader,
    last_number,
    tagged,
)
from teachloop.envs.graders import Grader


def task(answer: str | None = "11", **info: object) -> Task:
    return Task(id="t", prompt=(Message(role="user", content="What is 26 - 15?"),), answer=answer, info=dict(info))


def grade(g: Grader, text: str, t: Task | None = None) -> Score:
    return asyncio.run(g.grade(Sample.of(t or task(), text)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("26 - 15 = 11", "26 - 15 = 11"),
        ("Let me think. 26 - 15 = 11.\nanswer: 11", "11"),
        ("The answer is 11.", "11"),
        ("First 3, then <answer>7</answer> no wait <answer> 11 </answer>", "11"),
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("<think>answer: 3</think>Final answer: **12**", "12"),
        ("#### 1,234", "1,234"),
        ("<answer>42", "42"),
        ("   ", None),
    ],
)
def test_final_answer_prefers_the_last_explicit_marker(text: str, expected: str | None) -> None:
    assert final_answer(text) == expected


def test_last_number_reads_the_final_number_not_the_first() -> None:
    assert last_number("26 - 15 = 11") == "11"
    assert last_number("answer: 1,234.5") == "1234.5"
    assert last_number("answer: none") is None
    assert boxed("\\boxed{a{b}c}") == "a{b}c"
    assert boxed("no box") is None
    assert tagged("sql")("<sql>select 1</sql>") == "select 1"


def test_numeric_scores_the_restated_equation_right() -> None:
    assert grade(Numeric(), "26 - 15 = 11").value == 1.0  # a first-integer grader would say 26
    assert grade(Numeric(), "answer: 12").value == 0.0
    assert grade(Numeric(), "").value == 0.0
    assert grade(Numeric(rel_tol=0.01), "answer: 11.05").value == 1.0
    assert grade(Numeric(reference=3.14, abs_tol=0.01), "pi is about 3.141").value == 1.0


def test_exact_and_normalized_match() -> None:
    t = task("The Eiffel Tower")
    assert grade(ExactMatch(), "answer: The Eiffel Tower", t).value == 1.0
    assert grade(ExactMatch(), "answer: the eiffel tower", t).value == 0.0
    assert grade(ExactMatch(case_sensitive=False), "answer: the eiffel tower", t).value == 1.0
    assert grade(NormalizedMatch(), "Answer: eiffel tower!", t).value == 1.0
    assert grade(NormalizedMatch(), "Answer: the louvre", t).value == 0.0


def test_regex_with_answer_placeholder_and_fullmatch() -> None:
    assert grade(Regex(r"<think>.*</think>"), "<think>hm</think> 11").value == 1.0
    assert grade(Regex(r"\b{answer}\b"), "it is 11 ok").value == 1.0
    assert grade(Regex(r"\b{answer}\b"), "it is 111").value == 0.0
    assert grade(Regex(r"\d+", mode="fullmatch"), "11 apples").value == 0.0
    with pytest.raises(ValueError):
        Regex("x", mode="nope")


def test_missing_reference_is_a_failure_not_a_zero() -> None:
    s = grade(ExactMatch(), "answer: 11", task(answer=None))
    assert s.failure is not None and s.failure.kind == "grader" and "no answer" in s.failure.message
    assert s.value == 0.0


def test_json_schema_validity_and_field_match() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    t = task(answer=None, schema=schema, expected={"name": "Ana Silva", "age": 30})
    g = JsonSchema()
    assert grade(g, 'Sure: ```json\n{"name": "ana  silva", "age": 30}\n```', t).value == 1.0
    assert grade(g, '{"name": "Ana Silva", "age": 31}', t).value == 0.5
    assert grade(g, '{"name": "Ana Silva", "age": "30"}', t).value == 0.0  # schema violation
    assert grade(g, "no json here", t).value == 0.0
    assert grade(JsonSchema(fields=[]), '{"name": "x", "age": 1}', t).value == 1.0
    assert grade(g, '{"name": "x"}', task(answer=None)).failure is not None  # no schema anywhere


def test_math_equivalence() -> None:
    t = task("\\frac{1}{2}")
    assert grade(MathEquiv(), "so the result is \\boxed{0.5}", t).value == 1.0
    assert grade(MathEquiv(), "answer: 1/2", t).value == 1.0
    assert grade(MathEquiv(), "answer: 2/3", t).value == 0.0
    assert grade(MathEquiv(), "26 - 15 = 11", task("11")).value == 1.0


def test_function_grader_injects_by_name_and_rejects_unknown_parameters() -> None:
    @grader
    def longer_than_answer(completion: str, answer: str) -> float:
        return float(len(completion) > len(answer))

    assert grade(longer_than_answer, "eleven").value == 1.0
    assert longer_than_answer.name == "longer_than_answer"

    async def is_polite(completion: str) -> bool:
        return "please" in completion

    assert grade(FunctionGrader(is_polite), "11 please").value == 1.0
    with pytest.raises(ValueError, match="cannot inject"):
        FunctionGrader(lambda completion, banana: 1.0)


def test_grader_exceptions_timeouts_and_bad_values_become_failed_scores() -> None:
    def boom(completion: str) -> float:
        raise RuntimeError("kaboom")

    s = grade(FunctionGrader(boom), "x")
    assert s.failure is not None and "RuntimeError: kaboom" in s.failure.message and s.value == 0.0

    def slow(completion: str) -> float:
        time.sleep(0.5)
        return 1.0

    started = time.perf_counter()
    s = grade(FunctionGrader(slow, timeout_s=0.05), "x")
    assert s.failure is not None and "timed out" in s.failure.message
    assert time.perf_counter() - started < 0.4

    assert grade(FunctionGrader(lambda completion: float("nan")), "x").failure is not None
    assert grade(FunctionGrader(lambda completion: "yes"), "x").failure is not None


def test_weighted_combination_mean_components_and_kept_failure() -> None:
    combo = 0.75 * Numeric() + 0.25 * Regex(r"answer:")
    s = grade(combo, "26 - 15 = 11")
    assert s.value == pytest.approx(0.75)
    assert s.components == {"numeric": 1.0, "regex": 0.0}

    @grader(name="broken")
    def broken(completion: str) -> float:
        raise ValueError("nope")

    s = grade(Numeric() + broken, "answer: 11")
    assert s.value == pytest.approx(0.5)
    assert s.failure is not None and "nope" in s.failure.message
    assert s.components == {"numeric": 1.0, "broken": 0.0}
    dup = grade(Numeric() + Numeric(), "answer: 11")
    assert set(dup.components) == {"numeric", "numeric_2"}


def test_llm_judge_reads_the_last_score_line_and_fails_without_one() -> None:
    judge_model = ScriptedCompleter(["The response is right.\nscore: 8", "I cannot decide."])
    judge = LLMJudge("Is the arithmetic right?", judge_model, scale=(0, 10))
    s = grade(judge, "answer: 11")
    assert s.value == pytest.approx(0.8) and s.failure is None
    sent = judge_model.calls[0][0]
    assert "Is the arithmetic right?" in sent[-1].content and "answer: 11" in sent[-1].content
    assert "Reference answer" in sent[-1].content
    s = grade(judge, "answer: 11")
    assert s.failure is not None and "score" in s.failure.message


def test_ranking_judge_scores_a_group_and_fails_it_whole_on_a_bad_reply() -> None:
    samples = [Sample.of(task(), t) for t in ("answer: 11", "answer: 12", "answer: 10")]
    judge = RankingJudge("closest wins", ScriptedCompleter(['{"scores": [1, 0.2, 0.4]}', "[1, 0.5]"]))
    scores = asyncio.run(judge.grade_group(samples))
    assert [s.value for s in scores] == [1.0, 0.2, 0.4]
    scores = asyncio.run(judge.grade_group(samples))
    assert all(s.failure is not None and "2 scores for 3" in s.failure.message for s in scores)


def test_sample_from_a_logged_conversation() -> None:
    messages = [Message(role="user", content="What is 26 - 15?"), Message(role="assistant", content="26 - 15 = 11")]
    s = Sample.from_conversation(messages, answer="11")
    assert s.task.prompt == (messages[0],) and s.completion == "26 - 15 = 11"
    assert asyncio.run(Numeric().grade(s)).value == 1.0

"""OpenAI grader JSON: every grader type, templates, the multi formula, and the no-code environment."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput
from teachloop.core.rl import Task
from teachloop.envs import GraderJsonEnv, Sample, Score, ScriptedCompleter, from_openai_grader, load
from teachloop.envs.graders.openai import evaluate_formula, render
from teachloop.envs.graders.similarity import bleu, fuzzy_match, gleu, meteor, rouge_l, rouge_n, similarity
from teachloop.envs.rollout import rollout


def sample(text: str, **item: Any) -> Sample:
    return Sample.of(Task(id="i", prompt=(Message(role="user", content="q"),), answer=item.pop("answer", None),
                          info=item), text)


def grade(spec: dict[str, Any], text: str, judge: Any = None, **item: Any) -> Score:
    return asyncio.run(from_openai_grader(spec, judge=judge).grade(sample(text, **item)))


def test_templates_read_item_and_sample_fields() -> None:
    s = sample('{"city": "Lisbon"}', ref={"city": "Lisbon"}, n=3)
    assert render("{{ sample.output_json.city }}|{{item.ref.city}}|{{item.n}}|{{item.missing}}", s) == "Lisbon|Lisbon|3|"
    assert render("{{sample.output_text}}", s) == '{"city": "Lisbon"}'


@pytest.mark.parametrize(
    ("op", "text", "expected"),
    [("eq", "Paris", 1.0), ("eq", "paris", 0.0), ("ne", "Rome", 1.0), ("like", "It is Paris.", 1.0),
     ("like", "it is paris", 0.0), ("ilike", "it is PARIS", 1.0)],
)
def test_string_check(op: str, text: str, expected: float) -> None:
    spec = {"type": "string_check", "name": "sc", "input": "{{sample.output_text}}", "reference": "{{item.capital}}",
            "operation": op}
    assert grade(spec, text, capital="Paris").value == expected


def test_similarity_metrics_are_bounded_and_ordered() -> None:
    ref = "the cat sat on the mat"
    for fn in (bleu, gleu, meteor, rouge_l, fuzzy_match):
        assert fn(ref, ref) == pytest.approx(1.0, abs=0.01)  # METEOR keeps a tiny fragmentation penalty
        assert 0.0 <= fn("a dog ran in the park", ref) < fn("the cat sat on a mat", ref) <= 1.0
    assert rouge_n("the cat", ref, 1) == pytest.approx(2 * (1.0 * 2 / 6) / (1.0 + 2 / 6))
    assert similarity("rouge_3", ref, ref) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        similarity("cosine", "a", "b")


def test_text_similarity_keeps_pass_threshold() -> None:
    spec = {"type": "text_similarity", "name": "ts", "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
            "evaluation_metric": "fuzzy_match", "pass_threshold": 0.9}
    s = grade(spec, "hello world", ref="hello world!")
    assert s.value > 0.9 and s.details == {"passed": True}
    with pytest.raises(InvalidInput, match="cosine"):
        from_openai_grader({**spec, "evaluation_metric": "cosine"})


def test_score_model_and_label_model_use_the_judge() -> None:
    spec = {"type": "score_model", "name": "sm", "model": "judge", "range": [0, 10],
            "input": [{"role": "system", "content": "Grade 0-10."},
                      {"role": "user", "content": "Answer: {{sample.output_text}} Ref: {{item.answer}}"}]}
    judge = ScriptedCompleter(['{"result": 7, "steps": []}', "I'd say 12"])
    assert grade(spec, "11", judge, answer="11").value == 7.0
    assert judge.calls[0][0][1].content == "Answer: 11 Ref: 11"
    assert grade(spec, "11", judge, answer="11").value == 10.0  # clamped to range
    with pytest.raises(InvalidInput, match="judge"):
        from_openai_grader(spec)
    label = {"type": "label_model", "name": "lm", "model": "judge", "input": [{"role": "user", "content": "ok?"}],
             "labels": ["good", "bad"], "passing_labels": ["good"]}
    assert grade(label, "x", ScriptedCompleter(["This is good"])).value == 1.0
    assert grade(label, "x", ScriptedCompleter(["bad"])).value == 0.0
    assert grade(label, "x", ScriptedCompleter(["meh"])).failure is not None


def test_python_grader_runs_grade_and_reports_errors() -> None:
    src = "def grade(sample, item):\n    return float(sample['output_text'].strip() == item['answer'])\n"
    spec = {"type": "python", "name": "py", "source": src}
    assert grade(spec, " 11 ", answer="11").value == 1.0
    assert grade(spec, "12", answer="11").value == 0.0
    assert grade(spec, "12").failure is not None  # item has no 'answer': KeyError recorded
    with pytest.raises(InvalidInput, match="does not compile"):
        from_openai_grader({"type": "python", "name": "py", "source": "def grade(:"})
    with pytest.raises(InvalidInput, match="defines no grade"):
        from_openai_grader({"type": "python", "name": "py", "source": "x = 1"})


def test_multi_grader_formula() -> None:
    spec = {"type": "multi", "name": "m", "calculate_output": "0.5 * exact + 0.5 * max(sim, 0.2) ^ 1",
            "graders": {
                "exact": {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
                          "operation": "eq"},
                "sim": {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
                        "evaluation_metric": "fuzzy_match"},
            }}
    s = grade(spec, "Paris", answer="Paris")
    assert s.value == pytest.approx(1.0) and s.components == {"exact": 1.0, "sim": 1.0}
    assert grade(spec, "zzzzz", answer="Paris").value == pytest.approx(0.1)
    with pytest.raises(InvalidInput):
        from_openai_grader({**spec, "calculate_output": "__import__('os')"})
    assert evaluate_formula("floor(2.7) + sqrt(4) - -1", {}) == 5.0


@pytest.mark.parametrize(
    ("spec", "needle"),
    [({"type": "nope"}, "unknown OpenAI grader type"), ({"type": "string_check", "name": "x"}, "missing"),
     ({"type": "string_check", "input": "a", "reference": "b", "operation": "glob"}, "operation")],
)
def test_malformed_grader_json_is_rejected_clearly(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        from_openai_grader(spec)


def write_env(tmp_path: Path, wrapper: bool = True) -> Path:
    grader = {"type": "string_check", "name": "capital", "input": "{{sample.output_text}}",
              "reference": "{{item.capital}}", "operation": "ilike"}
    items = [{"messages": [{"role": "user", "content": f"Capital of {c}?"}], "capital": cap}
             for c, cap in [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima")]]
    (tmp_path / "capitals.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    spec: dict[str, Any] = grader
    if wrapper:
        spec = {"name": "capitals", "grader": grader, "items": "capitals.jsonl", "answer_field": "capital"}
    path = tmp_path / "capitals.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("wrapper", [True, False])
def test_grader_json_imports_as_a_no_code_environment(tmp_path: Path, wrapper: bool) -> None:
    env = load(str(write_env(tmp_path, wrapper)))
    assert isinstance(env, GraderJsonEnv)
    tasks = env.take(10)
    assert [t.id for t in tasks] == ["capitals-1", "capitals-2", "capitals-3"]
    assert [t.hash for t in env.take(3, seed=5)] == [t.hash for t in env.take(3, seed=5)]
    completer = ScriptedCompleter(lambda m: "Paris" if "France" in m[-1].content else "London")
    groups = asyncio.run(rollout(env, tasks, completer))
    assert [g.rewards for g in groups] == [[1.0], [0.0], [0.0]]


def test_grader_json_bad_files(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="cannot read"):
        GraderJsonEnv(tmp_path / "g.json")
    (tmp_path / "g.json").write_text(json.dumps({"type": "python", "name": "p", "source": "def grade(s, i): return 1"}))
    with pytest.raises(InvalidInput, match="items file not found"):
        GraderJsonEnv(tmp_path / "g.json")
    (tmp_path / "g.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(InvalidInput, match="needs 'messages'"):
        GraderJsonEnv(tmp_path / "g.json")


STRING = {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}


@pytest.mark.parametrize(("graders", "formula", "needle"), [
    ([STRING], "a", "graders must be a non-empty object"),
    ({}, "a", "graders must be a non-empty object"),
    ({"a": "string_check"}, "a", "must be grader objects"),
    ({"a b": STRING}, "a", "must be grader objects"),
    ({"a": STRING}, "1 / (a - a)", "ZeroDivisionError"),
    ({"a": STRING}, "b", "unsupported expression"),
    ({"a": STRING}, "", "formula string"),
])
def test_multi_grader_specs_are_refused_clearly(graders: Any, formula: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        from_openai_grader({"type": "multi", "name": "m", "graders": graders, "calculate_output": formula})


def test_a_formula_that_raises_on_a_sample_fails_that_sample() -> None:
    spec = {"type": "multi", "name": "m", "graders": {"a": STRING}, "calculate_output": "1 / a"}
    s = grade(spec, "wrong", answer="right")  # a = 0
    assert s.failure is not None and s.value == 0.0 and "calculate_output '1 / a' failed" in s.failure.message
    assert grade(spec, "right", answer="right").value == 1.0


@pytest.mark.parametrize(("extra", "needle"), [
    ({"reward_range": ["low", "high"]}, "reward_range must be two numbers"),
    ({"reward_range": [1, 0]}, "reward_range must be two numbers"),
    ({"reward_range": [0]}, "reward_range must be two numbers"),
    ({"items": []}, "items is empty"),
    ({"items": [{"prompt": "q"}, "x"]}, "are not JSON objects"),
    ({"items": 7}, "items must be a JSONL file name"),
    ({"grader": ["x"]}, "grader must be a JSON object"),
    ({"grader": {**STRING, "type": "score_model", "model": "m", "input": [], "range": ["a", 1]}},
     "score_model range must be two numbers"),
])
def test_grader_json_wrapper_fields_are_checked(tmp_path: Path, extra: dict[str, Any], needle: str) -> None:
    spec = {"name": "w", "grader": STRING, "items": [{"prompt": "q", "answer": "a"}], **extra}
    (tmp_path / "w.json").write_text(json.dumps(spec))
    with pytest.raises(InvalidInput, match=needle):
        load(str(tmp_path / "w.json"), judge=ScriptedCompleter(["1"]))

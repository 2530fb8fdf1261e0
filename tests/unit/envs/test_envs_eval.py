"""Evaluation statistics, the OpenAI-compatible completer, and the declared public surface."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
from typing import Any

import httpx
import pytest

import teachloop.envs as envs
from teachloop.core.chat import Message
from teachloop.core.sampling import SamplingParams
from teachloop.envs import Arithmetic, OpenAICompleter, ScriptedCompleter, evaluate, mean_ci95
from teachloop.envs.eval import t975


def test_t_quantiles_match_known_values() -> None:
    assert t975(1) == pytest.approx(12.706, abs=1e-3)
    assert t975(10) == pytest.approx(2.228, abs=1e-3)
    assert t975(40) == pytest.approx(2.021, abs=2e-3)
    assert t975(120) == pytest.approx(1.980, abs=2e-3)
    assert t975(10_000) == pytest.approx(1.960, abs=1e-3)


def test_mean_ci95_is_a_t_interval() -> None:
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    mean, lo, hi = mean_ci95(values)
    half = 2.365 * statistics.stdev(values) / math.sqrt(8)
    assert mean == 0.75 and lo == pytest.approx(0.75 - half, abs=1e-6) and hi == pytest.approx(0.75 + half, abs=1e-6)
    assert mean_ci95([0.5]) == (0.5, None, None)
    assert mean_ci95([1.0, 1.0]) == (1.0, 1.0, 1.0)


def test_evaluate_reports_mean_interval_and_failures_per_task() -> None:
    env = Arithmetic(level=2)
    tasks = env.take(6, seed=2)
    right = {t.prompt[-1].content: t.answer for t in tasks[:4]}

    def script(messages: list[Message]) -> str:
        q = messages[-1].content
        if q == tasks[5].prompt[-1].content:
            raise TimeoutError("endpoint too slow")
        return f"answer: {right.get(q, 'nope')}"

    report = asyncio.run(evaluate(env, ScriptedCompleter(script), n=6, group_size=2, seed=2, model="scripted"))
    assert report.n_tasks == 6 and report.n_episodes == 12 and report.group_size == 2
    assert report.mean == pytest.approx(4 / 6)
    assert report.ci_low is not None and report.ci_high is not None and report.ci_low < report.mean < report.ci_high
    assert report.failure_counts == {"model": 2}
    [failure] = report.failures
    assert failure.task_id == tasks[5].id and failure.count == 2 and "endpoint too slow" in failure.message
    assert report.task_means[tasks[0].id] == 1.0 and "student-t" in report.ci_method
    json.dumps(report.model_dump(mode="json"))


def test_openai_completer_speaks_chat_completions() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append({"url": str(request.url), "auth": request.headers.get("authorization"), **body})
        choice = {"message": {"role": "assistant", "content": None,
                              "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "guess", "arguments": {"number": 5}}}]}}
        return httpx.Response(200, json={"choices": [choice]})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    completer = OpenAICompleter("http://x/v1/", "m", api_key="k", client=client)
    from teachloop.envs.builtin.guess_number import guess

    out = asyncio.run(completer.complete([Message(role="user", content="hi")],
                                         SamplingParams(max_tokens=9, temperature=0.5, seed=3, stop=["\n"]),
                                         n=2, tools=[guess.spec]))
    assert len(out) == 2 and len(seen) == 2  # the server returned one choice: the second was asked for again
    call = out[0].message.tool_calls[0]
    assert (call.name, json.loads(call.arguments), out[0].turn) == ("guess", {"number": 5}, None)
    first = seen[0]
    assert first["url"] == "http://x/v1/chat/completions" and first["auth"] == "Bearer k"
    assert (first["model"], first["max_tokens"], first["temperature"], first["seed"], first["stop"], first["n"]) == (
        "m", 9, 0.5, 3, ["\n"], 2)
    assert first["tools"][0]["function"]["name"] == "guess" and "top_k" not in first


def test_openai_completer_http_errors_become_model_failures() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(503, text="overloaded")))
    completer = OpenAICompleter("http://x/v1", "m", client=client)
    env = Arithmetic()
    report = asyncio.run(evaluate(env, completer, n=2))
    assert report.mean == 0.0 and report.failure_counts == {"model": 2}
    assert "HTTP 503" in report.failures[0].message


def test_public_surface_is_declared_and_importable() -> None:
    assert sorted(envs.__all__) == sorted(set(envs.__all__))
    for name in envs.__all__:
        assert getattr(envs, name) is not None, name
    for module in ("base", "rollout", "graders.base", "registry", "check", "eval", "manifest", "adapters.trl",
                   "builtin.arithmetic", "builtin.countdown", "builtin.json_extract", "builtin.guess_number"):
        doc = __import__(f"teachloop.envs.{module}", fromlist=["x"]).__doc__
        assert doc and len(doc.strip()) > 40, module


def test_builtin_environments_fit_on_one_screen() -> None:
    import inspect

    for cls in envs.BUILTINS.values():
        lines = inspect.getsource(inspect.getmodule(cls)).splitlines()  # type: ignore[arg-type]
        assert len(lines) <= 100, (cls.__name__, len(lines))

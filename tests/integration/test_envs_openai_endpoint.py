"""Environments against a real HTTP endpoint: `env eval --base-url` and an LLM judge over /v1/chat/completions.

The endpoint is a small OpenAI-compatible server in a thread (no model): it
solves "What is A + B?" questions, and acts as a judge when asked for a score.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.envs import LLMJudge, Sample, load


class _Handler(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        last = body["messages"][-1]["content"]
        if "## Rubric" in last:
            reply = "Correct and concise.\nscore: 9"
        elif m := re.search(r"What is (\d+) ([+-]) (\d+)\?", last):
            a, op, b = int(m[1]), m[2], int(m[3])
            reply = f"{a} {op} {b} = {a + b if op == '+' else a - b}"
        else:
            reply = "I don't know"
        out = {"id": "x", "object": "chat.completion", "model": body["model"],
               "choices": [{"index": i, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                           for i in range(body.get("n", 1))]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.requests.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_env_eval_against_an_openai_compatible_endpoint(endpoint: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["env", "eval", "arithmetic?level=2", "--base-url", endpoint, "--model", "m",
                                      "--api-key", "k", "-n", "5", "-g", "2", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mean"] == 1.0 and report["n_episodes"] == 10 and report["failures"] == []
    first = _Handler.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k" and first["model"] == "m"
    assert first["n"] == 2 and first["temperature"] == 0.0  # the group's first turn is one request


def test_llm_judge_over_http(endpoint: str) -> None:
    env = load("arithmetic")
    task = env.take(1)[0]
    judge = LLMJudge.openai("Is the answer right?", base_url=endpoint, model="judge")
    score = asyncio.run(judge.grade(Sample.of(task, f"answer: {task.answer}")))
    assert score.failure is None and score.value == pytest.approx(0.9)

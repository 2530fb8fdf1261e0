"""No answered call loses its trace: ``teachloop serve`` is SIGKILLed under concurrent load, then the store is checked.

The server is a real ``teachloop serve`` process on the tiny Llama; eight client
threads send streaming and non-streaming chat requests without pause. A trace id
counts as answered when the client got the whole response (the JSON body, or
``data: [DONE]``). After the kill, every answered trace id must be in the database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.core.settings import Settings
from teachloop.store import Database
from teachloop.store.schema.traces import Trace
from tests._tiny import tiny_llama

KEY = re.compile(r"tl_[a-z2-7]{12}_[a-z2-7]{52}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str, key: str) -> bool:
    try:
        r = httpx.get(f"{url}/api/serving/stats", headers={"Authorization": f"Bearer {key}"}, timeout=1)
        return r.status_code == 200 and bool(r.json().get("running"))
    except httpx.HTTPError:
        return False


def test_sigkill_under_load_loses_no_answered_trace(
    teachloop_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_llama(tmp_path)
    monkeypatch.setenv("TEACHLOOP_MODEL", str(model))
    init = CliRunner().invoke(app, ["admin", "init"])
    assert init.exit_code == 0, init.output
    [key] = set(KEY.findall(init.output))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TEACHLOOP_MODEL": str(model)}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", "from teachloop.cli.main import main; main()", "serve", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    answered: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    headers = {"Authorization": f"Bearer {key}"}

    def client(worker: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"model": str(model), "messages": [{"role": "user", "content": f"hello {worker} {i}"}],
                        "max_tokens": 4 + (worker * 7 + i) % 20, "stream": i % 2 == 0}
                try:
                    if body["stream"]:
                        with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                            trace_id = r.headers.get("x-teachloop-trace-id")
                            lines = [line for line in r.iter_lines() if line]
                            if r.status_code == 200 and lines and lines[-1] == "data: [DONE]":
                                answered.append(str(trace_id))
                    else:
                        r = http.post(f"{url}/v1/chat/completions", json=body, headers=headers)
                        if r.status_code == 200:
                            answered.append(json.loads(r.text)["id"].removeprefix("chatcmpl-"))
                        else:
                            errors.append(r.text)
                except httpx.HTTPError:
                    if not stop.is_set():
                        time.sleep(0.01)

    try:
        deadline = time.monotonic() + 120
        while not _ready(url, key):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start serving"
            time.sleep(0.2)
        workers = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(8)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 120
        while len(answered) < 40:
            assert time.monotonic() < deadline, f"only {len(answered)} answers; errors: {errors[:3]}"
            time.sleep(0.05)
        stats = httpx.get(f"{url}/api/serving/stats", headers=headers, timeout=5).json()
        proc.send_signal(signal.SIGKILL)  # mid-load: requests are in flight and traces are queued
        proc.wait(10)
        stop.set()
        for w in workers:
            w.join(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()

    assert not errors, errors[:3]
    assert stats["traces"]["written"] >= 40 and stats["requests"]["completed"] >= 40
    database = Database(Settings.from_env().database_url)
    try:
        with database.session(write=False) as session:
            stored = {t for (t,) in session.query(Trace.id).filter(Trace.id.in_(answered))}
    finally:
        database.close()
    missing = sorted(set(answered) - stored)
    assert not missing, f"{len(missing)} of {len(answered)} answered traces lost: {missing[:5]}"

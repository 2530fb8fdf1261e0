"""``teachloop serve``, ``up`` and ``worker`` as real processes, called over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.core.settings import Settings
from teachloop.store import Database, JobQueue, JobStatus, Tenancy

KEY = re.compile(r"tl_[a-z2-7]{12}_[a-z2-7]{52}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A ``teachloop`` subprocess whose output is collected in the background."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TEACHLOOP_SKIP_MODEL_PULL": "1", **(env or {})}
        code = "from teachloop.cli.main import main; main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, predicate: object, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before {what}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.output}")
            time.sleep(0.1)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(5)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_answers_healthz_and_whoami_over_http(teachloop_home: Path, processes: list[Process]) -> None:
    init = CliRunner().invoke(app, ["admin", "init", "--email", "ops@example.com"])
    assert init.exit_code == 0, init.output
    [secret] = set(KEY.findall(init.output))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = Process("serve", "--port", str(port))
    processes.append(server)
    server.wait_until(lambda: _healthy(url), "/healthz")
    assert httpx.get(f"{url}/healthz").json()["database"] == "ok"
    me = httpx.get(f"{url}/api/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200
    assert (me.json()["user"]["email"], me.json()["role"]) == ("ops@example.com", "owner")
    denied = httpx.get(f"{url}/api/whoami")
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "invalid_api_key"
    assert server.stop() == 0
    assert f"serving at {url}" in server.output and "worker    none in this process" in server.output


def test_up_initialises_serves_and_runs_jobs(teachloop_home: Path, processes: list[Process]) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    up = Process("up", "--port", str(port))
    processes.append(up)
    up.wait_until(lambda: _healthy(url), "/healthz")
    [secret] = set(KEY.findall(up.output))
    assert f"export TEACHLOOP_API_KEY={secret}" in up.output
    assert httpx.get(f"{url}/api/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 200

    database = Database(Settings.from_env().database_url)
    try:
        with database.session(write=False) as session:
            [org] = Tenancy(session).list_orgs()
        queue = JobQueue(database)
        job_id = queue.enqueue("echo", {"ping": 1}, org.id)
        up.wait_until(
            lambda: queue.get(org.id, job_id).status == JobStatus.SUCCEEDED, "the in-process worker"
        )
        assert queue.get(org.id, job_id).result == {"echo": {"ping": 1}}
    finally:
        database.close()
    assert up.stop(signal.SIGTERM) == 0


def test_worker_process_runs_jobs_and_stops_cleanly(teachloop_home: Path, processes: list[Process]) -> None:
    assert CliRunner().invoke(app, ["admin", "init"]).exit_code == 0
    database = Database(Settings.from_env().database_url)
    try:
        with database.session(write=False) as session:
            [org] = Tenancy(session).list_orgs()
        queue = JobQueue(database)
        job_id = queue.enqueue("echo", {"n": 2}, org.id)
        worker = Process("worker", "--id", "scale-out-1", "--poll-interval", "0.1")
        processes.append(worker)
        worker.wait_until(
            lambda: queue.get(org.id, job_id).status == JobStatus.SUCCEEDED, "the worker process"
        )
        assert queue.get(org.id, job_id).lease_owner == "scale-out-1"
    finally:
        database.close()
    assert worker.stop(signal.SIGTERM) == 0


def test_serve_refuses_an_unmigrated_database(teachloop_home: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--port", str(_free_port())])
    assert result.exit_code == 2
    assert result.output.startswith("error: database sqlite:///") and "teachloop admin init" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_busy_port_is_one_line(teachloop_home: Path) -> None:
    assert CliRunner().invoke(app, ["admin", "init"]).exit_code == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args in (["serve"], ["up", "--skip-model"]):
            result = CliRunner().invoke(app, [*args, "--port", str(port)])
            assert result.exit_code == 2, result.output
            assert f"error: cannot listen on 127.0.0.1:{port}" in result.output


def test_up_refuses_an_unknown_model_before_writing_anything(
    teachloop_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEACHLOOP_MODEL", "no-such-model")
    result = CliRunner().invoke(app, ["up", "--port", str(_free_port())])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: unknown model 'no-such-model'"), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not teachloop_home.exists()  # no database, no key, no model cache


def test_up_refuses_a_missing_model_folder(teachloop_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = teachloop_home.parent / "nowhere" / "model"
    monkeypatch.setenv("TEACHLOOP_MODEL", str(missing))
    result = CliRunner().invoke(app, ["up", "--port", str(_free_port())])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: no model folder at {missing}"
    assert not teachloop_home.exists()


def test_up_serves_the_configured_model(teachloop_home: Path, processes: list[Process]) -> None:
    from tests._tiny import tiny_llama

    model = tiny_llama(teachloop_home.parent / "models")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    up = Process(
        "up", "--port", str(port),
        env={"TEACHLOOP_SKIP_MODEL_PULL": "0", "TEACHLOOP_MODEL": str(model), "TEACHLOOP_ENGINE": "torch"},
    )
    processes.append(up)
    up.wait_until(lambda: _healthy(url), "/healthz", timeout=120)
    assert f"checking the model {str(model)!r}" in up.output, up.output  # paths are never wrapped
    assert f"model ready at {model}" in up.output
    assert f"inference: {model} on cpu" in up.output, up.output
    assert "smollm2" not in up.output  # the default model is neither pulled nor loaded
    assert up.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_up_lets_a_pullable_model_through_the_early_check(tmp_path: Path, model: str) -> None:
    from teachloop.cli.server import _check_model

    config = Settings.from_env({"TEACHLOOP_HOME": str(tmp_path / "home"), "TEACHLOOP_MODEL": model})
    _check_model(config)  # a known name or a hub id is pulled later, after the database is ready
    assert not (tmp_path / "home").exists()  # and the check itself wrote nothing

"""``teachloop env``: help, new, check, publish (idempotent, immutable, refused when broken), list, info, yank, eval."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import teachloop.cli.env as env_cli
from teachloop.cli.main import app
from teachloop.core.chat import Message
from teachloop.envs import ScriptedCompleter
from teachloop.store.schema import EnvironmentVersion

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    for var in ("TEACHLOOP_DATABASE_URL", "TEACHLOOP_BLOB_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Any:
    return runner.invoke(app, ["env", *args])


@pytest.mark.parametrize("command", ["", "new", "check", "eval", "publish", "list", "info", "yank"])
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, ["env", *([command] if command else []), "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_new_then_check_passes_and_a_broken_package_names_its_failing_check(home: Path) -> None:
    assert run("new", "word-rev").exit_code == 0
    result = run("check", "word-rev")
    assert result.exit_code == 0, result.output
    assert "imports_offline" in result.output and "fail" not in result.output
    env_py = home / "word-rev/src/word_rev/env.py"
    env_py.write_text(env_py.read_text().replace("rng.choice(WORDS)", "random.choice(WORDS)"))
    result = run("check", "word-rev", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout.splitlines()[0])
    assert [r["name"] for r in report["results"] if r["status"] == "fail"] == ["deterministic"]
    assert "failed: deterministic" in result.output
    assert run("new", "word-rev").exit_code == 2  # exists: a clear refusal


def test_publish_list_info_yank_and_immutability(home: Path) -> None:
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    assert run("new", "word-rev").exit_code == 0
    first = run("publish", "word-rev")
    assert first.exit_code == 0 and "published word-rev@0.1.0" in first.output, first.output
    digest = re.search(r"sha256:[0-9a-f]{64}", first.output)
    assert digest is not None
    again = run("publish", "word-rev")
    assert again.exit_code == 0 and "already published" in again.output
    (home / "word-rev/README.md").write_text("changed\n")
    changed = run("publish", "word-rev")
    assert changed.exit_code == 2 and "immutable: bump the version" in changed.output

    listed = run("list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {"name": "word-rev", "version": "0.1.0", "digest": digest.group(0), "yanked": False} in rows
    assert {r["name"] for r in rows} >= {"arithmetic", "countdown", "json_extract", "guess_number"}

    rechecked = run("check", "word-rev@0.1.0")  # the published archive, fetched and verified
    assert rechecked.exit_code == 0 and "concurrent_episodes" in rechecked.output, rechecked.output

    info = run("info", "word-rev@0.1.0")
    assert info.exit_code == 0 and json.loads(info.stdout)["manifest"]["license"] == "Apache-2.0"
    checks = json.loads(info.stdout)["checks"]  # the publish-time checks, stored with the version
    assert checks["ok"] is True and {r["name"]: r["status"] for r in checks["results"]}["imports_offline"] == "pass"

    assert run("yank", "word-rev@0.1.0", "--reason", "typo").exit_code == 0
    assert json.loads(run("info", "word-rev@0.1.0").stdout)["yanked"] is True
    missing = run("info", "word-rev@9.0.0")
    assert missing.exit_code == 2 and "not published" in missing.output


def test_publish_refuses_a_package_that_fails_its_checks(home: Path) -> None:
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    run("new", "badenv")
    env_py = home / "badenv/src/badenv/env.py"
    env_py.write_text(env_py.read_text().replace("rng.choice(WORDS)", "random.choice(WORDS)"))
    result = run("publish", "badenv")
    assert result.exit_code == 2 and "refusing to publish: check failed (deterministic)" in result.output
    assert '"badenv"' not in run("list", "--json").stdout  # nothing was stored


def solve(messages: list[Message]) -> str:
    expr = re.search(r"What is (.+)\?", messages[-1].content)
    return f"answer: {eval(expr.group(1))}" if expr else "?"  # the question holds digits and + - only


def test_eval_prints_the_interval_stores_the_result_and_pins_the_digest(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    monkeypatch.setattr(env_cli, "_engine_completer", lambda model, adapter: ScriptedCompleter(solve))
    result = run("eval", "arithmetic?level=1", "-n", "6", "-g", "2", "--json", str(home / "report.json"))
    assert result.exit_code == 0, result.output
    assert "mean reward 1.000" in result.output and "stored as enve_" in result.output
    report = json.loads((home / "report.json").read_text())
    assert report["n_episodes"] == 12 and report["metadata"]["env_digest"].startswith("sha256:")

    run("new", "word-rev")
    assert run("publish", "word-rev").exit_code == 0
    monkeypatch.setattr(env_cli, "_engine_completer", lambda model, adapter: ScriptedCompleter(["answer: nope"]))
    result = run("eval", "word-rev@0.1.0", "-n", "3", "--no-store")
    assert result.exit_code == 0 and "mean reward 0.000" in result.output and "stored" not in result.output
    result = run("eval", "word-rev@0.1.0", "-n", "3")
    info = json.loads(run("info", "word-rev@0.1.0").stdout)
    assert info["recent_evals"][0]["mean"] == 0.0


def test_eval_without_a_database_still_reports(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env_cli, "_engine_completer", lambda model, adapter: ScriptedCompleter(solve))
    result = run("eval", "arithmetic", "-n", "2")
    assert result.exit_code == 0 and "mean reward 1.000" in result.output and "not stored" in result.output


def test_archive_is_reproducible(home: Path) -> None:
    root = home / "pkg"
    run("new", "pkg", "--dir", str(root))
    assert env_cli.archive(root) == env_cli.archive(root)


def _blob_files(home: Path) -> set[Path]:
    return {p for p in (home / "home/blobs").rglob("*") if p.is_file()}


def test_a_refused_publish_uploads_nothing(home: Path) -> None:
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    assert run("new", "word-rev").exit_code == 0
    assert run("publish", "word-rev").exit_code == 0
    before = _blob_files(home)
    assert before
    (home / "word-rev/README.md").write_text("changed again\n")
    changed = run("publish", "word-rev")
    assert changed.exit_code == 2 and "immutable: bump the version" in changed.output
    assert _blob_files(home) == before  # the archive of the refused version was never uploaded


def test_eval_and_training_refuse_a_yanked_version_alike(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    run("new", "word-rev")
    assert run("publish", "word-rev").exit_code == 0
    assert run("yank", "word-rev@0.1.0", "--reason", "reward hack").exit_code == 0
    monkeypatch.setattr(env_cli, "_engine_completer", lambda model, adapter: ScriptedCompleter(["answer: x"]))
    result = run("eval", "word-rev@0.1.0", "-n", "2")
    assert result.exit_code == 2 and "yanked (reward hack)" in result.output and "refuse yanked" in result.output
    assert run("info", "word-rev@0.1.0").exit_code == 0  # still inspectable
    assert "training and eval refuse it" in run("yank", "--help").output


class _Down:
    async def complete(self, *a: Any, **k: Any) -> Any:
        raise ConnectionError("connection refused")


def test_eval_refuses_to_store_when_the_model_never_answered(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    monkeypatch.setattr(env_cli, "_engine_completer", lambda model, adapter: _Down())
    result = run("eval", "arithmetic", "-n", "4", "--json", str(home / "r.json"))
    assert result.exit_code == 1 and "not stored: 4 of 4 episodes got no reply" in result.output, result.output
    assert "connection refused" in result.output and "stored as" not in result.output
    assert json.loads((home / "r.json").read_text())["failure_counts"] == {"model": 4}  # the report is still written
    from teachloop.envs import EvalReport

    def report(model: int, n: int) -> EvalReport:
        return EvalReport(env="e", seed=0, n_tasks=n, group_size=1, n_episodes=n, mean=0.0, ci_low=None, ci_high=None,
                          failure_counts={"model": model} if model else {})

    assert env_cli.unreachable_reason(report(2, 4)) is None  # half is not more than half
    assert env_cli.unreachable_reason(report(3, 4)) is not None


def test_eval_refuses_an_adapter_with_an_endpoint(home: Path) -> None:
    result = run("eval", "arithmetic", "--base-url", "http://127.0.0.1:9/v1", "--adapter", str(home))
    assert result.exit_code == 2 and "--adapter" in result.output and "--base-url" in result.output


# ---------------------------------------------------------------------------------------------- --remote


@pytest.fixture
def server(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """A real teachloop server (uvicorn, its own database and blobs, the fake engine) and its worker, in threads;
    ``TEACHLOOP_API_KEY`` is its owner key. The CLI's own home has no database at all."""
    from teachloop.app import AppDeps, create_app, job_handlers
    from teachloop.cli.demo import serve_in_thread
    from teachloop.core.settings import Settings
    from teachloop.store import BlobStore, Database, Worker, bootstrap
    from tests._tiny import tiny_llama

    root = home / "server"
    model = tiny_llama(root / "models")
    settings = Settings(home=root, model_cache=root / "cache", database_url=f"sqlite:///{root / 's.db'}",
                        blob_url=str(root / "blobs"), engine="fake", model=str(model))
    database = Database(settings.database_url)
    database.migrate()
    with database.session() as s:
        first = bootstrap(s, "acme", "owner@acme.test")
        assert first.key is not None
        monkeypatch.setenv("TEACHLOOP_API_KEY", first.key.secret)
    deps = AppDeps(settings, database, BlobStore(settings.blob_url))
    stop = threading.Event()

    def work() -> None:
        worker = Worker(deps.queue, job_handlers(deps), worker_id="w")
        while not stop.is_set():
            if worker.run_once() is None:
                stop.wait(0.1)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        with serve_in_thread(create_app(deps)) as url:
            yield url, deps
    finally:
        stop.set()
        thread.join(30)
        deps.close()


def _flat(text: str) -> str:
    """``text`` with every run of whitespace as one space (rich wraps long lines at the console's width)."""
    return " ".join(text.split())


def test_remote_publish_list_info_eval_yank_go_through_the_server(home: Path, server: tuple[str, Any]) -> None:
    url, deps = server
    assert run("new", "word-rev").exit_code == 0
    first = run("publish", "word-rev", "--remote", url)
    assert first.exit_code == 0 and "published word-rev@0.1.0 (sha256:" in _flat(first.output), first.output
    digest = re.search(r"sha256:[0-9a-f]{64}", first.output)
    assert digest is not None
    again = run("publish", "word-rev", "--remote", url)
    assert again.exit_code == 0 and "already published" in again.output

    rows = [json.loads(line) for line in run("list", "--json", "--remote", url).stdout.splitlines()]
    assert {"name": "word-rev", "version": "0.1.0", "digest": digest.group(0), "yanked": False} in rows
    assert "arithmetic" in {r["name"] for r in rows}  # installed on the server
    assert '"word-rev"' not in run("list", "--json").stdout  # the local home has no database: nothing published

    info = json.loads(run("info", "word-rev@0.1.0", "--remote", url).stdout)
    assert info["digest"] == digest.group(0) and info["checks"]["ok"] is True
    assert {c["name"] for c in info["checks"]["results"]} >= {"imports_offline", "deterministic", "adversarial"}

    evaluated = run("eval", "arithmetic", "-n", "2", "--remote", url, "--json", str(home / "remote.json"))
    assert evaluated.exit_code == 0 and "mean reward" in _flat(evaluated.output) and "stored as enve_" in _flat(evaluated.output), \
        evaluated.output
    assert json.loads((home / "remote.json").read_text())["result"]["n_tasks"] == 2
    with deps.database.session(write=False) as s:
        from teachloop.store.repos.environments import EnvironmentRegistry

        org = s.scalars(select(EnvironmentVersion.org_id)).first()
        assert [e.n_tasks for e in EnvironmentRegistry(s).evals(org, "arithmetic")] == [2]

    yanked = run("yank", "word-rev@0.1.0", "--reason", "typo", "--remote", url)
    assert yanked.exit_code == 0 and "yanked word-rev@0.1.0" in _flat(yanked.output)
    refused = run("eval", "word-rev@0.1.0", "-n", "2", "--remote", url)
    assert refused.exit_code == 1 and "is yanked (typo)" in _flat(refused.output), refused.output


def test_remote_publish_of_a_failing_package_names_the_check_and_stores_nothing(
    home: Path, server: tuple[str, Any]
) -> None:
    url, deps = server
    run("new", "badenv")
    env_py = home / "badenv/src/badenv/env.py"
    env_py.write_text(env_py.read_text().replace("rng.choice(WORDS)", "random.choice(WORDS)"))
    result = run("publish", "badenv", "--remote", url)
    assert result.exit_code == 2 and "refusing to publish: check failed (deterministic)" in result.output
    with deps.database.session(write=False) as s:
        assert s.scalars(select(EnvironmentVersion)).first() is None
    missing = run("info", "badenv@0.1.0", "--remote", url)
    assert missing.exit_code == 2 and "no published environment 'badenv'" in missing.output


@pytest.mark.parametrize("flag", [["--base-url", "http://127.0.0.1:9/v1"], ["--no-store"],
                                  ["--judge-base-url", "http://127.0.0.1:9/v1"]])
def test_remote_eval_refuses_local_only_options(home: Path, flag: list[str]) -> None:
    result = run("eval", "arithmetic", "--remote", "http://127.0.0.1:9", *flag)
    assert result.exit_code == 2 and "applies to a local evaluation" in result.output and flag[0] in result.output

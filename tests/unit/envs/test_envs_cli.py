"""``teachloop env``: help, new, check, publish (idempotent, immutable, refused when broken), list, info, yank, eval."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import teachloop.cli.env as env_cli
from teachloop.cli.main import app
from teachloop.core.chat import Message
from teachloop.envs import ScriptedCompleter

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

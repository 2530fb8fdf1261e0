"""``teachloop deploy`` and ``teachloop traces`` against the configured database and blob store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.core.ids import new_id
from teachloop.core.settings import Settings
from teachloop.store import Database, Tenancy
from teachloop.store.repos.deployments import Deployments
from teachloop.store.repos.traces import Traces
from teachloop.store.schema.traces import Trace
from tests.unit.serve.fakes import adapter_folder

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def fail(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


@pytest.fixture
def home(teachloop_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEACHLOOP_MODEL", "base-m")
    run("admin", "init")
    return teachloop_home


def _db() -> Database:
    return Database(Settings.from_env().database_url)


def test_deploy_push_create_update_rollback_list_history(home: Path, tmp_path: Path) -> None:
    out = run("deploy", "push", "bot", str(adapter_folder(tmp_path, "one")))
    assert "stored adapter bot@1" in out
    assert "already stored" in run("deploy", "push", "bot", str(adapter_folder(tmp_path, "one")))
    out = run("deploy", "create", "support", "--adapter", "bot@1")
    assert "support" in out and "bot@1" in out and "base-m" in out
    # a folder is pushed as the next version of the adapter named like the deployment
    out = run("deploy", "update", "support", "--adapter", str(adapter_folder(tmp_path, "two")))
    assert "pushed adapter support@1" in out
    run("deploy", "push", "bot", str(adapter_folder(tmp_path, "three")))
    out = run("deploy", "update", "support", "--canary", "bot", "--canary-percent", "25")
    assert "bot@2 @ 25%" in out
    assert "nothing changed" in run("deploy", "update", "support", "--canary-percent", "25")
    run("deploy", "rollback", "support")
    out = run("deploy", "history", "support")
    assert "rollback to r2" in out and "create" in out
    assert "support@1" in run("deploy", "list")
    out = run("deploy", "adapters")
    assert "bot@2" in out and "bot@1" in out and "support@1" in out
    database = _db()
    try:
        with database.session(write=False) as s:
            [org] = Tenancy(s).list_orgs()
            dep = Deployments(s).get(org.id, "support")
            assert dep.revision == 4 and dep.canary_version_id is None
    finally:
        database.close()


def test_deploy_refuses_bad_input_in_one_line(home: Path, tmp_path: Path) -> None:
    assert "adapter 'nope' not found" in fail("deploy", "create", "support", "--adapter", "nope")
    assert "--canary-percent needs --canary" in fail("deploy", "create", "support", "--canary-percent", "5")
    assert "invalid name" in fail("deploy", "create", "bad name")
    run("deploy", "create", "support")
    assert "already exists" in fail("deploy", "create", "support")
    assert "no earlier state" in fail("deploy", "rollback", "support")
    assert "nothing to change" in fail("deploy", "update", "support")
    assert "not a PEFT adapter folder" in fail("deploy", "push", "bot", str(tmp_path))
    assert "deployment 'x' not found" in fail("deploy", "update", "x", "--adapter", "base")


def _seed_traces() -> tuple[str, list[str]]:
    database = _db()
    try:
        with database.session() as s:
            [org] = Tenancy(s).list_orgs()
            now = datetime.now(UTC)
            ids = []
            for i, (model, app_name) in enumerate([("support", "web"), ("support", "ios"), ("other", "web")]):
                trace_id = new_id("tr")
                ids.append(trace_id)
                s.add(Trace(
                    id=trace_id, org_id=org.id, model=model, base_model="base-m",
                    messages=[{"role": "user", "content": f"question {i}"}],
                    choices=[{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"},
                              "finish_reason": "stop"}],
                    params={}, finish_reason="stop", prompt_tokens=3, completion_tokens=2, latency_ms=5.0,
                    request_metadata={"app": app_name}, created_at=now - timedelta(hours=3 - i),
                ))
            s.flush()
            Traces(s).add_feedback(org.id, ids[0], score=0.9, label="good")
            Traces(s).add_feedback(org.id, ids[1], score=0.2, corrected_output={"role": "assistant", "content": "fixed"})
            return org.id, ids
    finally:
        database.close()


def test_traces_list_show_and_export(home: Path, tmp_path: Path) -> None:
    _, ids = _seed_traces()
    out = run("traces", "list", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids[::-1]

    def listed(*args: str) -> list[str]:
        return [json.loads(line)["id"] for line in run("traces", "list", "--json", *args).splitlines()]

    assert listed("--model", "support") == [ids[1], ids[0]] == listed("--deployment", "support")
    assert listed("--feedback") == [ids[1], ids[0]] and listed("--no-feedback") == [ids[2]]
    assert listed("--min-score", "0.5") == [ids[0]] and listed("--max-score", "0.5") == [ids[1]]
    assert listed("--meta", "app=web") == [ids[2], ids[0]]
    assert listed("--since", "150m") == [ids[2], ids[1]]
    assert listed("--until", (datetime.now(UTC) - timedelta(minutes=150)).isoformat()) == [ids[0]]
    assert listed("--corrected") == [ids[1]] and listed("--label", "good") == [ids[0]]
    assert all(trace_id in run("traces", "list") for trace_id in ids)  # ids are never truncated
    shown = run("traces", "show", f"chatcmpl-{ids[1]}")
    assert ids[1] in shown and '"fixed"' in shown
    out = run("traces", "export", str(tmp_path / "sft.jsonl"), "--feedback", "--corrections")
    assert "exported 2 traces" in out
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == ["fixed", "answer 0"]
    assert "exported 3 traces" in run("traces", "export", str(tmp_path / "hf"), "--format", "hf")
    assert "already exists" in fail("traces", "export", str(tmp_path / "sft.jsonl"))
    assert "--since" in fail("traces", "list", "--since", "yesterday")
    assert "KEY=VALUE" in fail("traces", "list", "--meta", "app")
    assert "not found" in fail("traces", "show", "tr_nope")
    assert "--format must be" in fail("traces", "export", str(tmp_path / "x"), "--format", "csv")

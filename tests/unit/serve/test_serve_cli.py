"""``teachloop deploy`` and ``teachloop traces`` against the configured database and blob store, and ``deploy``
against a server (``--remote``: a real server in a thread, the echo engine)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from teachloop.cli._common import console
from teachloop.cli.main import app
from teachloop.core.ids import new_id
from teachloop.core.settings import Settings
from teachloop.serve import Serving, publish_adapter
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.store.repos.deployments import AdapterVersions, Deployments
from teachloop.store.repos.traces import Traces
from teachloop.store.schema.deployments import UpstreamEndpoint
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import BASE, Tenants
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
    assert "'support' has no canary" in fail("deploy", "update", "support", "--canary-percent", "5")
    assert "--canary none ends the canary" in fail("deploy", "update", "support", "--canary", "none",
                                                   "--canary-percent", "5")
    assert "--org does not apply with --remote" in fail("deploy", "list", "--org", "x", "--remote", "http://127.0.0.1:9")
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


# ---------------------------------------------------------------------------------------------- --remote


@pytest.fixture
def remote(teachloop_home: Path, serving: Serving, database: Database, blobs: BlobStore, settings: Settings,
           tenants: Tenants, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real server (uvicorn in a thread, the echo engine) with adapters bot@1 and bot@2 in acme; its URL.

    ``TEACHLOOP_API_KEY`` is acme's member key; the CLI's own home has no database at all.
    """
    from teachloop.app import AppDeps, create_app
    from teachloop.cli.demo import serve_in_thread

    for prefix in ("v1: ", "v2: "):
        with database.session() as s:
            publish_adapter(s, blobs, tenants.acme.org_id, name="bot", folder=adapter_folder(teachloop_home.parent,
                            prefix), base_model=BASE)
    monkeypatch.setenv("TEACHLOOP_API_KEY", tenants.acme.member)
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    monkeypatch.setattr(console, "_width", 200)  # also when an earlier test pinned the shared console's width
    with serve_in_thread(create_app(AppDeps(settings, database, blobs, serving=serving))) as url:
        yield url


def _flat(text: str) -> str:
    return " ".join(text.split())


def _rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in ``text``, as their cells' text."""
    return [[cell.strip() for cell in line.strip("│ ").split("│")] for line in text.splitlines()
            if line.startswith("│")]


def _shown(text: str) -> list[list[str]]:
    """The deployments table's rows without their time: name, base model, adapter, canary, revision."""
    return [row[:5] for row in _rows(text)]


def _served(database: Database, org_id: str) -> dict[str, tuple[str | None, str | None, int, int]]:
    """Each deployment of ``org_id``: (adapter ref, canary ref, canary percent, revision)."""
    with database.session(write=False) as s:
        rows = Deployments(s).list(org_id)
        refs = {v.id: v.ref for v in AdapterVersions(s).list(org_id)}
        return {d.name: (refs.get(d.adapter_version_id or ""), refs.get(d.canary_version_id or ""), d.canary_percent,
                         d.revision) for d in rows}


def test_remote_create_update_rollback_list_history_go_through_the_server(
    remote: str, database: Database, tenants: Tenants
) -> None:
    acme = tenants.acme.org_id
    out = run("deploy", "create", "support", "--adapter", "bot@1", "--canary", "bot@2", "--canary-percent", "10",
              "--remote", remote)
    assert _shown(out) == [["support", BASE, "bot@1", "bot@2 @ 10%", "1"]], out
    assert _served(database, acme) == {"support": ("bot@1", "bot@2", 10, 1)}

    out = run("deploy", "update", "support", "--canary-percent", "30", "--remote", remote)  # the canary re-sent
    assert _shown(out) == [["support", BASE, "bot@1", "bot@2 @ 30%", "2"]], out
    again = run("deploy", "update", "support", "--canary-percent", "30", "--remote", remote)
    assert "nothing changed" in again and _served(database, acme)["support"][3] == 2
    out = run("deploy", "update", "support", "--adapter", "bot@2", "--canary", "none", "--remote", remote)
    assert _shown(out) == [["support", BASE, "bot@2", "-", "3"]], out
    out = run("deploy", "update", "support", "--adapter", "base", "--canary", "bot@1", "--remote", remote)
    assert _shown(out) == [["support", BASE, "(base)", "bot@1 @ 0%", "4"]], out  # a new canary keeps the share
    assert _served(database, acme) == {"support": (None, "bot@1", 0, 4)}

    assert _shown(run("deploy", "rollback", "support", "--remote", remote)) == [["support", BASE, "bot@2", "-", "5"]]
    out = run("deploy", "rollback", "support", "--to", "2", "--remote", remote)
    assert _shown(out) == [["support", BASE, "bot@1", "bot@2 @ 30%", "6"]], out
    assert _shown(run("deploy", "list", "--remote", remote)) == [["support", BASE, "bot@1", "bot@2 @ 30%", "6"]]
    history = [row[:4] for row in _rows(run("deploy", "history", "support", "--remote", remote))]
    assert history == [["6", "rollback to r2", "bot@1", "bot@2 @ 30%"], ["5", "rollback to r3", "bot@2", "-"],
                       ["4", "update", "(base)", "bot@1 @ 0%"], ["3", "update", "bot@2", "-"],
                       ["2", "update", "bot@1", "bot@2 @ 30%"], ["1", "create", "bot@1", "bot@2 @ 10%"]], history
    assert [row[0] for row in _rows(run("deploy", "adapters", "bot", "--remote", remote))] == ["bot@2", "bot@1"]


@pytest.mark.parametrize(("args", "message"), [
    (["create", "new", "--adapter", "FOLDER"], "--adapter FOLDER: a local folder cannot be sent with --remote"),
    (["create", "new", "--canary", "FOLDER", "--canary-percent", "5"], "--canary FOLDER: a local folder"),
    (["create", "new", "--adapter", "bot@1", "--org", "acme"], "--org does not apply with --remote"),
    (["create", "new", "--canary-percent", "5"], "--canary-percent needs --canary"),
    (["create", "new", "--run", "run_x", "--adapter", "bot@1"], "give --adapter or --run, not both"),
    (["create", "new", "--price", "bot@1=cheap"], "--price takes MODEL=PROMPT/COMPLETION"),
    (["create", "new", "--upstream-url", "http://127.0.0.1:9/v1", "--upstream-model", "m",
      "--upstream-key-env", "UNSET_KEY_VAR"], "upstream.api_key"),
    (["update", "support", "--canary", "FOLDER"], "--canary FOLDER: a local folder"),
    (["update", "support", "--canary", "none", "--canary-percent", "5"], "--canary none ends the canary"),
    (["update", "support", "--canary-percent", "5"], "--canary-percent: deployment 'support' has no canary"),
    (["update", "support"], "nothing to change"),
    (["rollback", "support", "--org", "acme"], "--org does not apply with --remote"),
])
def test_remote_refuses_what_the_api_cannot_take_before_sending_anything(
    remote: str, database: Database, tenants: Tenants, tmp_path: Path, args: list[str], message: str
) -> None:
    run("deploy", "create", "support", "--adapter", "bot@1", "--remote", remote)
    folder = str(adapter_folder(tmp_path, "local: "))
    args = [folder if a == "FOLDER" else a for a in args]
    assert message.replace("FOLDER", folder) in _flat(fail("deploy", *args, "--remote", remote))
    assert _served(database, tenants.acme.org_id) == {"support": ("bot@1", None, 0, 1)}
    with database.session(write=False) as s:
        assert [v.ref for v in AdapterVersions(s).list(tenants.acme.org_id)] == ["bot@2", "bot@1"]  # nothing pushed


def test_remote_server_errors_are_one_line_and_change_nothing(
    remote: str, database: Database, tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "adapter 'nope' not found" in fail("deploy", "create", "support", "--adapter", "nope", "--remote", remote)
    assert "adapter 'bot@9' not found" in fail("deploy", "create", "support", "--canary", "bot@9", "--remote", remote)
    assert "deployment 'support' not found" in fail("deploy", "update", "support", "--adapter", "base",
                                                    "--remote", remote)
    assert _served(database, tenants.acme.org_id) == {}
    run("deploy", "create", "support", "--remote", remote)
    assert "already exists" in fail("deploy", "create", "support", "--adapter", "bot@1", "--remote", remote)
    assert "adapter 'nope' not found" in fail("deploy", "update", "support", "--adapter", "nope", "--remote", remote)
    assert "no earlier state" in fail("deploy", "rollback", "support", "--remote", remote)
    monkeypatch.setenv("TEACHLOOP_API_KEY", tenants.acme.viewer)
    assert "needs the member role" in fail("deploy", "update", "support", "--adapter", "bot@1", "--remote", remote)
    assert _served(database, tenants.acme.org_id) == {"support": (None, None, 0, 1)}


def test_remote_upstream_arm_takes_its_key_from_the_local_environment(
    remote: str, database: Database, tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    from tests.unit.serve.upstream_server import KEY, FakeUpstream

    monkeypatch.setenv("TEACHLOOP_UPSTREAM_KEY", Fernet.generate_key().decode())  # the server's
    monkeypatch.setenv("TEACHER_KEY", KEY)
    with FakeUpstream() as up:
        flags = ["--upstream-url", up.base_url, "--upstream-key-env", "TEACHER_KEY", "--remote", remote]
        bad = runner.invoke(app, ["deploy", "create", "support", "--upstream-model", "missing", *flags])
        assert bad.exit_code == 2 and "upstream.model" in bad.output and KEY not in bad.output, bad.output
        out = run("deploy", "create", "support", "--upstream-model", "teacher", "--price", "teacher=15/60", *flags)
    assert _shown(out) == [["support", BASE, f"upstream teacher at {up.base_url}", "-", "1"]], out
    assert KEY not in out
    with database.session(write=False) as s:
        [endpoint] = s.scalars(select(UpstreamEndpoint)).all()
        dep = Deployments(s).get(tenants.acme.org_id, "support")
        assert dep.upstream_id == endpoint.id and KEY not in endpoint.key_ciphertext
        assert dep.prices == {"teacher": {"prompt_per_1m": 15, "completion_per_1m": 60, "currency": "USD"}}
    out = run("deploy", "update", "support", "--adapter", "bot", "--remote", remote)
    assert _shown(out) == [["support", BASE, "bot@2", "-", "2"]], out

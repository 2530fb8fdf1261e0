"""``teachloop work`` against a real SQLite store: create a project, add items, make an expert, list, refuse bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.store import Database
from teachloop.store.schema import WorkItem, WorkProject
from tests.unit.work.conftest import Org, pair_item


@pytest.fixture
def env(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", str(db.engine.url))
    monkeypatch.setenv("TEACHLOOP_BLOB_URL", str(tmp_path / "blobs"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def _count(db: Database, table: object) -> int:
    with db.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


def test_create_items_experts_and_refusals(db: Database, org: Org, env: Path) -> None:
    runner = CliRunner()
    spec = env / "p.json"
    spec.write_text(json.dumps({"name": "cmp", "task_type": "pairwise", "settings": {"quorum": 2}}))
    r = runner.invoke(app, ["work", "create", str(spec), "--org", "acme"])
    assert r.exit_code == 0 and "project cmp" in r.output, r.output
    items = env / "items.jsonl"
    items.write_text("\n".join(json.dumps(i) for i in (pair_item(), pair_item(gold_answer={"choice": "a"}))))
    r = runner.invoke(app, ["work", "items", "cmp", str(items), "--org", "acme"])
    assert r.exit_code == 0 and "added 2 items (1 gold)" in r.output, r.output
    r = runner.invoke(app, ["work", "projects", "--org", "acme"])
    assert r.exit_code == 0 and "cmp" in r.output and "pairwise" in r.output, r.output
    r = runner.invoke(app, ["work", "expert", "expert0@acme.test", "--skill", "law", "--org", "acme"])
    assert r.exit_code == 0 and "law" in r.output, r.output
    r = runner.invoke(app, ["work", "experts", "--org", "acme"])
    assert r.exit_code == 0 and org.experts[0] in r.output, r.output
    # bad input: one line, non-zero exit, nothing written
    before = (_count(db, WorkProject), _count(db, WorkItem))
    items.write_text(json.dumps({"prompt": [{"role": "user", "content": "q"}], "candidates": []}))
    for args in (["work", "items", "cmp", str(items)], ["work", "create", str(spec)],
                 ["work", "expert", "nobody@acme.test"], ["work", "agreement", "nope"], ["work", "publish", "cmp"]):
        r = runner.invoke(app, [*args, "--org", "acme"])
        assert r.exit_code != 0 and "Traceback" not in r.output, (args, r.output)
    assert (_count(db, WorkProject), _count(db, WorkItem)) == before
    r = runner.invoke(app, ["work", "dataset", "cmp", "--org", "acme"])
    assert r.exit_code == 0 and "no result" in r.output, r.output

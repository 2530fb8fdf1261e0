"""``teachloop train --resume`` reads a stored config: its environment reference is untrusted.

The same ``module:attr`` that a config file the user passes may name is refused when it comes back from
the run record (anyone who could write that record must not get code run on this machine).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.train.config import validate_config
from teachloop.train.runs import RunStore
from tests._tiny import tiny_llama

runner = CliRunner()
TARGET = "teachloop.envs.builtin.countdown:Countdown"


def test_resume_refuses_a_stored_module_attr_that_a_config_file_may_name(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    for var in ("TEACHLOOP_DATABASE_URL", "TEACHLOOP_BLOB_URL"):
        monkeypatch.delenv(var, raising=False)
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    model = tiny_llama(tmp_path / "models")
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(f'algorithm = "grpo"\nmodel = "{model}"\nsteps = 1\n[rl]\nenv = "{TARGET}"\n')
    trusted = runner.invoke(app, ["train", str(cfg_file), "--dry-run"])
    assert trusted.exit_code == 0, trusted.output  # the user's own config file

    db = Database(f"sqlite:///{tmp_path / 'home' / 'teachloop.db'}")
    try:
        with db.session(write=False) as s:
            org_id = Tenancy(s).list_orgs()[0].id
        cfg = validate_config({"algorithm": "grpo", "model": str(model), "steps": 1, "rl": {"env": TARGET}})
        run = RunStore(db, BlobStore(tmp_path / "home" / "blobs")).create(org_id, cfg, {})
    finally:
        db.close()
    resumed = runner.invoke(app, ["train", "--resume", run.id, "--dry-run"])
    assert resumed.exit_code == 2, resumed.output
    assert "runs local code" in resumed.output and "module:attr" in resumed.output

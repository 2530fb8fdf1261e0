"""What docs/training.md promises about resuming, tested as a user meets it (issue 16, item 6):

* a ``teachloop train`` **subprocess killed with SIGKILL** (no exception, no cleanup) is resumed through the
  CLI (``teachloop train --resume RUN``) and ends with every step recorded once;
* a resume is refused, and nothing is trained, when the run's **dataset** (the training JSONL) or its
  **environment** (a published environment named without a version, ``NAME@``, which now resolves to a newer one)
  resolves to a different digest than the run pinned.

The loop's candidates are training runs, so these are the loop's guarantees too. Tiny random Llama, CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from teachloop.core.errors import InvalidInput
from teachloop.store import BlobStore, Database
from teachloop.train.runs import RunStore
from tests._tiny import tiny_llama

ROOT = Path(__file__).resolve().parents[3]
ROWS = [{"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i} {i} {i}"}]}
        for i in range(16)]


def _config(model: Path, data: Path, steps: int) -> str:
    return f"""
name = "kill-me"
algorithm = "sft"
model = "{model}"
steps = {steps}
checkpoint_every = 2
seed = 0
[lora]
rank = 4
[optim]
lr = 1e-3
[data]
train = "{data}"
batch_size = 2
holdout_frac = 0.0
[eval]
tasks = 0
"""


def _runs(home: Path) -> tuple[Database, RunStore, str]:
    db = Database(f"sqlite:///{home / 'teachloop.db'}")
    from teachloop.store import bootstrap

    with db.session(write=False) as s:
        org = bootstrap(s).org.id
    return db, RunStore(db, BlobStore(str(home / "blobs"))), org


def test_a_sigkilled_cli_run_resumes_through_the_cli_and_a_changed_dataset_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from teachloop.cli.main import app

    home = tmp_path / "home"
    monkeypatch.setenv("TEACHLOOP_HOME", str(home))
    monkeypatch.delenv("TEACHLOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("TEACHLOOP_BLOB_URL", raising=False)
    cli = CliRunner()
    assert cli.invoke(app, ["admin", "init"]).exit_code == 0
    model = tiny_llama(tmp_path / "models")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = tmp_path / "sft.toml"
    steps = 60
    cfg.write_text(_config(model, data, steps))
    env = {**os.environ, "TEACHLOOP_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "from teachloop.cli.main import main; main()", "train", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db, runs, org = _runs(home)
    try:
        deadline = time.monotonic() + 240
        while True:  # wait for the first checkpoint, then kill -9 mid-run
            listed = runs.list_runs(org)
            if listed and (listed[0].last_checkpoint_step or 0) >= 2:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = runs.get(org, listed[0].id)
    assert killed.status == "running" and killed.step < steps  # SIGKILL leaves the record as it was
    checkpoint = killed.last_checkpoint_step
    assert checkpoint is not None and checkpoint >= 2

    # the dataset changed since: the resume is refused, naming it, and nothing is trained
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:-1]))
    refused = cli.invoke(app, ["train", "--resume", killed.id])
    assert refused.exit_code == 2, refused.output
    assert "dataset digest" in refused.output and "refusing to resume" in refused.output
    assert runs.get(org, killed.id).step == killed.step

    # the same data again: resumed through the CLI from the last checkpoint, to the end
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    resumed = cli.invoke(app, ["train", "--resume", killed.id])
    assert resumed.exit_code == 0, resumed.output
    done = runs.get(org, killed.id)
    assert done.status == "completed" and done.step == steps and done.final_adapter_key
    train_steps = [s for s, _, _ in runs.metrics(org, killed.id, "train")]
    assert train_steps == list(range(1, steps + 1))  # the steps after the checkpoint redone once, not duplicated
    db.close()


def test_a_resume_is_refused_when_the_environment_now_resolves_to_another_digest(tmp_path: Path) -> None:
    from teachloop.catalog import publish_package
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.envs.scaffold import scaffold
    from teachloop.render import Renderer
    from teachloop.store import Tenancy
    from teachloop.train import Trainer, TrainerDeps, validate_config

    db = Database(f"sqlite:///{tmp_path / 't.db'}")
    db.migrate()
    blobs = BlobStore(str(tmp_path / "blobs"))
    with db.session() as s:
        org = Tenancy(s).create_org("acme").id
    folder = scaffold("wordcount", tmp_path / "pkg")
    first = asyncio.run(publish_package(db, blobs, org, folder))
    model = tiny_llama(tmp_path / "models")
    deps = TrainerDeps(engine=TorchEngine(model, device="cpu"), renderer=Renderer.from_pretrained(model), database=db,
                       blobs=blobs, org_id=org, env_cache=tmp_path / "envs")
    cfg = validate_config({"name": "env-pinned", "algorithm": "grpo", "model": str(model), "steps": 3,
                           "checkpoint_every": 1, "lora": {"rank": 4}, "eval": {"tasks": 0},
                           "rl": {"env": "wordcount@", "prompts_per_step": 2, "group_size": 2, "max_tokens": 4}})

    class Killed(Exception):
        pass

    def kill_after_1(event: str, payload: dict[str, Any]) -> None:
        if event == "step" and payload["step"] == 1:
            raise Killed

    with pytest.raises(Killed):
        asyncio.run(Trainer(cfg, deps, listener=kill_after_1).run())
    runs = RunStore(db, blobs)
    killed = runs.list_runs(org)[0]
    assert killed.inputs["env"]["digest"] == first.version.digest
    # a newer version of the environment is published: "wordcount@" (the newest) now resolves to it
    pyproject = folder / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.1.1"', 1))
    second = asyncio.run(publish_package(db, blobs, org, folder))
    assert second.version.digest != first.version.digest
    with pytest.raises(InvalidInput, match="refusing to resume on different inputs") as info:
        asyncio.run(Trainer(cfg, deps).run(resume=killed.id))
    assert info.value.param == "env"
    after = runs.get(org, killed.id)
    assert (after.status, after.step) == (killed.status, killed.step)  # nothing was trained
    db.close()

"""Two real GRPO steps on the default model through the CLI, then the run's record and plot.

The run is as small as still shows every record (2 prompts x 4 samples of 16 tokens per step, 4 held-out
tasks): what is tested is the CLI's path through a real run, not the size of one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app

pytestmark = pytest.mark.model

CONFIG = """
name = "ci-grpo"
algorithm = "grpo"
steps = 2
checkpoint_every = 1
[lora]
rank = 16
[optim]
lr = 2e-4
[rl]
env = "arithmetic"
env_args = { level = 1 }
prompts_per_step = 4
group_size = 4
max_tokens = 16
[eval]
tasks = 4
"""


def test_two_grpo_steps_on_the_default_model(default_model_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEACHLOOP_MODEL_CACHE", str(default_model_dir.parent))
    runner = CliRunner()
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    cfg = tmp_path / "grpo.toml"
    cfg.write_text(CONFIG)
    result = runner.invoke(app, ["train", "--rl.prompts_per_step", "2", str(cfg)])  # options before CONFIG win
    assert result.exit_code == 0, result.output
    assert "completed run" in result.output
    listed = runner.invoke(app, ["runs", "list", "--json"])
    run_id = json.loads(listed.output.splitlines()[0])["id"]
    shown = runner.invoke(app, ["runs", "show", run_id, "--json"])
    data = json.loads(shown.output)
    assert data["run"]["status"] == "completed" and data["run"]["step"] == 2
    assert data["run"]["config"]["rl"]["prompts_per_step"] == 2  # the option overrode the file's 4
    steps = [m for m in data["metrics"] if m["phase"] == "train"]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["values"]["completion_tokens"] > 0 and m["values"]["tokens_per_s"] > 0
    assert {m["step"] for m in data["metrics"] if m["phase"] == "eval"} == {0, 2}
    assert data["run"]["inputs"]["env"]["digest"].startswith("sha256:")
    svg = tmp_path / "run.svg"
    assert runner.invoke(app, ["runs", "show", run_id, "--plot", str(svg)]).exit_code == 0
    assert svg.read_text().startswith("<svg")


def test_invalid_config_is_refused_with_the_field_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    cfg = tmp_path / "bad.toml"
    cfg.write_text('algorithm = "grpo"\n[rl]\nenv = "arithmetic"\nloss = "sgd"\n')
    result = runner.invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2
    assert "rl.loss" in result.output and "'ppo'" in result.output

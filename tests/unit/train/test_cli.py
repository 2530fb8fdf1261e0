"""``teachloop train`` / ``runs`` on the tiny model: every check before the weights load, options in any
position, one-line refusals, every field in --help, and ``runs show --plot``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app

CONFIG = """
algorithm = "grpo"
model = "{model}"
steps = 3
checkpoint_every = 0
[lora]
rank = 4
[rl]
env = "arithmetic"
env_args = {{ level = 1 }}
prompts_per_step = 2
group_size = 2
max_tokens = 4
[eval]
tasks = 0
"""


@pytest.fixture
def cli(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CliRunner, Path]:
    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    assert runner.invoke(app, ["admin", "init"]).exit_code == 0
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(model=tiny_dir))
    return runner, cfg


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The CLI's engine factory, failing the test if anything asks it to load weights."""
    calls: list[Any] = []

    def refuse(*args: Any) -> Any:
        calls.append(args)
        raise AssertionError("the engine was built before the inputs were checked")

    monkeypatch.setattr("teachloop.cli.train._build_engine", refuse)
    return calls


def _one_line_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def _publish_yanked(name: str, version: str) -> None:
    from teachloop.cli._common import StoreContext
    from teachloop.store.repos.environments import EnvironmentRegistry

    with StoreContext() as store, store.database.session() as s:
        reg = EnvironmentRegistry(s)
        reg.publish(store.org_id, name=name, version=version, digest="sha256:" + "a" * 64, manifest={},
                    blob_key="sha256:" + "b" * 64)
        reg.yank(store.org_id, f"{name}@{version}", reason="broken grader")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rl.env", "arithmetic@9.9"], "arithmetic"),  # a version that does not exist
        (["--rl.env", "arithmetic@1.0.0"], "yanked"),
        (["--rl.env_args.level", "9"], "rl.env_args"),  # the environment's constructor refuses
        (["--rl.env_args", "{ lvl = 1 }"], "rl.env_args"),
        (["--eval.tasks", "2", "--eval.env_args.level", "9"], "eval.env_args"),
        (["--rl.max_tokens", "100000"], "rl.max_tokens"),  # beyond the context length of config.json
        (["--rl.loss", "sgd"], "rl.loss"),
    ],
)
def test_bad_inputs_are_refused_in_one_line_before_the_engine_is_built(
    args: list[str], says: str, cli: tuple[CliRunner, Path], no_engine: list[Any]
) -> None:
    runner, cfg = cli
    _publish_yanked("arithmetic", "1.0.0")
    result = runner.invoke(app, ["train", *args, str(cfg)])  # options before CONFIG, too
    assert says in _one_line_error(result)
    assert no_engine == []
    assert "Loading weights" not in result.output
    assert runner.invoke(app, ["runs", "list", "--json"]).output.strip() == ""  # no run record


def test_dpo_dataset_over_the_skip_threshold_is_refused_before_the_engine(
    cli: tuple[CliRunner, Path], tiny_dir: Path, tmp_path: Path, no_engine: list[Any]
) -> None:
    runner, _ = cli
    rows = [{"prompt": "p", "chosen": [], "rejected": "r"}] * 2 + [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 2
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["train", "--algorithm", "dpo", "--model", str(tiny_dir), "--data.train", str(data)])
    assert "empty_chosen: 2" in _one_line_error(result) and no_engine == []


def test_options_before_the_config_apply_and_the_run_is_plotted(cli: tuple[CliRunner, Path], tmp_path: Path) -> None:
    runner, cfg = cli
    result = runner.invoke(app, ["train", "--steps", "1", str(cfg), "--rl.group_size=3"])
    assert result.exit_code == 0, result.output
    run = json.loads(runner.invoke(app, ["runs", "list", "--json"]).output.splitlines()[0])
    assert (run["total_steps"], run["config"]["rl"]["group_size"]) == (1, 3)
    svg = tmp_path / "plots" / "new" / "run.svg"  # a folder that does not exist yet
    shown = runner.invoke(app, ["runs", "show", run["id"], "--plot", str(svg)])
    assert shown.exit_code == 0, shown.output
    assert svg.read_text().startswith("<svg") and f"wrote {svg.resolve()}" in shown.output.replace("\n", "")
    svg.unlink()
    as_json = runner.invoke(app, ["runs", "show", run["id"], "--json", "--plot", str(svg)])
    assert as_json.exit_code == 0 and svg.is_file()
    assert json.loads(as_json.stdout)["run"]["id"] == run["id"]  # the JSON stays parseable: "wrote" is on stderr
    refused = runner.invoke(app, ["runs", "show", run["id"], "--plot", str(tmp_path / "run.png")])
    assert "--plot writes SVG" in _one_line_error(refused)


def test_dry_run_checks_without_weights(cli: tuple[CliRunner, Path], no_engine: list[Any]) -> None:
    runner, cfg = cli
    result = runner.invoke(app, ["train", "--dry-run", "--steps", "2", str(cfg)])
    assert result.exit_code == 0, result.output
    assert '"digest": "sha256:' in result.output and no_engine == []
    extra = runner.invoke(app, ["train", str(cfg), "other.toml"])
    assert "unexpected argument 'other.toml'" in _one_line_error(extra)


def test_help_lists_every_config_field() -> None:
    from teachloop.train.config import field_reference

    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag, _, _ in field_reference():
        assert flag in result.output, flag

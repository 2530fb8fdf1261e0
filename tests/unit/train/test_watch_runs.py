"""Training you can watch, end to end on the tiny model: a gamed grader raises the reward-hack alarm and stops
the run, keeping the best held-out adapter; an honest grader does not. The alarm reaches the run record, the
REST wire form, ``teachloop runs show`` and the loop's promotion check."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from teachloop.train import Trainer, TrainerDeps, validate_config
from teachloop.train.runs import RunStore
from teachloop.train.watch import RewardHackDetected, refuse_alarmed, slope_test

ENVS = "tests.unit.train.conftest:"


def _config(train_env: str, eval_env: str, steps: int) -> dict[str, Any]:
    # every 2 steps on 6 held-out tasks; a window of 4 evaluations spans 6 training steps
    return {
        "name": f"watch-{train_env.lower()}", "algorithm": "grpo", "steps": steps, "checkpoint_every": 0, "seed": 0,
        "lora": {"rank": 8, "unembed": True}, "optim": {"lr": 5e-2},
        "rl": {"env": ENVS + train_env, "prompts_per_step": 4, "group_size": 4, "max_tokens": 6},
        "eval": {"env": ENVS + eval_env, "tasks": 6, "every": 2},
        "alarm": {"enabled": True, "window": 4},
    }


def _run(cfg: dict[str, Any], engine: Any, renderer: Any, store: Any, tmp_path: Path) -> tuple[Any, RunStore]:
    db, blobs, org = store
    deps = TrainerDeps(engine=engine, renderer=renderer, database=db, blobs=blobs, org_id=org,
                       env_cache=tmp_path / "envs")
    run = asyncio.run(Trainer(validate_config(cfg), deps).run())
    return run, RunStore(db, blobs)


def test_a_gamed_grader_raises_the_alarm_and_stops_the_run(
    engine: Any, renderer: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Padded pays per digit written; the held-out grader (InWords) wants words: training reward climbs
    while held-out reward falls, the alarm fires and the run stops there with the best adapter kept."""
    run, runs = _run(_config("Padded", "InWords", steps=10), engine, renderer, store, tmp_path)
    db, blobs, org = store
    alarm = run.alarm
    assert alarm is not None, runs.metrics(org, run.id)
    assert run.status == "completed" and run.stop_reason == "reward_hack_alarm"
    assert alarm.step in (6, 8) and run.step == alarm.step < run.total_steps  # stopped at the alarm
    assert alarm.train_p < 0.05 and alarm.heldout_p < 0.05 and alarm.heldout_drop > 0.3 and alarm.action == "stop"
    evals = {s: v["reward_mean"] for s, p, v in runs.metrics(org, run.id, "eval")}
    assert sorted(evals) == list(range(0, alarm.step + 1, 2))
    assert evals[alarm.window_start] == alarm.heldout_before and evals[alarm.step] == alarm.heldout_after
    # the best held-out checkpoint came before the hack, and it is the final adapter
    assert run.best_step is not None and run.best_step < alarm.step and run.best_score == max(evals.values())
    final = blobs.get_dir(run.final_adapter_key, tmp_path / "final")
    best = blobs.get_dir(run.best_adapter_key, tmp_path / "best")
    assert (final / "adapter_model.safetensors").read_bytes() == (best / "adapter_model.safetensors").read_bytes()

    # the loop never promotes it; the REST wire form and `runs show` carry the alarm
    with pytest.raises(RewardHackDetected, match="reward-hack alarm"):
        refuse_alarmed(runs.get(org, run.id))
    from teachloop.app.routes.runs import run_out

    wire = run_out(runs.get(org, run.id))
    assert wire.alarm == alarm and wire.stop_reason == "reward_hack_alarm" and wire.best_step == run.best_step
    from teachloop.cli.main import app

    monkeypatch.setenv("TEACHLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", str(db.engine.url))
    monkeypatch.setenv("TEACHLOOP_BLOB_URL", str(tmp_path / "blobs"))
    shown = CliRunner().invoke(app, ["runs", "show", run.id])
    assert shown.exit_code == 0, shown.output
    assert f"reward-hack alarm at step {alarm.step}" in shown.output
    assert f"best held-out: step {run.best_step}" in shown.output and "reward_hack_alarm" in shown.output
    assert f"eval @ {alarm.step}" in shown.output


def test_an_honest_grader_does_not_raise_the_alarm(engine: Any, renderer: Any, store: Any, tmp_path: Path) -> None:
    """Digits trains and evaluates on the same grader: training reward rises significantly within a window,
    held-out reward rises with it, and no alarm is raised."""
    run, runs = _run(_config("Digits", "Digits", steps=8), engine, renderer, store, tmp_path)
    _, _, org = store
    assert run.status == "completed" and run.alarm is None and run.stop_reason is None and run.step == 8
    train = {s: v["reward_mean"] for s, p, v in runs.metrics(org, run.id, "train")}
    evals = {s: v["reward_mean"] for s, p, v in runs.metrics(org, run.id, "eval")}
    assert sorted(evals) == [0, 2, 4, 6, 8] and evals[8] >= evals[0]
    # the training leg of the test alone would have fired in the window of steps 2-8: it is the held-out leg,
    # which did not fall, that keeps the alarm quiet
    assert slope_test([float(s) for s in range(3, 9)], [train[s] for s in range(3, 9)])[1] < 0.05
    assert run.best_step is not None and run.final_adapter_key is not None

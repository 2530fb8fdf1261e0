"""The watch's statistics and decisions, its config refusals, and the tracker check (pure: no model)."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pytest

from teachloop.core import InvalidInput
from teachloop.core.training import RewardHackAlarm
from teachloop.train import validate_config
from teachloop.train.report import check_trackers, flatten
from teachloop.train.watch import (
    RewardHackDetected,
    Watch,
    paired_drop_test,
    refuse_alarmed,
    slope_test,
    t_sf,
)

DIGITS = "tests.unit.train.conftest:Digits"


def _cfg(**over: Any) -> Any:
    raw: dict[str, Any] = {"algorithm": "grpo", "steps": 12, "rl": {"env": DIGITS}, "eval": {"tasks": 4, "every": 2}}
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    return validate_config(raw)


@pytest.mark.parametrize(("t", "df", "expected"), [
    (0.5, 1, 0.35241638234956674),  # scipy.stats.t.sf
    (2.0, 2, 0.09175170953613698),
    (-1.3, 5, 0.8748496829146615),
    (3.3, 30, 0.001249653719899027),
    (0.0, 4, 0.5),
])
def test_student_t_tail_matches_reference_values(t: float, df: int, expected: float) -> None:
    assert math.isclose(t_sf(t, df), expected, rel_tol=1e-9)


def test_slope_and_paired_tests() -> None:
    slope, p = slope_test([1, 2, 3, 4, 5], [0.1, 0.22, 0.28, 0.41, 0.5])
    assert slope == pytest.approx(0.099) and p < 0.001
    assert slope_test([1, 2, 3, 4], [0.5, 0.4, 0.45, 0.3])[1] > 0.9  # falling: no evidence of a rise
    assert slope_test([1, 2, 3], [0.2, 0.2, 0.2])[1] >= 0.5  # flat: no evidence of a rise
    diff, p, n = paired_drop_test({"a": 1.0, "b": 0.5, "c": 0.8}, {"a": 0.6, "b": 0.1, "c": 0.5, "z": 1.0})
    assert n == 3 and diff == pytest.approx(-11 / 30) and p < 0.01
    assert paired_drop_test({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5})[1] == 1.0
    assert paired_drop_test({"a": 0.5, "b": 0.4}, {"a": 0.7, "b": 0.1})[1] > 0.05  # one up, one down: noise


def _feed(watch: Watch, train: list[float], evals: dict[int, list[float]]) -> list[Any]:
    """Train rewards for steps 1..n and held-out per-task rewards at the given steps; the verdicts."""
    verdicts = []
    for step in range(0, len(train) + 1):
        if step:
            watch.on_train(step, {"reward_mean": train[step - 1]})
        if step in evals:
            tasks = {f"t{i}": r for i, r in enumerate(evals[step])}
            verdicts.append(watch.on_eval(step, {"reward_mean": sum(tasks.values()) / len(tasks)}, tasks))
    return verdicts


def test_alarm_fires_when_training_rises_and_held_out_falls() -> None:
    watch = Watch(_cfg(alarm={"enabled": True, "window": 3}))
    rising = [0.1 * i + (0.02 if i % 2 else -0.02) for i in range(1, 9)]
    held = {0: [0.8, 0.6, 0.9, 0.7], 2: [0.8, 0.6, 0.9, 0.7], 4: [0.6, 0.5, 0.7, 0.5], 6: [0.4, 0.3, 0.5, 0.4],
            8: [0.3, 0.2, 0.3, 0.2]}
    verdicts = _feed(watch, rising, held)
    fired = [v for v in verdicts if v.alarm is not None]
    assert fired and verdicts.index(fired[0]) == 2  # at step 4: the first window (steps 0-4) already shows it
    alarm = fired[0].alarm
    assert (alarm.step, alarm.window_start, alarm.heldout_tasks) == (4, 0, 4)
    assert alarm.train_p < 0.05 and alarm.heldout_p < 0.05 and alarm.heldout_drop == pytest.approx(0.175)
    assert fired[0].stop == "reward_hack_alarm" and watch.alarm == alarm
    assert watch.best_step == 2  # the best held-out evaluation after step 0


def test_alarm_quiet_when_held_out_holds_or_training_is_flat() -> None:
    rising = [0.1 * i for i in range(1, 9)]
    honest = {s: [0.8, 0.6, 0.9, 0.7] for s in (0, 2, 4, 6, 8)}
    assert all(v.alarm is None for v in _feed(Watch(_cfg(alarm={"enabled": True})), rising, honest))
    flat = [0.5, 0.6, 0.4, 0.5, 0.6, 0.4, 0.5, 0.5]
    falling = {0: [0.8] * 4, 2: [0.7] * 4, 4: [0.5] * 4, 6: [0.3] * 4, 8: [0.2] * 4}
    assert all(v.alarm is None for v in _feed(Watch(_cfg(alarm={"enabled": True})), flat, falling))
    tiny_drop = {s: [0.8 - 0.001 * s] * 4 for s in (0, 2, 4, 6, 8)}  # falls, but by less than min_drop
    assert all(v.alarm is None for v in _feed(Watch(_cfg(alarm={"enabled": True})), rising, tiny_drop))


def test_continue_on_alarm_and_early_stop_on_a_plateau() -> None:
    watch = Watch(_cfg(alarm={"enabled": True, "on_alarm": "continue"}, eval={"patience": 2}))
    rising = [0.1 * i for i in range(1, 9)]
    held = {0: [0.8] * 4, 2: [0.9] * 4, 4: [0.5] * 4, 6: [0.4] * 4, 8: [0.3] * 4}
    verdicts = _feed(watch, rising, held)
    assert [v.improved for v in verdicts] == [False, True, False, False, False]
    assert verdicts[2].alarm is not None and verdicts[2].stop is None  # recorded, the run goes on
    assert verdicts[3].stop == "early_stop"  # two evaluations without beating step 2
    assert (watch.best_step, watch.best_score) == (2, 0.9)


def test_lower_is_better_metrics_and_min_delta() -> None:
    watch = Watch(validate_config({"algorithm": "sft", "steps": 10, "data": {"train": "x.jsonl"},
                                   "eval": {"every": 2, "min_delta": 0.05}}))
    assert (watch.metric, watch.higher_is_better) == ("heldout_nll", False)
    scores = [watch.on_eval(s, {"heldout_nll": nll}).improved for s, nll in ((0, 3.0), (2, 2.0), (4, 1.97), (6, 1.5))]
    assert scores == [False, True, False, True]


def test_refuse_alarmed_is_the_loops_check() -> None:
    class Run:
        id = "run_x"
        alarm: RewardHackAlarm | None = None

    refuse_alarmed(Run())
    Run.alarm = RewardHackAlarm(step=4, window_start=0, train_slope=0.1, train_p=0.01, heldout_before=0.8,
                                heldout_after=0.5, heldout_p=0.001, heldout_tasks=8, alpha=0.05, min_drop=0.02,
                                action="stop")
    with pytest.raises(RewardHackDetected, match="run_x is not promotable: reward-hack alarm at step 4"):
        refuse_alarmed(Run())


def test_the_loop_never_publishes_a_candidate_whose_run_raised_an_alarm() -> None:
    from teachloop.loop.training import publish_candidate
    from teachloop.train.runs import RunInfo

    alarm = RewardHackAlarm(step=6, window_start=0, train_slope=0.2, train_p=0.03, heldout_before=1.0,
                            heldout_after=0.45, heldout_p=0.0, heldout_tasks=6, alpha=0.05, min_drop=0.02,
                            action="continue")
    run = RunInfo("run_y", "org_x", "cand", "grpo", "completed", "m", {}, {}, 10, 10, None, None,
                  "runs/run_y/adapter", None, None, None, alarm=alarm)
    nothing: Any = None  # refused before the database or the blob store is touched
    with pytest.raises(RewardHackDetected, match="run_y is not promotable"):
        publish_candidate(nothing, nothing, "org_x", "support", "m", run, {})


@pytest.mark.parametrize(("over", "param"), [
    ({"eval": {"every": 13}}, "eval.every"),
    ({"alarm": {"enabled": True, "window": 2}}, "alarm.window"),  # 1 interval of 2 steps: too short
    ({"alarm": {"enabled": True, "window": 1}}, "alarm.window"),
    ({"alarm": {"enabled": True, "window": 8}}, "alarm.window"),  # 14 steps: longer than the run
    ({"alarm": {"enabled": True}, "eval": {"every": 0}}, "eval.every"),
    ({"alarm": {"enabled": True}, "eval": {"tasks": 0}}, "alarm.enabled"),
])
def test_watch_settings_that_cannot_work_are_refused_naming_the_field(over: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidInput) as err:
        _cfg(**over)
    assert err.value.param == param and param in err.value.message


def test_defaults_evaluate_grpo_during_the_run_and_turn_the_alarm_on_only_where_it_fits() -> None:
    cfg = validate_config({"algorithm": "grpo", "steps": 20, "rl": {"env": DIGITS}})
    assert cfg.eval_every() == 4 and cfg.alarm_on()
    short = validate_config({"algorithm": "grpo", "steps": 3, "rl": {"env": DIGITS}})
    assert short.eval_every() == 0 and not short.alarm_on()  # a smoke run: before and after only
    tight = validate_config({"algorithm": "grpo", "steps": 12, "rl": {"env": DIGITS}, "alarm": {"window": 2}})
    assert tight.eval_every() == 2 and not tight.alarm_on()  # the window does not fit its test: off, not refused
    assert validate_config({"algorithm": "grpo", "steps": 20, "rl": {"env": DIGITS}, "eval": {"tasks": 0}}
                           ).eval_every() == 0
    sft = validate_config({"algorithm": "sft", "steps": 20, "data": {"train": "x.jsonl"}})
    assert sft.eval_every() == 0 and not sft.alarm_on()


def test_a_tracker_that_is_not_installed_is_refused_naming_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(report={"to": ["tensorboard", "mlflow"]})
    check_trackers(cfg)  # both installed in the dev environment
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(InvalidInput) as err:
        check_trackers(cfg)
    assert err.value.param == "report.to" and "pip install 'teachloop[mlflow]'" in err.value.message
    with pytest.raises(InvalidInput) as bad:
        _cfg(report={"to": ["neptune"]})
    assert bad.value.param.startswith("report.to")


def test_flatten_config_for_tracker_params() -> None:
    assert flatten({"optim": {"lr": 1e-4, "x": {}}, "name": "r"}) == {"optim.lr": 1e-4, "optim.x": {}, "name": "r"}

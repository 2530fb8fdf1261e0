"""Loop configs: shape and cross-field rules, references against the store; every refusal names the field
and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from teachloop.core.errors import InvalidInput
from teachloop.loop import check_references, configure_loop, load_loop_config, validate_loop_config
from teachloop.loop.config import training_dict
from teachloop.store.repos.loops import Loops
from teachloop.train import validate_config
from tests.unit.loop.conftest import DEPLOYMENT, Store, grpo_config, sft_config


def _refused(raw: dict[str, Any], field: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate_loop_config(raw)
    assert info.value.param == field, (info.value.param, str(info.value))
    assert field in str(info.value)
    return info.value


def test_a_full_config_validates_and_has_a_stable_digest() -> None:
    cfg = validate_loop_config(grpo_config())
    assert cfg.algorithm.kind == "grpo" and cfg.grader_source() is not None
    assert cfg.digest == validate_loop_config(grpo_config()).digest
    assert cfg.digest != validate_loop_config(grpo_config(trigger={"every": 11})).digest


@pytest.mark.parametrize(("patch", "field"), [
    ({"nonsense": 1}, "nonsense"),
    ({"sources": []}, "sources"),
    ({"sources": [{"kind": "oracle"}]}, "sources.0"),
    ({"sources": [{"kind": "grader"}]}, "sources.0.env"),
    ({"sources": [{"kind": "grader", "env": "arithmetic", "answer": "guess"}]}, "sources.0"),
    ({"sources": [{"kind": "feedback", "min_score": 0.2, "max_score": 0.5}]}, "sources.0"),
    ({"trigger": {"every": 0}}, "trigger.every"),
    ({"trigger": {"every": -3}}, "trigger.every"),
    ({"trigger": {"every": None}}, "trigger"),
    ({"trigger": {"every": None, "interval_minutes": -1}}, "trigger.interval_minutes"),
    ({"trigger": {"every": 50_000}}, "trigger.every"),
    ({"curation": {"holdout_frac": 0.9}}, "curation.holdout_frac"),
    ({"curation": {"near_dup_threshold": 1.5}}, "curation.near_dup_threshold"),
    ({"gate": {"confidence": 1.0}}, "gate.confidence"),
    ({"gate": {"holdout": False}}, "gate.holdout"),
    ({"promotion": {"canary_percent": 120}}, "promotion.canary_percent"),
    ({"promotion": {"canary_percent": 0}}, "promotion.canary_percent"),
    ({"promotion": {"canary_percent": 100}}, "promotion.canary_percent"),
    ({"promotion": {"watch_requests": 0}}, "promotion.watch_requests"),
    ({"promotion": {"watch_requests": 3, "min_samples": 4}}, "promotion.watch_requests"),
    ({"budget": {"train_minutes_per_day": 0}}, "budget.train_minutes_per_day"),
])
def test_bad_shapes_are_refused_with_the_field_named(patch: dict[str, Any], field: str) -> None:
    raw = grpo_config()
    for k, v in patch.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    _refused(raw, field)


def test_cross_section_rules_name_the_field() -> None:
    no_grader = grpo_config(sources=[{"kind": "feedback"}])
    _refused(no_grader, "algorithm.kind")
    _refused({**sft_config(sources=[{"kind": "feedback"}]), "gate": {"metric": "reward"}}, "gate.metric")
    _refused(sft_config(sources=[{"kind": "feedback"}], promotion={"signals": ["grader"]},
                        gate={"metric": "likelihood"}), "promotion.signals")


@pytest.mark.parametrize(("train", "field"), [
    ({"steps": 0}, "algorithm.train.steps"),
    ({"model": "x"}, "algorithm.train.model"),
    ({"rl": {"env": "arithmetic"}}, "algorithm.train.rl.env"),
    ({"rl": {"group_size": 1}}, "algorithm.train.rl.group_size"),
    ({"data": {"batch_size": 4}}, "algorithm.train.data"),
    ({"optim": {"lr": -1}}, "algorithm.train.optim.lr"),
    ({"lora": {"rnk": 4}}, "algorithm.train.lora.rnk"),
])
def test_the_training_section_is_checked_as_a_training_config(train: dict[str, Any], field: str) -> None:
    _refused(grpo_config(algorithm={"kind": "grpo", "train": train}), field)


def test_the_training_config_of_an_iteration_is_valid_and_loop_owned_fields_are_set() -> None:
    cfg = validate_loop_config(sft_config())
    tc = validate_config(training_dict(cfg, model="m", name="n", env=None, env_args=None, data_path="t.jsonl",
                                       eval_path="h.jsonl"))
    assert tc.algorithm == "sft" and tc.data is not None and tc.data.train == "t.jsonl" and tc.data.eval == "h.jsonl"
    assert tc.eval.tasks == 0 and tc.steps == 2


def test_toml_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "loop.toml"
    path.write_text(f'deployment = "{DEPLOYMENT}"\n[[sources]]\nkind = "grader"\nenv = "arithmetic"\n'
                    '[algorithm]\nkind = "grpo"\n[trigger]\nevery = 5\n')
    assert load_loop_config(path).trigger.every == 5
    with pytest.raises(InvalidInput, match="does not exist"):
        load_loop_config(tmp_path / "missing.toml")
    path.write_text("deployment = ")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_loop_config(path)


@pytest.mark.parametrize(("raw", "field", "text"), [
    (grpo_config(deployment="nope"), "deployment", "not found"),
    (grpo_config(sources=[{"kind": "grader", "env": "no-such-env"}]), "sources.0.env", "no-such-env"),
    (grpo_config(sources=[{"kind": "grader", "env": "arithmetic", "env_args": {"level": 9}}]), "sources.0.env",
     "level"),
    (grpo_config(sources=[{"kind": "grader", "env": "arithmetic"}, {"kind": "dataset", "dataset": "ghost@1"}]),
     "sources.1.dataset", "not found"),
    (grpo_config(sources=[{"kind": "grader", "env": "arithmetic"}, {"kind": "labels", "dataset": "ghost"}]),
     "sources.1.dataset", "not found"),
    (grpo_config(sources=[{"kind": "grader", "env": "arithmetic"}, {"kind": "dataset", "dataset": "other-org/x@1"}]),
     "sources.1.dataset", "not found"),
    (grpo_config(gate={"environments": [{"env": "nowhere"}]}), "gate.environments.0.env", "nowhere"),
])
def test_references_are_checked_against_the_store_and_nothing_is_stored(
    store: Store, raw: dict[str, Any], field: str, text: str
) -> None:
    cfg = validate_loop_config(raw)
    with store.db.session(write=False) as s, pytest.raises(InvalidInput) as info:
        check_references(cfg, s, blobs=store.blobs, org_id=store.org_id, cache=store.cache)
    assert info.value.param == field and text in str(info.value)
    with pytest.raises(InvalidInput):
        configure_loop(store.db, store.blobs, store.org_id, raw, cache=store.cache)
    with store.db.session(write=False) as s:
        assert Loops(s).list(store.org_id) == []


def test_configure_creates_then_replaces_the_loop(store: Store) -> None:
    out, created = configure_loop(store.db, store.blobs, store.org_id, grpo_config(), cache=store.cache)
    assert created and out["phase"] == "idle" and out["deployment"] == DEPLOYMENT
    again, created = configure_loop(store.db, store.blobs, store.org_id, grpo_config(trigger={"every": 3}),
                                    cache=store.cache)
    assert not created and again["id"] == out["id"] and again["config"]["trigger"]["every"] == 3
    with pytest.raises(InvalidInput, match=r"trigger\.every"):
        configure_loop(store.db, store.blobs, store.org_id, grpo_config(trigger={"every": 0}), cache=store.cache)
    with store.db.session(write=False) as s:
        [loop] = Loops(s).list(store.org_id)
        assert loop.config["trigger"]["every"] == 3


def test_promotion_always_goes_through_a_canary() -> None:
    err = _refused(grpo_config(promotion={"canary_percent": 0}), "promotion.canary_percent")
    assert "always goes through a canary" in str(err)
    cfg = validate_loop_config(grpo_config())
    assert cfg.promotion.allow_blind_promotion is False and cfg.promotion.canary_max_minutes == 1440


def _static(**over: Any) -> dict[str, Any]:
    return sft_config(gate={"metric": "likelihood"}, promotion={"signals": ["feedback"]}, **over)


@pytest.mark.parametrize(("sources", "trigger", "field"), [
    ([{"kind": "dataset", "dataset": "seed@1"}], {"every": 10}, "trigger.every"),
    ([{"kind": "dataset", "dataset": "ds_01aaaaaaaaaaaaaaaaaaaaaaaa"}], {"every": 10}, "trigger.every"),
    ([{"kind": "dataset", "dataset": "seed@1"}], {"every": None, "interval_minutes": 60}, "trigger.interval_minutes"),
    ([{"kind": "labels", "dataset": "gold@2"}, {"kind": "dataset", "dataset": "acme/seed@3"}], {"every": 5},
     "trigger.every"),
])
def test_a_trigger_that_can_never_fire_again_is_refused(sources: list[dict[str, Any]], trigger: dict[str, Any],
                                                         field: str) -> None:
    err = _refused(_static(sources=sources, trigger=trigger), field)
    assert "no source can produce new examples" in str(err)


def test_sources_that_can_grow_are_accepted() -> None:
    for sources in ([{"kind": "dataset", "dataset": "seed"}], [{"kind": "labels"}], [{"kind": "feedback"}],
                    [{"kind": "dataset", "dataset": "seed@1"}, {"kind": "labels", "dataset": "gold"}]):
        assert validate_loop_config(_static(sources=sources)).sources
    # grpo gets nothing from feedback: a pinned dataset plus feedback can never give it new prompts
    _refused(grpo_config(sources=[{"kind": "feedback"}, {"kind": "dataset", "dataset": "seed@1"}],
                         gate={"metric": "likelihood"}, promotion={"signals": ["feedback"]}), "trigger.every")

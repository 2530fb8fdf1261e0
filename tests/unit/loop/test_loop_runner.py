"""The loop end to end on fakes: online scoring, an iteration (snapshot, run, gate), canary, promotion,
automatic rollback through the deployment registry, and failures recorded as the iteration's outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from teachloop.engine.fake import FakeEngine
from teachloop.envs import Arithmetic
from teachloop.loop import LoopRunner, configure_loop, history, status
from teachloop.render import Renderer
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.deployments import Deployments
from teachloop.store.repos.loops import Loops
from teachloop.store.repos.traces import Traces
from teachloop.store.schema.loops import TraceScore
from tests.unit.loop.conftest import (
    DEPLOYMENT,
    Store,
    add_trace,
    arithmetic_traffic,
    deps_for,
    grpo_config,
    sft_config,
)
from tests.unit.loop.fakes import FailingEngine, OracleEngine

LONG = {"rl": {"prompts_per_step": 2, "group_size": 2, "max_tokens": 16}, "steps": 2, "lora": {"rank": 4}}


def _runner(store: Store, engine: Any, renderer: Renderer, events: list[tuple[str, dict[str, Any]]] | None = None,
            ) -> LoopRunner:
    listener = (lambda e, p: events.append((e, p))) if events is not None else None
    return LoopRunner(deps_for(store, engine, renderer), DEPLOYMENT, listener=listener)


def _tick(runner: LoopRunner) -> Any:
    return asyncio.run(runner.tick())


def _dep(store: Store) -> Any:
    with store.db.session(write=False) as s:
        return Deployments(s).get(store.org_id, DEPLOYMENT)


def _configure(store: Store, raw: dict[str, Any]) -> None:
    configure_loop(store.db, store.blobs, store.org_id, raw, cache=store.cache)


def test_online_scoring_finds_answers_by_task_lookup_or_metadata(store: Store, fake_engine: Any,
                                                                  renderer: Renderer) -> None:
    _configure(store, grpo_config(trigger={"every": 1000}))
    ok = arithmetic_traffic(store, 6, correct_every=2)
    stranger = add_trace(store, "What is the capital of France?", "Paris")
    result = _tick(_runner(store, fake_engine, renderer))
    assert result.scored == 7 and result.iteration is None
    with store.db.session(write=False) as s:
        scores = {t.trace_id: t for t in s.query(TraceScore)}
    assert [scores[i].score for i in ok] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert scores[stranger].score is None and scores[stranger].failure == "no reference answer"
    assert scores[ok[0]].env_digest.startswith("sha256:")
    assert _tick(_runner(store, fake_engine, renderer)).scored == 0  # each trace graded once
    raw = grpo_config(trigger={"every": 1000})
    raw["sources"] = [{"kind": "grader", "env": "arithmetic", "answer": "metadata:expected"}]
    _configure(store, raw)
    with store.db.session() as s:
        s.query(TraceScore).delete()
    tid = add_trace(store, "How much is seven and five?", "twelve, so 12", metadata={"expected": "12"})
    _tick(_runner(store, fake_engine, renderer))
    with store.db.session(write=False) as s:
        assert s.query(TraceScore).filter_by(trace_id=tid).one().score == 1.0


def test_a_failed_training_run_is_the_iterations_outcome_and_the_loop_carries_on(
    store: Store, renderer: Renderer
) -> None:
    engine = FailingEngine(vocab_size=len(renderer.tokenizer), eos_token_id=renderer.stop_token_ids()[0])
    _configure(store, sft_config(trigger={"every": 6, "min_examples": 2}, gate={"metric": "likelihood"}))
    arithmetic_traffic(store, 12, correct_every=1)
    before = _dep(store)
    events: list[tuple[str, dict[str, Any]]] = []
    result = _tick(_runner(store, engine, renderer, events))
    assert result.iteration == 1 and result.status == "failed"
    after = _dep(store)
    assert (after.revision, after.adapter_version_id, after.canary_version_id) == (before.revision, None, None)
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["status"] == "failed" and "train failed" in it["reason"] and "optimizer failure" in it["reason"]
    assert it["run"]["status"] == "failed" and it["dataset"]["digest"].startswith("sha256:")
    assert it["counts"]["train"] > 0 and "deployment is unchanged" in it["reason"]
    assert any(e == "failed" for e, _ in events)
    assert _tick(_runner(store, engine, renderer)).iteration is None  # cursor moved: nothing new yet
    arithmetic_traffic(store, 8, correct_every=1, seed=9)
    assert _tick(_runner(store, engine, renderer)).iteration == 2  # the next trigger starts a new iteration


def test_too_little_data_is_skipped_not_trained(store: Store, fake_engine: Any, renderer: Renderer) -> None:
    _configure(store, sft_config(trigger={"every": 3, "min_examples": 50}, gate={"metric": "likelihood"}))
    arithmetic_traffic(store, 6, correct_every=1)
    result = _tick(_runner(store, fake_engine, renderer))
    assert result.status == "skipped" and "min_examples 50" in result.note
    with store.db.session(write=False) as s:
        assert Datasets(s).list(store.org_id) == []


def test_an_iteration_that_is_not_better_is_rejected(store: Store, renderer: Renderer) -> None:
    engine = OracleEngine(renderer, wrong_adapters=["ignored"])
    engine.wrong_adapters = _AllAdapters()  # the candidate answers as badly as the base
    _configure(store, grpo_config(algorithm={"kind": "grpo", "train": LONG}, gate={"max_tokens": 16}))
    arithmetic_traffic(store, 20)
    result = _tick(_runner(store, engine, renderer))
    assert result.status == "rejected" and "not better" in result.note
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["gate"]["test"]["mean_diff"] == 0.0 and it["gate"]["passed"] is False
    assert _dep(store).revision == 1


class _AllAdapters:
    def __contains__(self, item: object) -> bool:
        return True


def _iterate_to_canary(store: Store, renderer: Renderer, **over: Any) -> tuple[LoopRunner, OracleEngine, Any]:
    engine = OracleEngine(renderer)
    _configure(store, grpo_config(algorithm={"kind": "grpo", "train": LONG},
                                  gate={"max_tokens": 16, "environments": [{"env": "arithmetic", "env_args": {"level": 1},
                                                                            "tasks": 20}]}, **over))
    arithmetic_traffic(store, 20, correct_every=2)
    runner = _runner(store, engine, renderer)
    result = _tick(runner)
    assert result.iteration == 1, result
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    return runner, engine, it


def _serve(store: Store, engine: OracleEngine, n: int, *, version: str | None, arm: str, good: bool,
           feedback: float | None = None) -> None:
    """Traffic served by ``version`` on ``arm``: right answers when ``good``, optionally with user feedback."""
    for task in Arithmetic(level=1).take(n, seed=77):
        answer = int(task.answer or 0)
        tid = add_trace(store, task.prompt[-1].content, f"answer: {answer if good else answer + 3}", arm=arm,
                        adapter_version_id=version)
        if feedback is not None:
            with store.db.session() as s:
                Traces(s).add_feedback(store.org_id, tid, score=feedback)


def test_a_better_candidate_goes_to_canary_then_is_rolled_back_on_a_feedback_drop(
    store: Store, renderer: Renderer
) -> None:
    runner, engine, it = _iterate_to_canary(store, renderer, promotion={"signals": ["feedback"]})
    assert it["status"] == "canary" and it["gate"]["passed"] and "better at 95%" in it["reason"]
    assert it["gate"]["test"]["method"].startswith("paired bootstrap")
    assert {s["name"] for s in it["gate"]["suites"]} == {"holdout", "arithmetic"}
    assert it["run"]["status"] == "completed" and it["candidate"] == f"{DEPLOYMENT}@1"
    dep = _dep(store)
    assert dep.canary_version_id is not None and dep.canary_percent == 50 and dep.adapter_version_id is None
    assert dep.revision == it["revisions"]["canary"] == 2
    with store.db.session(write=False) as s:
        version = s.get(type(Deployments(s).adapters.get(store.org_id, dep.canary_version_id)), dep.canary_version_id)
        assert version is not None and version.source_run_id == it["run"]["id"]
    # the canary serves; users rate it far below the primary arm: 6 ratings per arm do not show it yet (the
    # sequential test's bounds are still wider than the drop), 26 do
    _serve(store, engine, 6, version=None, arm="primary", good=True, feedback=1.0)
    _serve(store, engine, 6, version=dep.canary_version_id, arm="canary", good=True, feedback=0.0)
    result = _tick(runner)
    assert result.phase == "canary" and "not yet shown non-inferior" in result.note and "(n=6/6)" in result.note
    _serve(store, engine, 20, version=None, arm="primary", good=True, feedback=1.0)
    _serve(store, engine, 20, version=dep.canary_version_id, arm="canary", good=True, feedback=0.0)
    result = _tick(runner)
    assert result.phase == "idle"
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["status"] == "rolled_back" and "feedback score fell from 1.000 to 0.000 during the canary" in it["reason"]
    assert "shown worse, upper bound" in it["reason"] and "(n=26/26)" in it["reason"]
    dep = _dep(store)
    assert (dep.adapter_version_id, dep.canary_version_id, dep.canary_percent) == (None, None, 0)
    with store.db.session(write=False) as s:
        last = Deployments(s).history(store.org_id, DEPLOYMENT)[0]
    assert last.action == "rollback" and last.restored_from == 1 and last.actor == "loop"


def test_a_good_canary_is_promoted_and_watched_for_as_long_as_it_serves(store: Store, renderer: Renderer) -> None:
    runner, engine, it = _iterate_to_canary(store, renderer, promotion={"max_drop": 0.5})
    cand = _dep(store).canary_version_id
    _serve(store, engine, 60, version=None, arm="primary", good=True)
    _serve(store, engine, 60, version=cand, arm="canary", good=True)
    waiting = _tick(runner)
    assert waiting.phase == "watch"
    dep = _dep(store)
    assert (dep.adapter_version_id, dep.canary_version_id) == (cand, None)
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["status"] == "promoted" and "canary passed, shown non-inferior" in it["reason"]
    assert "grader 1.000 -> 1.000 (n=60/60), difference +0.000, 97.5% bounds [" in it["reason"]  # alpha shared by 2 signals
    assert it["canary"]["canary"]["candidate"]["grader_mean"] == 1.0
    # while the promoted version is watched, the trigger still starts iterations (12 + 3 newly graded >= 10)
    _serve(store, engine, 3, version=cand, arm="primary", good=True)
    second = _tick(runner)
    assert second.iteration == 2 and second.status == "rejected" and second.phase == "watch"
    # the watch does not end after watch_requests (4): 8 more good requests later, it still watches
    _serve(store, engine, 8, version=cand, arm="primary", good=True)
    assert _tick(runner).phase == "watch"
    with store.db.session(write=False) as s:
        loop = Loops(s).list(store.org_id)[0]
        assert loop.active_iteration_id == it["id"]
    [_, it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["canary"]["watch"]["candidate"]["graded"] == 4  # the newest watch_requests requests
    # ... and a drop in its newest requests rolls it back
    _serve(store, engine, 6, version=cand, arm="primary", good=False)
    assert _tick(runner).phase == "idle"
    [_, it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["status"] == "rolled_back" and "grader score fell from 1.000 to 0.000 during the watch" in it["reason"]
    dep = _dep(store)
    assert (dep.adapter_version_id, dep.canary_version_id) == (None, None)
    assert it["revisions"]["rolled_back"] == dep.revision


def test_a_canary_without_evidence_is_never_promoted_blind(store: Store, renderer: Renderer) -> None:
    from datetime import timedelta

    from teachloop.store.schema.base import utc_now

    runner, engine, it = _iterate_to_canary(store, renderer, promotion={"signals": ["feedback"]})
    cand = _dep(store).canary_version_id
    _serve(store, engine, 6, version=None, arm="primary", good=True)
    _serve(store, engine, 6, version=cand, arm="canary", good=True)  # no feedback: no online signal
    result = _tick(runner)
    assert result.phase == "canary" and "waiting for a signal with 4 samples on both arms" in result.note
    assert _dep(store).canary_version_id == cand
    later = LoopRunner(deps_for(store, engine, renderer), DEPLOYMENT, clock=lambda: utc_now() + timedelta(days=2))
    assert _tick(later).phase == "idle"
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["status"] == "rolled_back" and "inconclusive" in it["reason"] and "min_samples 4" in it["reason"]
    assert _dep(store).canary_version_id is None


def test_blind_promotion_must_be_asked_for(store: Store, renderer: Renderer) -> None:
    runner, engine, it = _iterate_to_canary(store, renderer, promotion={"signals": ["feedback"],
                                                                        "allow_blind_promotion": True})
    cand = _dep(store).canary_version_id
    _serve(store, engine, 6, version=cand, arm="canary", good=True)
    assert _tick(runner).phase == "watch"
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["status"] == "promoted" and "passed blind (allow_blind_promotion)" in it["reason"]
    assert _dep(store).adapter_version_id == cand


def test_feedback_on_traces_the_cursor_passed_counts_as_new(store: Store, renderer: Renderer) -> None:
    fake_engine = FailingEngine(vocab_size=len(renderer.tokenizer), eos_token_id=renderer.stop_token_ids()[0])
    _configure(store, sft_config(sources=[{"kind": "feedback", "min_score": 0.8, "max_score": 0.2}],
                                 trigger={"every": 3, "min_examples": 2}, gate={"metric": "likelihood"},
                                 promotion={"signals": ["feedback"]}))
    ids = arithmetic_traffic(store, 8, correct_every=1)
    for tid in ids[:4]:
        with store.db.session() as s:
            Traces(s).add_feedback(store.org_id, tid, score=1.0)
    first = _tick(_runner(store, fake_engine, renderer))
    assert first.iteration == 1 and first.phase == "idle"
    runner = _runner(store, fake_engine, renderer)
    assert _tick(runner).new_examples == 0
    for tid in ids[4:]:  # older than the cursor, rated now
        with store.db.session() as s:
            Traces(s).add_feedback(store.org_id, tid, score=1.0)
    second = _tick(runner)
    assert second.new_examples == 4 and second.iteration == 2


def test_grader_scores_of_old_traffic_count_as_new(store: Store, fake_engine: Any, renderer: Renderer) -> None:
    from datetime import UTC, datetime

    _configure(store, sft_config(trigger={"every": 1000}, gate={"metric": "likelihood"}))
    runner = _runner(store, fake_engine, renderer)
    _tick(runner)
    with store.db.session() as s:
        Loops(s).update(store.org_id, Loops(s).list(store.org_id)[0].id, cursor=datetime.now(UTC))
    arithmetic_traffic(store, 6, correct_every=1, when=datetime(2020, 1, 1, tzinfo=UTC))  # old traces, graded now
    assert _tick(runner).new_examples == 6


class _GateFails(FakeEngine):
    """Trains fine; the gate's log-likelihood evaluation raises."""

    def logprobs(self, sequences: Any, adapter: str | None = None) -> list[list[float]]:
        raise RuntimeError("simulated eval failure (CUDA error)")


def test_a_failed_gate_is_the_iterations_outcome_and_the_loop_carries_on(store: Store, renderer: Renderer) -> None:
    engine = _GateFails(vocab_size=len(renderer.tokenizer), eos_token_id=renderer.stop_token_ids()[0])
    _configure(store, sft_config(trigger={"every": 6, "min_examples": 2}, gate={"metric": "likelihood"},
                                 curation={"holdout_frac": 0.4}))
    arithmetic_traffic(store, 12, correct_every=1)
    before = _dep(store)
    result = _tick(_runner(store, engine, renderer))
    assert result.iteration == 1 and result.status == "failed" and result.phase == "idle"
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert "gate failed: RuntimeError: simulated eval failure" in it["reason"]
    assert "deployment is unchanged" in it["reason"] and it["run"]["status"] == "completed"
    assert it["candidate"] is None
    after = _dep(store)
    assert (after.revision, after.adapter_version_id, after.canary_version_id) == (before.revision, None, None)
    assert engine.list_adapters() == [] or all(not a.name.startswith("loop-base") for a in engine.list_adapters())
    arithmetic_traffic(store, 8, correct_every=1, seed=9)
    assert _tick(_runner(store, engine, renderer)).iteration == 2  # the next trigger starts a new iteration


def test_dpo_pairs_scored_by_the_grader_pass_a_reward_gate(store: Store, renderer: Renderer) -> None:
    engine = OracleEngine(renderer)
    _configure(store, grpo_config(algorithm={"kind": "dpo", "train": {"steps": 2, "lora": {"rank": 4},
                                                                       "data": {"batch_size": 2}}},
                                  gate={"max_tokens": 16}, curation={"holdout_frac": 0.5},
                                  trigger={"every": 4, "min_examples": 2}))
    arithmetic_traffic(store, 24, correct_every=1)
    arithmetic_traffic(store, 24, correct_every=10**6)  # the same prompts answered wrong: good-over-bad pairs
    result = _tick(_runner(store, engine, renderer))
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert result.status == "canary", it["reason"]
    assert [s["name"] for s in it["gate"]["suites"]] == ["holdout"] and it["gate"]["suites"][0]["metric"] == "reward"


def test_the_gate_says_why_when_no_holdout_row_has_an_answer(store: Store, fake_engine: Any,
                                                             renderer: Renderer) -> None:
    grader = {**grpo_config()["sources"][0], "min_score": 2.0}  # the grader qualifies no reply as an SFT row
    _configure(store, sft_config(sources=[{"kind": "feedback"}, grader], trigger={"every": 3, "min_examples": 2},
                                 curation={"holdout_frac": 0.5}))
    add_traces_with_feedback(store, 8)  # rated replies to prompts the environment never posed: no answers
    result = _tick(_runner(store, fake_engine, renderer))
    assert result.status == "rejected" and "none of the" in result.note and "carries a reference answer" in result.note
    assert _dep(store).revision == 1


def add_traces_with_feedback(store: Store, n: int) -> list[str]:
    ids = []
    for i in range(n):
        tid = add_trace(store, f"Tell me a fact number {i}", f"Fact {i}: water is wet.", system=None)
        with store.db.session() as s:
            Traces(s).add_feedback(store.org_id, tid, score=1.0)
        ids.append(tid)
    return ids


def test_status_and_a_change_made_outside_the_loop(store: Store, renderer: Renderer) -> None:
    runner, engine, it = _iterate_to_canary(store, renderer)
    st = status(store.db, store.org_id, DEPLOYMENT)
    assert st["phase"] == "canary" and st["serving"]["canary"] == f"{DEPLOYMENT}@1"
    assert st["latest_iteration"]["number"] == 1
    with store.db.session() as s:  # an operator ends the canary by hand
        Deployments(s).rollback(store.org_id, DEPLOYMENT, to_revision=1, actor="ops")
    _tick(runner)
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    assert it["status"] == "superseded" and "changed outside the loop" in it["reason"]
    assert _dep(store).revision == 3
    with store.db.session(write=False) as s:
        assert Loops(s).list(store.org_id)[0].phase == "idle"


def test_a_broken_reference_pauses_the_loop_without_changing_anything(store: Store, fake_engine: Any,
                                                                       renderer: Renderer) -> None:
    raw = grpo_config()
    raw["sources"].append({"kind": "dataset", "dataset": "seed-data"})
    with pytest.raises(Exception, match="seed-data"):
        _configure(store, raw)
    _configure(store, grpo_config())
    with store.db.session() as s:  # the stored config now names a dataset that does not exist
        loop = Loops(s).list(store.org_id)[0]
        loop.config = {**loop.config, "sources": [*loop.config["sources"], {"kind": "dataset", "dataset": "gone"}]}
    result = _tick(_runner(store, fake_engine, renderer))
    assert result.phase == "paused" and "sources.1.dataset" in result.note
    with store.db.session(write=False) as s:
        assert "paused" in str(Loops(s).list(store.org_id)[0].note)


def test_the_daily_budget_stops_a_run_and_blocks_the_next_iteration(store: Store, fake_engine: Any,
                                                                     renderer: Renderer) -> None:
    tiny_budget = {"train_minutes_per_day": 0.0001}  # 6 ms: spent after the first step
    _configure(store, sft_config(trigger={"every": 6, "min_examples": 2}, gate={"metric": "likelihood"},
                                 budget=tiny_budget))
    arithmetic_traffic(store, 12, correct_every=1)
    result = _tick(_runner(store, fake_engine, renderer))
    assert result.status == "failed" and "BudgetExceeded" in result.note and "budget" in result.note
    assert _dep(store).revision == 1
    arithmetic_traffic(store, 12, correct_every=1, seed=4)
    blocked = _tick(_runner(store, fake_engine, renderer))
    assert blocked.iteration is None and "budget is spent" in blocked.note


def test_warm_start_loads_the_deployed_adapter(fake_engine: Any, tmp_path: Any) -> None:
    from teachloop.catalog.adapters import folder_digest
    from teachloop.core.training import LoraSpec
    from teachloop.loop import WarmStart

    fake_engine.create_adapter("deployed", LoraSpec(rank=4, seed=7))
    saved = fake_engine.save_adapter("deployed", tmp_path / "deployed")
    warm = WarmStart(fake_engine, saved)
    warm.create_adapter("run:1", LoraSpec(rank=8, seed=1))  # the trainer's call: the deployed weights come back
    assert folder_digest(fake_engine.save_adapter("run:1", tmp_path / "run1")) == folder_digest(saved)
    warm.create_adapter("run:2", LoraSpec(rank=8, seed=1))  # only the first adapter is warm-started
    assert fake_engine.list_adapters()[-1].spec.rank == 8


def test_failure_share_reaches_the_run_and_the_prompts_carry_their_served_scores(
    store: Store, fake_engine: Any, renderer: Renderer
) -> None:
    from teachloop.loop.curation import Curated
    from teachloop.loop.sources import Candidate
    from teachloop.loop.training import prompt_rows
    from teachloop.store.schema.runs import TrainingRun

    _configure(store, grpo_config(algorithm={"kind": "grpo", "failure_share": 0.5, "train": LONG}))
    arithmetic_traffic(store, 20, correct_every=2)
    _tick(_runner(store, fake_engine, renderer))
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    with store.db.session(write=False) as s:
        run = s.get(TrainingRun, it["run"]["id"])
        assert run is not None
        env_args = run.config["rl"]["env_args"]
    assert run.config["rl"]["env"] == "traffic" and env_args["failure_share"] == 0.5
    _configure(store, grpo_config(algorithm={"kind": "grpo", "train": LONG}))  # the default: nothing extra pinned
    arithmetic_traffic(store, 20, correct_every=2, seed=5)
    _tick(_runner(store, fake_engine, renderer))
    with store.db.session(write=False) as s:
        newest = s.get(TrainingRun, history(store.db, store.org_id, DEPLOYMENT)[0]["run"]["id"])
        assert newest is not None and "failure_share" not in newest.config["rl"]["env_args"]
    msgs = [{"role": "user", "content": "2 + 2?"}]
    rows = [Curated(Candidate({"messages": msgs, "answer": "4"}, "grader", None, {}, 0.0), "train"),
            Curated(Candidate({"messages": msgs, "answer": "5"}, "grader", None, {}, 1.0), "holdout"),
            Curated(Candidate({"messages": msgs, "answer": "6"}, "dataset", None, {}, None), "train")]
    assert prompt_rows(rows) == [{"messages": msgs, "answer": "4", "info": {}, "score": 0.0},
                                 {"messages": msgs, "answer": "6", "info": {}, "score": None}]


def _two_late_iterations(store: Store, fake_engine: Any, renderer: Renderer,
                         algorithm: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Two iterations of a GRPO loop with ``algorithm`` and ``late_reward = -1`` (late from the first gate on):
    (first, second, the configs of their stored runs)."""
    from teachloop.store.schema.runs import TrainingRun

    _configure(store, grpo_config(algorithm={"kind": "grpo", "late_reward": -1.0, "train": LONG, **algorithm}))
    for seed in (0, 5):
        arithmetic_traffic(store, 20, correct_every=2, seed=seed)
        _tick(_runner(store, fake_engine, renderer))
    second, first = history(store.db, store.org_id, DEPLOYMENT)[:2]
    with store.db.session(write=False) as s:
        runs = [s.get(TrainingRun, it["run"]["id"]) for it in (first, second)]
    return first, second, [r.config for r in runs if r is not None]


def test_late_extra_draws_reach_the_runs_of_a_lineage_that_is_good_enough(
    store: Store, fake_engine: Any, renderer: Renderer
) -> None:
    first, second, configs = _two_late_iterations(store, fake_engine, renderer, {"late_extra_draws": 2})
    assert first["plan"]["extra_draws"] is None  # no gate reward yet: not late
    assert second["plan"]["extra_draws"] == 2 and "up to 2 extra draws" in second["plan"]["reason"]
    assert [c["rl"]["extra_draws"] for c in configs] == [0, 2]


def test_late_lr_scale_reaches_the_runs_of_a_lineage_that_is_good_enough(
    store: Store, fake_engine: Any, renderer: Renderer
) -> None:
    first, second, configs = _two_late_iterations(store, fake_engine, renderer, {
        "late_lr_scale": 0.25, "train": {**LONG, "optim": {"lr": 4e-4}}})
    assert first["plan"]["lr_scale"] is None  # no gate reward yet: not late
    assert second["plan"]["lr_scale"] == 0.25 and "lr x 0.25" in second["plan"]["reason"]
    assert configs[0]["optim"]["lr"] == pytest.approx(4e-4)
    # the second run continues the first candidate with its AdamW state, so at the plain lr: a quarter of it
    assert second["plan"]["optimizer"]["restored"] is True
    assert configs[1]["optim"]["lr"] == pytest.approx(4e-4 * 0.25)

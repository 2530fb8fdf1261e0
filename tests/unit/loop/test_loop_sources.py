"""Sources: which traces become SFT rows, DPO pairs or GRPO prompts, with their lineage."""

from __future__ import annotations

import pytest

from teachloop.loop import check_references, collect, configure_loop, validate_loop_config
from teachloop.loop.sources import Candidate
from teachloop.store.repos.datasets import Datasets, NewRow, encode_snapshot
from teachloop.store.repos.loops import Loops
from teachloop.store.repos.traces import Traces
from teachloop.store.schema.loops import TraceScore
from tests.unit.loop.conftest import DEPLOYMENT, Store, add_trace, grpo_config


def _collect(store: Store, raw: dict) -> list[Candidate]:  # type: ignore[type-arg]
    cfg = validate_loop_config(raw)
    configure_loop(store.db, store.blobs, store.org_id, raw, cache=store.cache)
    with store.db.session(write=False) as s:
        refs = check_references(cfg, s, blobs=store.blobs, org_id=store.org_id, cache=store.cache)
        loop = Loops(s).for_deployment(store.org_id, store.deployment_id)
        assert loop is not None
        return collect(s, cfg, refs, org_id=store.org_id, loop_id=loop.id)


def _feedback(store: Store, trace_id: str, **kw: object) -> None:
    with store.db.session() as s:
        Traces(s).add_feedback(store.org_id, trace_id, author="usr_expert", **kw)  # type: ignore[arg-type]


def _loop_id(store: Store) -> str:
    with store.db.session(write=False) as s:
        return Loops(s).list(store.org_id)[0].id


FEEDBACK = [{"kind": "feedback", "min_score": 0.8, "max_score": 0.2, "license": "CC-BY-4.0"}]


def _sft(sources: list[dict]) -> dict:  # type: ignore[type-arg]
    return grpo_config(sources=sources, algorithm={"kind": "sft", "train": {}}, gate={"metric": "likelihood"},
                       promotion={"signals": ["feedback"]})


def test_sft_rows_are_well_rated_replies_and_corrections(store: Store) -> None:
    good = add_trace(store, "Capital of France?", "Paris", system=None)
    bad = add_trace(store, "Capital of Spain?", "Lisbon", system=None)
    fixed = add_trace(store, "Capital of Italy?", "Milan", system=None)
    unrated = add_trace(store, "Capital of Peru?", "Lima", system=None)
    _feedback(store, good, score=1.0)
    _feedback(store, bad, score=0.0)
    _feedback(store, fixed, score=0.0)
    _feedback(store, fixed, corrected_output={"role": "assistant", "content": "Rome"})
    rows = {c.lineage["source_trace_id"]: c for c in _collect(store, _sft(FEEDBACK))}
    assert set(rows) == {good, fixed} and unrated not in rows
    assert rows[good].content["messages"][-1] == {"role": "assistant", "content": "Paris"}
    assert rows[good].source_kind == "feedback" and rows[good].score == 1.0
    assert rows[fixed].content["messages"][-1]["content"] == "Rome" and rows[fixed].source_kind == "correction"
    assert rows[fixed].lineage == {"source_trace_id": fixed, "license": "CC-BY-4.0", "expert_id": "usr_expert"}


def test_dpo_pairs_come_from_corrections_and_good_over_bad_replies(store: Store) -> None:
    fixed = add_trace(store, "2+2?", "5", system=None)
    _feedback(store, fixed, corrected_output={"role": "assistant", "content": "4"})
    hi = add_trace(store, "Say hi", "Hello!", system=None)
    lo = add_trace(store, "Say hi", "Go away.", system=None)
    _feedback(store, hi, score=1.0)
    _feedback(store, lo, score=0.0)
    raw = grpo_config(sources=FEEDBACK, algorithm={"kind": "dpo", "train": {}}, gate={"metric": "likelihood"},
                      promotion={"signals": ["feedback"]})
    pairs = _collect(store, raw)
    by_kind = {c.source_kind: c for c in pairs}
    assert set(by_kind) == {"correction", "feedback"}
    assert by_kind["correction"].content["chosen"]["content"] == "4"
    assert by_kind["correction"].content["rejected"]["content"] == "5"
    good = by_kind["feedback"].content
    assert (good["chosen"]["content"], good["rejected"]["content"]) == ("Hello!", "Go away.")
    assert by_kind["feedback"].lineage["rejected_trace_id"] == lo


def test_grpo_prompts_come_from_graded_traces_with_their_answer(store: Store) -> None:
    configure_loop(store.db, store.blobs, store.org_id, grpo_config(), cache=store.cache)
    t = add_trace(store, "What is 3 + 4?", "answer: 7")
    other = add_trace(store, "What is 1 + 1?", "answer: 2")
    with store.db.session() as s:
        Loops(s).add_scores([
            TraceScore(org_id=store.org_id, loop_id=_loop_id(store), trace_id=t, trace_created_at=_created(store, t),
                       env_ref="arithmetic", env_digest=_digest(store), answer="7", score=1.0),
            TraceScore(org_id=store.org_id, loop_id=_loop_id(store), trace_id=other,
                       trace_created_at=_created(store, other), env_ref="arithmetic", env_digest="sha256:" + "0" * 64,
                       answer="2", score=1.0),  # scored by another environment version: not used
        ])
    [row] = _collect(store, grpo_config())
    assert row.content == {"messages": [{"role": "system", "content": row.content["messages"][0]["content"]},
                                        {"role": "user", "content": "What is 3 + 4?"}], "answer": "7"}
    assert row.lineage["env_ref"] == "arithmetic" and row.lineage["env_version"] == "1.0.0"


def _created(store: Store, trace_id: str):  # type: ignore[no-untyped-def]
    with store.db.session(write=False) as s:
        return Traces(s).get(store.org_id, trace_id).created_at


def _digest(store: Store) -> str:
    cfg = validate_loop_config(grpo_config())
    with store.db.session(write=False) as s:
        refs = check_references(cfg, s, blobs=store.blobs, org_id=store.org_id, cache=store.cache)
    return refs.source_envs[0].digest


def test_an_owned_dataset_carries_its_lineage_forward(store: Store) -> None:
    t = add_trace(store, "q", "a", system=None)
    rows = [NewRow({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "train",
                   "expert", source_trace_id=t, expert_id="usr_9", license="CC-BY-4.0")]
    data, _ = encode_snapshot("chat", rows)
    with store.db.session() as s:
        ds, _ = Datasets(s).create(store.org_id, name="seed", kind="chat", rows=rows,
                                   blob_key=store.blobs.put_content(data))
        row_id = Datasets(s).rows(store.org_id, ds.id)[0].id
    [c] = _collect(store, _sft([{"kind": "dataset", "dataset": "seed@1"}, {"kind": "feedback"}]))
    assert c.source_kind == "dataset" and c.lineage["source_row_id"] == row_id
    assert (c.lineage["source_trace_id"], c.lineage["expert_id"], c.lineage["license"]) == (t, "usr_9", "CC-BY-4.0")
    with pytest.raises(Exception, match="holds chat rows; dpo needs pairs"):
        _collect(store, grpo_config(sources=[{"kind": "dataset", "dataset": "seed"}], algorithm={"kind": "dpo", "train": {}},
                                    gate={"metric": "likelihood"}, promotion={"signals": ["feedback"]}))
    assert DEPLOYMENT == "calc"


def test_feedback_and_scores_count_from_when_they_arrived_not_from_the_trace(store: Store) -> None:
    from datetime import UTC, datetime

    old = datetime(2020, 1, 1, tzinfo=UTC)
    t = add_trace(store, "Capital of France?", "Paris", system=None, when=old)
    _feedback(store, t, score=1.0)
    [row] = _collect(store, _sft(FEEDBACK))
    assert row.created_at is not None and row.created_at > old  # the feedback's time, not the trace's
    configure_loop(store.db, store.blobs, store.org_id, grpo_config(), cache=store.cache)
    g = add_trace(store, "What is 3 + 4?", "answer: 7", when=old)
    scored_at = datetime(2026, 6, 1, tzinfo=UTC)
    with store.db.session() as s:
        Loops(s).add_scores([TraceScore(org_id=store.org_id, loop_id=_loop_id(store), trace_id=g, trace_created_at=old,
                                        env_ref="arithmetic", env_digest=_digest(store), answer="7", score=1.0,
                                        created_at=scored_at)])
    [row] = _collect(store, grpo_config())
    assert row.created_at == scored_at


def test_pairs_and_feedback_rows_carry_the_graders_answer(store: Store) -> None:
    configure_loop(store.db, store.blobs, store.org_id, grpo_config(), cache=store.cache)
    good = add_trace(store, "What is 3 + 4?", "answer: 7")
    bad = add_trace(store, "What is 3 + 4?", "answer: 8")
    with store.db.session() as s:
        Loops(s).add_scores([
            TraceScore(org_id=store.org_id, loop_id=_loop_id(store), trace_id=t, trace_created_at=_created(store, t),
                       env_ref="arithmetic", env_digest=_digest(store), answer="7", score=v)
            for t, v in ((good, 1.0), (bad, 0.0))])
    _feedback(store, bad, corrected_output={"role": "assistant", "content": "answer: 7"})
    dpo = grpo_config(sources=[grpo_config()["sources"][0], *FEEDBACK],
                      algorithm={"kind": "dpo", "train": {}})
    with store.db.session(write=False) as s:
        cfg = validate_loop_config(dpo)
        refs = check_references(cfg, s, blobs=store.blobs, org_id=store.org_id, cache=store.cache)
        pairs = collect(s, cfg, refs, org_id=store.org_id, loop_id=_loop_id(store))
    by_kind = {c.source_kind: c.content for c in pairs}
    assert by_kind["grader"]["answer"] == "7" and by_kind["grader"]["chosen"]["content"] == "answer: 7"
    assert by_kind["correction"]["answer"] == "7"  # feedback on a graded trace carries its answer too
    from teachloop.loop.training import holdout_env

    env = holdout_env(cfg, refs, [by_kind["grader"], by_kind["correction"]])
    assert env is not None and [t.answer for t in env.tasks()] == ["7", "7"]

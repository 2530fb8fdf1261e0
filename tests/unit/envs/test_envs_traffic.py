"""The built-in ``traffic`` environment: found by name, reads its prompts file only for trusted callers, and draws
the prompts whose served reply failed at ``failure_share`` of its stream."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.core.errors import InvalidInput
from teachloop.core.files import file_digest
from teachloop.envs.builtin.traffic import TrafficPrompts
from teachloop.envs.registry import load, untrusted_references


def _prompts(tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "1 + 1?"}], "answer": "2"}) + "\n")
    return str(path), file_digest(path)


def test_traffic_is_a_builtin_name_and_the_old_module_reference_still_loads(tmp_path: Path) -> None:
    path, digest = _prompts(tmp_path)
    env = load("traffic", path=path, digest=digest, env="arithmetic")
    assert isinstance(env, TrafficPrompts) and next(env.tasks(0)).answer == "2"
    legacy = "teachloop.loop.trafficenv" + ":TrafficPrompts"  # what runs stored before the move name
    assert isinstance(load(legacy, path=path, digest=digest, env="arithmetic"), TrafficPrompts)


def test_an_untrusted_reference_may_not_make_the_server_read_a_file(tmp_path: Path) -> None:
    path, digest = _prompts(tmp_path)
    with pytest.raises(InvalidInput, match="trusted") as info:
        load("traffic", trusted=False, path=path, digest=digest, env="arithmetic")
    assert info.value.param == "path"
    with untrusted_references(), pytest.raises(InvalidInput, match="trusted"):
        load("traffic", path=path, digest=digest, env="arithmetic")


def _rows(scores: list[float | None]) -> list[dict[str, object]]:
    return [{"messages": [{"role": "user", "content": f"{i} + 1?"}], "answer": str(i + 1), "score": s}
            for i, s in enumerate(scores)]


def _ids(env: TrafficPrompts, seed: int, n: int) -> list[str]:
    return [t.id for t in itertools.islice(env.tasks(seed), n)]


def _env(rows: list[dict[str, object]], share: float) -> TrafficPrompts:
    return TrafficPrompts(rows=rows, inner=load("arithmetic"), failure_share=share)


@settings(max_examples=40, deadline=None)
@given(scores=st.lists(st.sampled_from([None, 0.0, 0.5, 1.0]), min_size=1, max_size=12), seed=st.integers(0, 9))
def test_without_a_failure_share_the_stream_is_the_plain_cycle(scores: list[float | None], seed: int) -> None:
    rows = _rows(scores)
    plain = _ids(_env(rows, 0.0), seed, 3 * len(rows))
    no_scores = _ids(_env([{k: v for k, v in r.items() if k != "score"} for r in rows], 0.5), seed, 3 * len(rows))
    assert plain == no_scores  # no row carries a score: nothing failed, so the share changes nothing
    for epoch in range(3):  # each pass holds every row once
        assert sorted(plain[epoch * len(rows):(epoch + 1) * len(rows)]) == sorted(f"traffic-{i}" for i in range(len(rows)))
    if all(s is not None and s < 1 for s in scores) or not any(s is not None and s < 1 for s in scores):
        assert _ids(_env(rows, 0.7), seed, 3 * len(rows)) == plain  # all or none failed: the plain cycle


@settings(max_examples=25, deadline=None)
@given(n_failed=st.integers(1, 5), n_ok=st.integers(1, 15), share=st.sampled_from([0.25, 0.5, 0.8]),
       seed=st.integers(0, 99))
def test_failed_prompts_make_up_their_share_of_the_stream(n_failed: int, n_ok: int, share: float, seed: int) -> None:
    rows = _rows([0.0] * n_failed + [1.0] * n_ok)
    env = _env(rows, share)
    n = 4000
    ids = _ids(env, seed, n)
    assert ids == _ids(_env(rows, share), seed, n)  # a pure function of the seed
    failed = {f"traffic-{i}" for i in range(n_failed)}
    expected = share + (1 - share) * n_failed / (n_failed + n_ok)
    observed = sum(i in failed for i in ids) / n
    assert abs(observed - expected) < 4 * (expected * (1 - expected) / n) ** 0.5 + 1e-9
    assert set(ids) == {f"traffic-{i}" for i in range(len(rows))}  # every prompt still comes up


def test_a_failure_share_outside_zero_to_one_is_refused() -> None:
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(InvalidInput, match="failure_share") as info:
            _env(_rows([0.0, 1.0]), bad)
        assert info.value.param == "failure_share"

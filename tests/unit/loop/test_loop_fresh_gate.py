"""A fresh gate sample per iteration (issue 16): each iteration's environment suites take their own, disjoint
slice of the held-out task stream, and the iteration's gate record names the slice (seed, offset, task ids);
``gate.fresh_tasks = false`` keeps the old fixed set."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from rich.console import Console

from teachloop.cli.loop import history_table
from teachloop.envs import Arithmetic
from teachloop.loop import LoopRunner, configure_loop, history
from teachloop.loop.gate import stream_slice
from teachloop.render import Renderer
from tests.unit.loop.conftest import DEPLOYMENT, Store, arithmetic_traffic, deps_for, grpo_config
from tests.unit.loop.fakes import OracleEngine

LONG = {"rl": {"prompts_per_step": 2, "group_size": 2, "max_tokens": 16}, "steps": 2, "lora": {"rank": 4}}


class _AllAdapters:
    def __contains__(self, item: object) -> bool:
        return True


def _two_iterations(store: Store, renderer: Renderer, *, fresh: bool, looks: int = 1) -> list[dict[str, Any]]:
    """Two rejected iterations (the candidate answers as badly as the base) gated on 20 arithmetic tasks."""
    engine = OracleEngine(renderer)
    engine.wrong_adapters = _AllAdapters()  # type: ignore[assignment]
    raw = grpo_config(algorithm={"kind": "grpo", "train": LONG},
                      gate={"max_tokens": 16, "fresh_tasks": fresh, "looks": looks,
                            "environments": [{"env": "arithmetic", "env_args": {"level": 1}, "tasks": 20,
                                              "seed": 1_000_003}]})
    configure_loop(store.db, store.blobs, store.org_id, raw, cache=store.cache)
    runner = LoopRunner(deps_for(store, engine, renderer), DEPLOYMENT)
    arithmetic_traffic(store, 20)
    assert asyncio.run(runner.tick()).status == "rejected"
    arithmetic_traffic(store, 12, seed=9)
    assert asyncio.run(runner.tick()).iteration == 2
    its = sorted(history(store.db, store.org_id, DEPLOYMENT), key=lambda i: i["number"])
    assert [i["status"] for i in its] == ["rejected", "rejected"], [i["reason"] for i in its]
    return [{**next(s for s in i["gate"]["suites"] if s["name"] == "arithmetic"), "sequential": i["gate"]["sequential"],
             "reason": i["reason"]} for i in its]


def test_two_iterations_are_gated_on_disjoint_slices_named_in_their_records(store: Store, renderer: Renderer) -> None:
    first, second = _two_iterations(store, renderer, fresh=True)
    a, b = first["sample"], second["sample"]
    assert (a["seed"], a["offset"], a["tasks"], a["fresh"]) == (1_000_003, 0, 20, True)
    assert (b["seed"], b["offset"], b["tasks"]) == (1_000_003, 20, 20)
    assert len(set(a["task_ids"])) == len(set(b["task_ids"])) == 20 and not set(a["task_ids"]) & set(b["task_ids"])
    stream = Arithmetic(level=1).take(40, 1_000_003)  # the records name exactly the stream's two slices
    assert a["task_ids"] == [t.id for t in stream[:20]] and b["task_ids"] == [t.id for t in stream[20:]]
    assert first["n"] == second["n"] == 20
    # ``teachloop loop history`` names each iteration's slice, compactly
    its = sorted(history(store.db, store.org_id, DEPLOYMENT), key=lambda i: i["number"])
    shown = _table_text(its)
    assert f"fresh slice: offset 0, 20 tasks, {a['repeated_prompts']} repeated prompt" in shown
    assert f"fresh slice: offset 20, 20 tasks, {b['repeated_prompts']} repeated prompt" in shown
    # stored text is never rich markup: a suite name or reason with brackets is printed as it is
    odd = {**its[1], "reason": "closed [/x] early", "gate": {**its[1]["gate"], "suites": [
        {**second, "name": "[bold]arith[/bold]", "sample": {**b, "fresh": False, "tasks": 1, "repeated_prompts": 1}},
        {**second, "name": "junk", "sample": {"offset": "<b>"}}]}}
    shown = _table_text([odd])
    assert "[bold]arith[/bold]" in shown and "closed [/x] early" in shown
    assert "fixed slice: offset 20, 1 task, 1 repeated prompt)" in shown and "<b>" not in shown


def _table_text(rows: list[dict[str, Any]]) -> str:
    """What ``teachloop loop history`` prints for ``rows`` (wide enough that no cell folds)."""
    console = Console(width=1000, record=True, file=io.StringIO())
    console.print(history_table(rows, "loop of calc"))
    return console.export_text()


def test_fresh_tasks_off_gates_every_iteration_on_the_same_tasks(store: Store, renderer: Renderer) -> None:
    first, second = _two_iterations(store, renderer, fresh=False)
    assert first["sample"]["task_ids"] == second["sample"]["task_ids"] and second["sample"]["offset"] == 0


def test_the_sequential_gate_stops_a_candidate_that_is_not_ahead_half_way(store: Store, renderer: Renderer) -> None:
    first, second = _two_iterations(store, renderer, fresh=False, looks=4)
    # chunks of 5 tasks; after the second look (10 of 20) the candidate is not ahead: stopped, refused
    for suite in (first, second):
        assert suite["n"] == 10 and suite["sequential"] == {"looks": 2, "of": 4, "evaluated": 10, "planned": 20,
                                                           "stopped": "futility", "interim_confidence": 0.999}
        assert "stopped early for futility after 10 of 20 environment tasks (look 2 of 4)" in suite["reason"]


def test_the_sequential_gate_passes_an_overwhelming_candidate_at_the_first_look(store: Store,
                                                                                renderer: Renderer) -> None:
    engine = OracleEngine(renderer)  # every adapter answers right, the base 999
    raw = grpo_config(algorithm={"kind": "grpo", "train": LONG},
                      gate={"max_tokens": 16, "looks": 4, "environments": [
                          {"env": "arithmetic", "env_args": {"level": 1}, "tasks": 80, "seed": 1_000_003}]})
    configure_loop(store.db, store.blobs, store.org_id, raw, cache=store.cache)
    runner = LoopRunner(deps_for(store, engine, renderer), DEPLOYMENT)
    arithmetic_traffic(store, 20)
    asyncio.run(runner.tick())
    it = history(store.db, store.org_id, DEPLOYMENT)[0]
    assert it["gate"]["passed"] and it["gate"]["sequential"]["stopped"] == "efficacy", it["reason"]
    assert it["gate"]["sequential"]["evaluated"] == 20 and it["gate"]["sequential"]["looks"] == 1
    assert next(s for s in it["gate"]["suites"] if s["name"] == "arithmetic")["n"] == 20


@pytest.mark.parametrize("iteration", [1, 2, 7])
def test_a_slice_counts_the_prompts_seen_earlier_in_the_stream(iteration: int) -> None:
    env = Arithmetic(level=1)
    tasks, record = stream_slice(env, seed=5, tasks=30, iteration=iteration, fresh=True)
    earlier = {t.prompt[-1].content for t in env.take((iteration - 1) * 30, 5)}
    assert record["offset"] == (iteration - 1) * 30 and len(tasks) == 30
    assert record["repeated_prompts"] == sum(t.prompt[-1].content in earlier for t in tasks)
    if iteration == 7:  # one-digit arithmetic has few distinct problems: disjoint positions, repeated prompts
        assert record["repeated_prompts"] > 0

"""The loop keeps what it learns (issue 16): the lineage's start, adaptive steps, late temperature, the
switch back to the behaviour before it, ``algorithm.continue_from`` confined to the deployment's own loop, and
the AdamW state that goes with a continued candidate (restored, checked through the checkpoints the runs stored;
a state that does not fit refused with the reason on the plan; never one of a run outside the loop)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from teachloop.core.errors import InvalidInput
from teachloop.loop import LoopRunner, configure_loop, history, validate_loop_config
from teachloop.loop.lineage import gate_rewards, not_worse, plan
from teachloop.render import Renderer
from teachloop.store import Tenancy
from teachloop.store.repos.deployments import AdapterVersions, Deployments, DeploymentState
from teachloop.store.schema.deployments import AdapterVersion
from teachloop.store.schema.loops import LoopIteration
from tests.unit.loop.conftest import DEPLOYMENT, Store, arithmetic_traffic, deps_for, grpo_config
from tests.unit.loop.fakes import OracleEngine

LONG = {"rl": {"prompts_per_step": 2, "group_size": 2, "max_tokens": 16}, "steps": 2, "lora": {"rank": 4}}


def _gate(base: float, cand: float, n: int = 100) -> dict[str, Any]:
    return {"passed": False, "suites": [{"name": "arithmetic", "metric": "reward", "n": n, "deciding": True,
                                         "baseline_mean": base, "candidate_mean": cand, "mean_diff": cand - base}]}


def _it(number: int, status: str, base: float, cand: float, *, baseline: str | None = "av_dep",
        plan_: dict[str, Any] | None = None, candidate: str | None = None) -> LoopIteration:
    return LoopIteration(number=number, status=status, run_id=f"run_{number}", baseline_version_id=baseline,
                         candidate_version_id=candidate, gate=_gate(base, cand), plan=plan_)


DEPLOYED = AdapterVersion(id="av_dep", name=DEPLOYMENT, version=1, digest="sha256:" + "d" * 64, blob_key="dep-key",
                          base_model="tiny-base")


def _cfg(**algorithm: Any) -> Any:
    return validate_loop_config(grpo_config(algorithm={"kind": "grpo", "train": {**LONG, "steps": 4}, **algorithm}))


def _keys(run_id: str) -> str | None:
    return f"key-{run_id}"


def test_the_not_worse_rule_reads_the_gate_record() -> None:
    assert gate_rewards(_gate(0.5, 0.6)) == pytest.approx((0.5, 0.6))
    assert gate_rewards({"suites": []}) is None and not not_worse(None, 0.05)
    assert not_worse(_gate(0.5, 0.5), 0.05) and not_worse(_gate(0.5, 0.52), 0.05)
    assert not not_worse(_gate(0.5, 0.49), 0.05)  # pooled mean below the deployed version's
    guard = _gate(0.5, 0.6)
    guard["suites"].append({"name": "holdout", "n": 10, "deciding": False, "baseline_mean": 0.9,
                            "candidate_mean": 0.7, "mean_diff": -0.2})
    assert not not_worse(guard, 0.05)  # a suite fell by more than max_regression (a record without verdicts)
    guard["suites"][-1]["regression"] = {"drop": 0.2, "shown": False, "p_value": 0.3, "guarded": False}
    assert not_worse(guard, 0.05)  # the gate's guard did not refuse on it: the drop was not shown
    guard["suites"][-1]["regression"] = {"drop": 0.2, "shown": True, "p_value": 0.01, "guarded": True}
    assert not not_worse(guard, 0.05)


def test_the_newest_not_worse_candidate_of_the_lineage_is_continued() -> None:
    cfg = _cfg()
    p = plan(cfg, DEPLOYED, [], _keys)
    assert (p.start, p.adapter_key, p.steps, p.temperature) == ("deployed", "dep-key", 4, None)
    # iteration 2 was worse than the deployed version: skipped, back to its not-worse ancestor (iteration 1)
    hist = [_it(2, "rejected", 0.5, 0.4), _it(1, "rejected", 0.5, 0.55)]
    p = plan(cfg, DEPLOYED, hist, _keys)
    assert (p.start, p.adapter_key, p.parent_iteration, p.parent_reward) == ("candidate", "key-run_1", 1, 0.55)
    # failed, rolled back and untrained iterations never start a lineage
    hist = [_it(3, "rolled_back", 0.5, 0.9), _it(2, "failed", 0.5, 0.9), *hist]
    assert plan(cfg, DEPLOYED, hist, _keys).parent_iteration == 1
    # a promotion since: its candidate is the deployed adapter, a new lineage starts from it
    promoted = _it(4, "promoted", 0.5, 0.7, candidate="av_new")
    new = AdapterVersion(id="av_new", name=DEPLOYMENT, version=2, digest="sha256:" + "e" * 64, blob_key="new-key",
                         base_model="tiny-base")
    p = plan(cfg, new, [promoted, *hist], _keys)
    assert (p.start, p.adapter_key, p.parent_reward) == ("deployed", "new-key", 0.7)
    # a candidate whose run left no adapter is passed over
    assert plan(cfg, DEPLOYED, [_it(1, "rejected", 0.5, 0.6)], lambda r: None).start == "deployed"


def test_steps_adapt_to_how_much_the_candidate_still_improves_and_late_rollouts_cool() -> None:
    cfg = _cfg(max_steps=12, late_temperature=0.5, late_reward=0.8, late_extra_draws=2)
    first = _it(1, "rejected", 0.5, 0.6, plan_={"start": "deployed", "steps": 4})
    p = plan(cfg, DEPLOYED, [first], _keys)
    assert p.steps == 8 and "still improved" in p.reason and p.temperature is None  # 0.6 < late_reward
    assert p.extra_draws is None and p.to_json()["extra_draws"] is None
    second = _it(2, "rejected", 0.5, 0.85, plan_={"start": "candidate", "parent_reward": 0.6, "steps": 8})
    p = plan(cfg, DEPLOYED, [second, first], _keys)
    assert p.steps == 12 and p.parent_iteration == 2  # doubled, capped at max_steps
    assert p.temperature == 0.5 and "temperature 0.5" in p.reason  # the start's gate reward 0.85 >= 0.8
    assert p.extra_draws == 2 and "up to 2 extra draws" in p.reason and p.to_json()["extra_draws"] == 2
    only_draws = plan(_cfg(max_steps=12, late_extra_draws=1), DEPLOYED, [second, first], _keys)
    assert (only_draws.temperature, only_draws.extra_draws) == (None, 1) and "temperature" not in only_draws.reason
    worse = _it(3, "rejected", 0.5, 0.7, plan_={"start": "candidate", "parent_reward": 0.85, "steps": 12})
    p = plan(cfg, DEPLOYED, [worse, second, first], _keys)
    assert p.steps == 4 and "got worse" in p.reason and p.parent_iteration == 3  # 0.7 is still not worse than 0.5
    flat = _it(3, "rejected", 0.5, 0.85, plan_={"start": "candidate", "parent_reward": 0.85, "steps": 12})
    assert plan(cfg, DEPLOYED, [flat, second, first], _keys).steps == 12


def test_late_lr_scale_applies_from_the_late_reward_on() -> None:
    cfg = _cfg(late_lr_scale=0.25, late_reward=0.8)
    first = _it(1, "rejected", 0.5, 0.6, plan_={"start": "deployed", "steps": 4})
    early = plan(cfg, DEPLOYED, [first], _keys)
    assert early.lr_scale is None and early.to_json()["lr_scale"] is None and "lr x" not in early.reason
    second = _it(2, "rejected", 0.5, 0.85, plan_={"start": "candidate", "parent_reward": 0.6, "steps": 8})
    late = plan(cfg, DEPLOYED, [second, first], _keys)
    assert late.lr_scale == 0.25 and late.to_json()["lr_scale"] == 0.25 and "lr x 0.25" in late.reason
    assert plan(_cfg(), DEPLOYED, [second, first], _keys).lr_scale is None  # off by default
    # the deployed version's own gate reward counts as the start's: a lineage that was refused all along
    assert plan(cfg, DEPLOYED, [_it(1, "rejected", 0.9, 0.7)], _keys).lr_scale == 0.25


def test_through_worse_continues_a_worse_candidate_until_too_many_in_a_row() -> None:
    def line(*rewards: float) -> list[LoopIteration]:
        """Iterations 1..n, each continuing the one before, with these candidate gate rewards (deployed: 0.5)."""
        its = [_it(1, "rejected", 0.5, rewards[0], plan_={"start": "deployed", "steps": 4})]
        for n, r in enumerate(rewards[1:], start=2):
            its.append(_it(n, "rejected", 0.5, r, plan_={"start": "candidate", "parent_iteration": n - 1,
                                                          "parent_reward": rewards[n - 2], "steps": 4}))
        return its[::-1]

    two = _cfg(through_worse=2)
    p = plan(two, DEPLOYED, line(0.55, 0.45), _keys)  # one worse in a row: continued
    assert (p.start, p.parent_iteration, p.parent_reward) == ("candidate", 2, 0.45)
    assert "1 of algorithm.through_worse = 2 in a row" in p.reason
    assert plan(two, DEPLOYED, line(0.55, 0.45, 0.4), _keys).parent_iteration == 3  # two in a row
    assert plan(two, DEPLOYED, line(0.55, 0.45, 0.4, 0.3), _keys).parent_iteration == 1  # three: back to 1
    assert plan(two, DEPLOYED, line(0.55, 0.45, 0.4, 0.6), _keys).parent_iteration == 4  # climbed out of it
    assert plan(two, DEPLOYED, line(0.4, 0.35, 0.3), _keys).start == "deployed"  # no not-worse one to go back to
    # the default (0) is the not-worse rule; a rollback is never continued, whatever through_worse says
    assert plan(_cfg(), DEPLOYED, line(0.55, 0.45), _keys).parent_iteration == 1
    rolled = [_it(3, "rolled_back", 0.5, 0.9), *line(0.55, 0.45)]
    assert plan(two, DEPLOYED, rolled, _keys).parent_iteration == 2


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3), st.lists(st.tuples(st.sampled_from(["rejected", "rolled_back", "failed"]),
                                             st.sampled_from([0.3, 0.5, 0.7]), st.integers(0, 12)),
                                   min_size=1, max_size=12))
def test_the_start_is_the_newest_candidate_while_its_line_ends_in_at_most_n_worse(
        n: int, rows: list[tuple[str, float, int]]) -> None:
    """For any history: the plan continues the newest rejected candidate when its run of worse candidates in a
    row (itself, then its parents) is at most ``through_worse``, else the newest not-worse one (with 0: always
    the newest not-worse one, the rule before ``through_worse``)."""
    its = []
    for number, (status, reward, parent) in enumerate(rows, start=1):
        start = {"start": "candidate", "parent_iteration": parent} if 0 < parent < number else {"start": "deployed"}
        its.append(_it(number, status, 0.5, reward, plan_={**start, "steps": 4}))
    by = {it.number: it for it in its if it.status != "failed"}  # a failed run's candidate is in no line

    def worse_run(it: LoopIteration | None) -> int:
        k = 0
        while it is not None and gate_rewards(it.gate)[1] < 0.5:  # type: ignore[index]
            k += 1
            parent = (it.plan or {}).get("parent_iteration")
            it = by.get(parent) if parent else None
        return k

    hist = its[::-1]
    p = plan(_cfg(through_worse=n), DEPLOYED, hist, _keys)
    rejected = [it for it in hist if it.status == "rejected"]
    newest_not_worse = next((it.number for it in rejected if not_worse(it.gate, 0.05)), None)
    if rejected and 0 < worse_run(rejected[0]) <= n:
        assert p.parent_iteration == rejected[0].number and "in a row" in p.reason
    else:
        assert p.parent_iteration == newest_not_worse
    assert p.start == ("candidate" if p.parent_iteration else "deployed")


def test_the_switch_gives_the_behaviour_before_issue_16() -> None:
    cfg = _cfg(lineage=False)
    hist = [_it(2, "rejected", 0.5, 0.9, plan_={"steps": 4}), _it(1, "rejected", 0.5, 0.6)]
    p = plan(cfg, DEPLOYED, hist, _keys)
    assert (p.start, p.adapter_key, p.steps, p.temperature) == ("deployed", "dep-key", 4, None)
    assert plan(_cfg(warm_start=False), DEPLOYED, hist, _keys).adapter_key is None


def test_the_state_of_the_run_that_trained_the_start_goes_with_it_and_only_a_run_of_this_loop() -> None:
    cfg = _cfg()
    states = {"run_1": "ckpt-1", "run_9": "ckpt-9"}.get
    hist = [_it(2, "rejected", 0.5, 0.4), _it(1, "rejected", 0.5, 0.55)]
    p = plan(cfg, DEPLOYED, hist, _keys, final_state=states)
    assert (p.adapter_key, p.state_key, p.state_run) == ("key-run_1", "ckpt-1", "run_1")
    assert p.to_json()["optimizer"] == {"restored": True, "run": "run_1", "reason": p.optimizer}
    # the deployed version: its source run's state only when that run is one of this loop's iterations
    mine = AdapterVersion(id="av_dep", name=DEPLOYMENT, version=1, digest="sha256:" + "d" * 64, blob_key="dep-key",
                          base_model="tiny-base", source_run_id="run_1")
    assert plan(cfg, mine, [], _keys, final_state=states).state_key is None  # no iteration of this loop made it
    p = plan(_cfg(lineage=False), mine, hist, _keys, final_state=states)
    assert (p.start, p.state_key) == ("deployed", "ckpt-1")
    foreign = AdapterVersion(id="av_dep", name=DEPLOYMENT, version=1, digest="sha256:" + "d" * 64,
                             blob_key="dep-key", base_model="tiny-base", source_run_id="run_9")  # not of this loop
    p = plan(_cfg(lineage=False), foreign, hist, _keys, final_state=states)
    assert p.state_key is None and "no run of this loop" in p.optimizer
    assert plan(cfg, DEPLOYED, hist, _keys, final_state=lambda r: None).state_key is None  # no final checkpoint
    assert plan(_cfg(keep_optimizer=False), DEPLOYED, hist, _keys, final_state=states).state_key is None
    assert plan(_cfg(warm_start=False), DEPLOYED, hist, _keys, final_state=states).state_key is None
    refused = plan(cfg, DEPLOYED, hist, _keys, final_state=states).without_state("it does not fit")
    assert refused.state_key is None and refused.to_json()["optimizer"]["restored"] is False
    assert "it does not fit" in refused.optimizer


def test_config_rules_name_the_field() -> None:
    for algorithm, field in (({"max_steps": 2}, "algorithm.max_steps"),
                             ({"continue_from": "calc@1", "warm_start": False}, "algorithm.continue_from"),
                             ({"late_temperature": 0}, "algorithm.late_temperature"),
                             ({"late_extra_draws": -1}, "algorithm.late_extra_draws"),
                             ({"late_extra_draws": 17}, "algorithm.late_extra_draws"),
                             ({"late_lr_scale": 0}, "algorithm.late_lr_scale"),
                             ({"late_lr_scale": 1.5}, "algorithm.late_lr_scale"),
                             ({"failure_share": 1.0}, "algorithm.failure_share"),
                             ({"failure_share": -0.5}, "algorithm.failure_share"),
                             ({"through_worse": -1}, "algorithm.through_worse"),
                             ({"through_worse": 2, "lineage": False}, "algorithm.through_worse"),
                             ({"through_worse": 2, "warm_start": False}, "algorithm.through_worse")):
        with pytest.raises(InvalidInput) as info:
            _cfg(**algorithm)
        assert info.value.param == field
    with pytest.raises(InvalidInput) as info:
        validate_loop_config(grpo_config(algorithm={"kind": "sft", "late_temperature": 0.5, "train": {"steps": 2}}))
    assert info.value.param == "algorithm.late_temperature"
    with pytest.raises(InvalidInput, match="only grpo") as info:
        validate_loop_config(grpo_config(algorithm={"kind": "sft", "late_extra_draws": 1, "train": {"steps": 2}}))
    assert info.value.param == "algorithm.late_extra_draws"
    with pytest.raises(InvalidInput, match="only grpo") as info:
        validate_loop_config(grpo_config(algorithm={"kind": "sft", "failure_share": 0.5, "train": {"steps": 2}}))
    assert info.value.param == "algorithm.failure_share"


class _Recording(OracleEngine):
    """Every adapter answers as badly as the base when greedy (so each candidate is "not better" but not worse),
    and right in every other rollout sample (so each group has a reward spread and GRPO really steps AdamW); the
    digest of each folder an adapter is loaded from is recorded."""

    def __init__(self, renderer: Renderer) -> None:
        super().__init__(renderer)
        self.wrong_adapters = _All()  # type: ignore[assignment]
        self.loaded: list[tuple[str, str]] = []

    def sample(self, prompts: Any, n: int, params: Any, adapter: str | None = None, **kw: Any) -> Any:
        wrong = super().sample(prompts, n, params, adapter, **kw)
        if params.temperature == 0 or adapter is None:
            return wrong
        self.wrong_adapters = set()
        try:
            right = super().sample(prompts, n, params, adapter, **kw)
        finally:
            self.wrong_adapters = _All()  # type: ignore[assignment]
        return [[r[i] if i % 2 == 0 else w[i] for i in range(n)] for r, w in zip(right, wrong, strict=True)]

    def load_adapter(self, name: str, path: Any) -> Any:
        self.loaded.append((name, _folder_digest(Path(path))))
        return super().load_adapter(name, path)

    def load_checkpoint(self, name: str, path: Any) -> Any:
        self.loaded.append((name, _folder_digest(Path(path) / "adapter")))
        return super().load_checkpoint(name, path)


class _All:
    def __contains__(self, item: object) -> bool:
        return True


def _folder_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def _two_iterations(store: Store, renderer: Renderer, between: Callable[[], object] = lambda: None,
                    **algorithm: Any) -> tuple[_Recording, list[dict[str, Any]]]:
    engine = _Recording(renderer)
    configure_loop(store.db, store.blobs, store.org_id,
                   grpo_config(algorithm={"kind": "grpo", "train": LONG, **algorithm}, gate={"max_tokens": 16}),
                   cache=store.cache)
    runner = LoopRunner(deps_for(store, engine, renderer), DEPLOYMENT)
    arithmetic_traffic(store, 20)
    assert asyncio.run(runner.tick()).status == "rejected"
    between()
    arithmetic_traffic(store, 20, seed=5)
    assert asyncio.run(runner.tick()).status == "rejected"
    return engine, history(store.db, store.org_id, DEPLOYMENT)


def test_the_next_iteration_trains_on_from_a_candidate_that_was_not_worse(store: Store, renderer: Renderer,
                                                                          tmp_path: Path) -> None:
    engine, (second, first) = _two_iterations(store, renderer, max_steps=8)
    assert first["plan"]["start"] == "base" and first["plan"]["steps"] == 2
    assert second["plan"]["start"] == "candidate" and second["plan"]["parent_iteration"] == 1
    assert second["plan"]["steps"] == 2  # equal to its start: neither better nor worse, the steps stay
    assert second["run"]["steps"] == 2
    # the second run's adapter started as a copy of the first run's final adapter
    from teachloop.train.runs import RunStore

    run1 = RunStore(store.db, store.blobs).get(store.org_id, first["run"]["id"])
    assert run1.final_adapter_key is not None
    want = _folder_digest(store.blobs.get_dir(run1.final_adapter_key, tmp_path / "run1"))
    assert (f"run:{second['run']['id']}", want) in engine.loaded
    # ... with its AdamW state (test_a_continued_candidate_carries_its_optimizer_state), so at the plain lr
    run2 = RunStore(store.db, store.blobs).get(store.org_id, second["run"]["id"])
    assert run2.config["optim"] == run1.config["optim"]


def _stored_steps(store: Store, run: dict[str, Any], tmp: Path) -> tuple[int, set[int]]:
    """(the engine's step count, AdamW's per-parameter step counts) in the checkpoint the run ended with."""
    from teachloop.train.runs import RunStore

    info = RunStore(store.db, store.blobs).get(store.org_id, run["id"])
    folder = store.blobs.get_dir(str(info.last_checkpoint_key), tmp / info.id)
    state = torch.load(folder / "optimizer.pt", weights_only=True)["state"]
    return json.loads((folder / "checkpoint.json").read_text())["step"], {int(v["step"]) for v in state.values()}


def test_a_continued_candidate_carries_its_optimizer_state(store: Store, renderer: Renderer, tmp_path: Path) -> None:
    _, (second, first) = _two_iterations(store, renderer)
    assert first["plan"]["optimizer"]["restored"] is False  # a fresh adapter
    opt = second["plan"]["optimizer"]
    assert opt["restored"] is True and opt["run"] == first["run"]["id"] and "plain lr" in opt["reason"]
    # what the runs stored: the second run's AdamW counted on from the first's 2 steps (a fresh one ends at 2)
    assert _stored_steps(store, first["run"], tmp_path) == (2, {2})
    assert _stored_steps(store, second["run"], tmp_path) == (4, {4})


def test_with_keep_optimizer_off_a_continued_run_starts_a_fresh_adamw_at_the_scaled_lr(store: Store,
                                                                                       renderer: Renderer,
                                                                                       tmp_path: Path) -> None:
    from teachloop.train.runs import RunStore

    _, (second, first) = _two_iterations(store, renderer, keep_optimizer=False)
    assert second["plan"]["start"] == "candidate" and second["plan"]["optimizer"]["restored"] is False
    assert "keep_optimizer = false" in second["plan"]["optimizer"]["reason"]
    assert _stored_steps(store, second["run"], tmp_path) == (2, {2})
    runs = RunStore(store.db, store.blobs)
    run1, run2 = (runs.get(store.org_id, r["run"]["id"]) for r in (first, second))
    assert run2.config["optim"]["lr"] == run1.config["optim"]["lr"] * 0.5  # algorithm.continue_lr_scale


def test_a_saved_state_that_does_not_fit_the_adapter_is_not_restored_and_the_plan_says_why(
        store: Store, renderer: Renderer, tmp_path: Path) -> None:
    from teachloop.train.runs import RunStore

    runs = RunStore(store.db, store.blobs)

    def other_rank() -> None:  # the first run's checkpoint now holds the moments of a rank-8 adapter
        (run,) = [r for r in runs.list_runs(store.org_id)]
        vocab = len(renderer.tokenizer)
        params = [torch.nn.Parameter(torch.zeros(vocab, 8)), torch.nn.Parameter(torch.zeros(8, vocab))]
        opt = torch.optim.AdamW(params)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
        store.blobs.put_file(f"{run.last_checkpoint_key}/optimizer.pt", tmp_path / "optimizer.pt")

    _, (second, first) = _two_iterations(store, renderer, between=other_rank)
    assert second["status"] == "rejected"  # the iteration trained and was gated: the state was set aside
    opt = second["plan"]["optimizer"]
    assert opt["restored"] is False and opt["run"] == first["run"]["id"]
    vocab = len(renderer.tokenizer)
    assert f"exp_avg of A (parameter 0) has shape ({vocab}, 8), expected ({vocab}, 4)" in opt["reason"]
    assert "runs/" in opt["reason"] and "/tmp" not in opt["reason"]  # names the stored checkpoint
    assert _stored_steps(store, second["run"], tmp_path) == (2, {2})  # a fresh AdamW ...
    run1, run2 = (runs.get(store.org_id, r["run"]["id"]) for r in (first, second))
    assert run2.config["optim"]["lr"] == run1.config["optim"]["lr"] * 0.5  # ... at the stop-gap's lr


def test_a_continued_run_trains_at_a_scaled_lr_ramped_up_unless_the_config_sets_a_warmup() -> None:
    from teachloop.loop.training import continued_optim

    raw = {"steps": 12, "optim": {"lr": 4e-4}}
    assert continued_optim(raw, 0.5, 0.34)["optim"] == {"lr": 2e-4, "warmup_steps": 4}
    assert raw["optim"] == {"lr": 4e-4}  # not changed in place
    mine = {"steps": 12, "optim": {"lr": 4e-4, "warmup_steps": 0}}
    assert continued_optim(mine, 0.5, 0.34) == mine  # the config's own schedule wins
    assert continued_optim({"steps": 10, "optim": {"lr": 1e-4}}, 1.0, 0.0) == {"steps": 10, "optim": {"lr": 1e-4}}
    assert continued_optim({"steps": 10}, 1.0, 0.2)["optim"]["warmup_steps"] == 2


@settings(max_examples=50, deadline=None)
@given(lr=st.floats(1e-6, 1e-2), scale=st.floats(0.01, 1.0), warmup=st.sampled_from([None, 0, 3]))
def test_scaled_lr_multiplies_the_lr_and_keeps_the_rest(lr: float, scale: float, warmup: int | None) -> None:
    from teachloop.loop.training import scaled_lr
    from teachloop.train.config import OptimSection

    optim: dict[str, Any] = {"lr": lr, **({"warmup_steps": warmup} if warmup is not None else {})}
    raw = {"steps": 10, "optim": optim}
    out = scaled_lr(raw, scale)
    assert out["optim"] == {**optim, "lr": pytest.approx(lr * scale)} and out["steps"] == 10
    assert raw["optim"] == optim  # not changed in place
    default = OptimSection.model_fields["lr"].default
    assert scaled_lr({"steps": 3}, scale)["optim"] == {"lr": pytest.approx(default * scale)}


def test_with_the_switch_off_every_iteration_restarts(store: Store, renderer: Renderer) -> None:
    engine, (second, first) = _two_iterations(store, renderer, lineage=False)
    assert first["plan"]["start"] == second["plan"]["start"] == "base"
    assert not any(name.startswith("run:") for name, _ in engine.loaded)  # a fresh adapter each time


def test_continue_from_is_confined_to_the_deployments_own_loop(store: Store, renderer: Renderer) -> None:
    engine, (_, first) = _two_iterations(store, renderer)
    run_id = first["run"]["id"]
    with store.db.session() as s:
        Deployments(s).create(store.org_id, "other", DeploymentState("tiny-base"))
        other = Tenancy(s).create_org("rival").id
        Deployments(s).create(other, DEPLOYMENT, DeploymentState("tiny-base"))
        mine, _ = AdapterVersions(s).publish(store.org_id, name=DEPLOYMENT, digest="sha256:" + "a" * 64,
                                             blob_key="sha256:" + "a" * 64, base_model="tiny-base", actor="t")
        theirs, _ = AdapterVersions(s).publish(store.org_id, name="other", digest="sha256:" + "b" * 64,
                                               blob_key="sha256:" + "b" * 64, base_model="tiny-base", actor="t")
        rivals, _ = AdapterVersions(s).publish(other, name=DEPLOYMENT, digest="sha256:" + "c" * 64,
                                               blob_key="sha256:" + "c" * 64, base_model="tiny-base", actor="t")
        mine_ref, theirs_ref, rivals_id = mine.ref, theirs.ref, rivals.id

    def configure(deployment: str, ref: str, org: str | None = None) -> None:
        raw = grpo_config(algorithm={"kind": "grpo", "train": LONG, "continue_from": ref})
        configure_loop(store.db, store.blobs, org or store.org_id, {**raw, "deployment": deployment},
                       cache=store.cache)

    configure(DEPLOYMENT, run_id)  # its own loop's run, and its own adapter version: accepted
    configure(DEPLOYMENT, mine_ref)
    for deployment, ref, org, why in (("other", run_id, None, "not a candidate of the loop of deployment 'other'"),
                                      (DEPLOYMENT, theirs_ref, None, "another deployment"),
                                      (DEPLOYMENT, rivals_id, None, "not found"),  # another organisation's
                                      (DEPLOYMENT, run_id, other, "not a candidate")):
        with pytest.raises(InvalidInput, match=why) as info:
            configure(deployment, ref, org)
        assert info.value.param == "algorithm.continue_from"

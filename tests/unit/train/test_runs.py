"""Training runs on a tiny Llama: each algorithm learns a toy task, resume == uninterrupted, inputs refused early."""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from teachloop.core import InvalidInput, NotFound
from teachloop.train import Trainer, TrainerDeps, validate_config
from teachloop.train.runs import RunStore
from tests.unit.train.conftest import Digits
from tests.unit.train.test_config_and_helpers import documented_metrics

DIGITS = "tests.unit.train.conftest:Digits"


def _deps(engine: Any, renderer: Any, store: Any, tmp_path: Path) -> TrainerDeps:
    db, blobs, org = store
    return TrainerDeps(engine=engine, renderer=renderer, database=db, blobs=blobs, org_id=org,
                       env_cache=tmp_path / "envs")


def _grpo(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "toy-grpo", "algorithm": "grpo", "steps": 12, "checkpoint_every": 0, "seed": 1,
        "lora": {"rank": 8, "unembed": True}, "optim": {"lr": 3e-2, "grad_clip": 1.0},
        "rl": {"env": DIGITS, "prompts_per_step": 4, "group_size": 6, "max_tokens": 8, "temperature": 1.0},
        "eval": {"tasks": 0},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def _train_values(runs: RunStore, org: str, run_id: str, key: str) -> list[float]:
    return [v[key] for _, _, v in runs.metrics(org, run_id, "train") if key in v]


@pytest.mark.parametrize(
    "rl",
    [
        pytest.param({}, id="ppo"),
        pytest.param({"loss": "importance_sampling"}, id="importance_sampling"),
        pytest.param({"loss": "cispo"}, id="cispo"),
        pytest.param({"advantage": "no_std"}, id="no_std"),
        pytest.param({"kl_coef": 0.05}, id="kl_coef"),
    ],
)
def test_grpo_raises_the_reward_of_a_toy_task(
    rl: dict[str, Any], engine: Any, renderer: Any, store: Any, tmp_path: Path
) -> None:
    """Each policy loss, the no-std advantage and the KL penalty learn the toy task in 12 steps."""
    deps = _deps(engine, renderer, store, tmp_path)
    run = asyncio.run(Trainer(validate_config(_grpo(rl=rl)), deps).run())
    assert run.status == "completed" and run.step == 12
    runs = RunStore(deps.database, deps.blobs)
    rewards = _train_values(runs, deps.org_id, run.id, "reward_mean")
    assert statistics.fmean(rewards[-3:]) > statistics.fmean(rewards[:3]) + 0.1, rewards
    assert run.inputs["env"]["digest"].startswith("sha256:")
    keys = {k for _, _, v in runs.metrics(deps.org_id, run.id) for k in v}
    assert keys <= documented_metrics(), keys - documented_metrics()


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_loss_goes_down_and_is_evaluated_before_and_after(
    engine: Any, renderer: Any, store: Any, tmp_path: Path
) -> None:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"The answer is {2 * i}."}]} for i in range(12)]
    data = _jsonl(tmp_path / "sft.jsonl", rows)
    cfg = validate_config({"algorithm": "sft", "steps": 15, "checkpoint_every": 5,
                           "lora": {"rank": 8, "unembed": True}, "optim": {"lr": 1e-2}, "data": {"train": str(data), "batch_size": 4, "holdout_frac": 0.2},
                           "eval": {"tasks": 0}})
    deps = _deps(engine, renderer, store, tmp_path)
    run = asyncio.run(Trainer(cfg, deps).run())
    runs = RunStore(deps.database, deps.blobs)
    losses = _train_values(runs, deps.org_id, run.id, "loss")
    assert statistics.fmean(losses[-3:]) < 0.6 * statistics.fmean(losses[:3])
    evals = {s: v for s, _, v in runs.metrics(deps.org_id, run.id, "eval")}
    assert set(evals) == {0, 15} and evals[15]["heldout_nll"] < evals[0]["heldout_nll"]
    assert run.inputs["dataset"]["rows"] == 12 and run.inputs["dataset"]["used"] == 12


def test_dpo_learns_the_preference(engine: Any, renderer: Any, store: Any, tmp_path: Path) -> None:
    rows = [{"prompt": f"Pick a colour {i}", "chosen": "blue blue blue", "rejected": "red red red"} for i in range(8)]
    data = _jsonl(tmp_path / "dpo.jsonl", rows)
    cfg = validate_config({"algorithm": "dpo", "steps": 12, "checkpoint_every": 0,
                           "lora": {"rank": 8, "unembed": True}, "optim": {"lr": 2e-2}, "data": {"train": str(data), "batch_size": 4, "dpo_beta": 0.5,
                                                          "holdout_frac": 0.25}, "eval": {"tasks": 0}})
    deps = _deps(engine, renderer, store, tmp_path)
    run = asyncio.run(Trainer(cfg, deps).run())
    runs = RunStore(deps.database, deps.blobs)
    losses = _train_values(runs, deps.org_id, run.id, "loss")
    assert losses[-1] < losses[0] and losses[0] == pytest.approx(0.6931, abs=0.01)  # log 2: starts at the base
    evals = {s: v for s, _, v in runs.metrics(deps.org_id, run.id, "eval")}
    assert evals[12]["heldout_accuracy"] == 1.0 and evals[12]["heldout_dpo_loss"] < evals[0]["heldout_dpo_loss"]


class _Killed(Exception):
    pass


def test_resume_after_a_kill_equals_the_uninterrupted_run(
    engine: Any, renderer: Any, store: Any, tmp_path: Path
) -> None:
    """Kill a GRPO run after step 3 (last checkpoint: 2); resuming repeats step 3 exactly and ends identical."""
    cfg = validate_config(_grpo(steps=4, checkpoint_every=2))
    deps = _deps(engine, renderer, store, tmp_path)
    runs = RunStore(deps.database, deps.blobs)
    full = asyncio.run(Trainer(cfg, deps).run())

    def kill_after_3(event: str, payload: dict[str, Any]) -> None:
        if event == "step" and payload["step"] == 3:
            raise _Killed

    with pytest.raises(_Killed):
        asyncio.run(Trainer(cfg, deps, listener=kill_after_3).run())
    killed = runs.list_runs(deps.org_id)[0]
    assert killed.status == "failed" and killed.last_checkpoint_step == 2 and killed.step == 3
    resumed = asyncio.run(Trainer(cfg, deps).run(resume=killed.id))
    assert resumed.status == "completed"
    a = runs.metrics(deps.org_id, full.id, "train")
    b = runs.metrics(deps.org_id, resumed.id, "train")
    assert [s for s, _, _ in b] == [1, 2, 3, 4]  # step 3 redone once, not duplicated
    for (_, _, va), (_, _, vb) in zip(a, b, strict=True):
        assert vb["reward_mean"] == va["reward_mean"]
        assert vb["loss"] == pytest.approx(va["loss"], rel=1e-5, abs=1e-7)
    # the final adapters are the same policy
    for run in (full, resumed):
        deps.blobs.get_dir(run.final_adapter_key, tmp_path / run.id)
        engine.load_adapter(run.id, tmp_path / run.id)
    seq = renderer.build_prompt([{"role": "user", "content": "Say some numbers 3"}]) + [30, 31]
    assert engine.logprobs([seq], full.id)[0] == pytest.approx(engine.logprobs([seq], resumed.id)[0], abs=1e-4)


class _Recording:
    """The real engine, recording each forward_backward's batch with a snapshot of the adapter taken just
    before that step's update (so snapshot k holds the weights after update k-1)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.calls: list[tuple[list[Any], str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def forward_backward(self, batch: Any, loss: Any, config: Any = None, *, adapter: str, **kw: Any) -> Any:
        snap = f"snap-{len(self.calls)}"
        self._engine.copy_adapter(adapter, snap)
        self.calls.append((list(batch), snap))
        return self._engine.forward_backward(batch, loss, config, adapter=adapter, **kw)


def _sampler_gap(engine: Any, datums: list[Any], adapter: str) -> float:
    """Max |stored sampler logprob - logprob recomputed under ``adapter``| over the trained tokens."""
    gap = 0.0
    for d in datums:
        seq = [*d.input_tokens, d.target_tokens[-1]]
        now = engine.logprobs([seq], adapter)[0]
        gap = max(gap, *(abs(a - b) for a, b, w in zip(d.sampler_logprobs, now, d.weights, strict=True) if w))
    return gap


@pytest.mark.parametrize("overlap", [True, False])
def test_overlap_samples_step_t_plus_1_from_the_pre_update_weights(
    overlap: bool, engine: Any, renderer: Any, store: Any, tmp_path: Path
) -> None:
    """With overlap, step t+1's sampler logprobs are those of the adapter *before* step t's update (and not
    after it); without, they are those after it -- the same check, so it tells the two apart."""
    rec = _Recording(engine)
    cfg = validate_config(_grpo(steps=3, rl={"overlap": overlap, "drop_zero_variance": False}))
    deps = _deps(rec, renderer, store, tmp_path)
    run = asyncio.run(Trainer(cfg, deps).run())
    assert run.status == "completed" and len(rec.calls) == 3  # every step trained (no group dropped)
    assert _sampler_gap(engine, rec.calls[0][0], rec.calls[0][1]) < 2e-3  # step 1 is on-policy either way
    for t in (1, 2):
        datums = rec.calls[t][0]
        before_prev_update, after_prev_update = rec.calls[t - 1][1], rec.calls[t][1]
        pre, post = _sampler_gap(engine, datums, before_prev_update), _sampler_gap(engine, datums, after_prev_update)
        if overlap:
            assert pre < 2e-3 < 0.02 < post, (t, pre, post)
        else:
            assert post < 2e-3 < 0.02 < pre, (t, pre, post)
    vals = [v for _, _, v in RunStore(deps.database, deps.blobs).metrics(deps.org_id, run.id, "train")]
    if overlap:  # off-policy steps: the ratio moved away from 1, the sampler KL away from 0
        assert all(abs(v["ratio_mean"] - 1) > 1e-4 for v in vals[1:]), vals
    assert not engine.has_adapter(f"run:{run.id}:sampler")


def test_bad_inputs_are_refused_before_any_compute(
    engine: Any, renderer: Any, store: Any, tmp_path: Path
) -> None:
    deps = _deps(engine, renderer, store, tmp_path)
    runs = RunStore(deps.database, deps.blobs)
    with pytest.raises(NotFound):
        Trainer(validate_config(_grpo(rl={"env": "no-such-env"})), deps).prepare()
    with pytest.raises(NotFound):  # a published version that does not exist
        Trainer(validate_config(_grpo(rl={"env": "arithmetic@9.9.9"})), deps).prepare()
    bad = _jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "x " * 400}]}] * 3
                 + [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    cfg = validate_config({"algorithm": "sft", "data": {"train": str(bad), "max_seq_len": 64}})
    with pytest.raises(InvalidInput, match=r"3 of 4 rows .* too_long: 3"):
        asyncio.run(Trainer(cfg, deps).run())
    assert runs.list_runs(deps.org_id) == []  # no run record was created
    assert not any(a.name.startswith("run:") for a in engine.list_adapters())


def test_yanked_environment_version_is_refused(engine: Any, renderer: Any, store: Any, tmp_path: Path) -> None:
    from teachloop.store.repos.environments import EnvironmentRegistry

    db, blobs, org = store
    with db.session() as s:
        reg = EnvironmentRegistry(s)
        reg.publish(org, name="arithmetic", version="1.0.0", digest="sha256:" + "a" * 64, manifest={},
                    blob_key="sha256:" + "b" * 64)
        reg.yank(org, "arithmetic@1.0.0", reason="broken grader")
    with pytest.raises(InvalidInput, match="yanked"):
        Trainer(validate_config(_grpo(rl={"env": "arithmetic@1.0.0"})), _deps(engine, renderer, store, tmp_path)).prepare()


def test_resume_with_overlap_samples_its_first_step_on_policy(
    engine: Any, renderer: Any, store: Any, tmp_path: Path
) -> None:
    """The prefetched rollouts are not in a checkpoint: the first resumed step is sampled from the restored
    adapter (as docs/training.md says), so its sampler logprobs are those of the weights it trains."""
    cfg = validate_config(_grpo(steps=4, checkpoint_every=2, rl={"overlap": True, "drop_zero_variance": False}))

    def kill_after_3(event: str, payload: dict[str, Any]) -> None:
        if event == "step" and payload["step"] == 3:
            raise _Killed

    with pytest.raises(_Killed):
        asyncio.run(Trainer(cfg, _deps(engine, renderer, store, tmp_path), listener=kill_after_3).run())
    killed = RunStore(store[0], store[1]).list_runs(store[2])[0]
    assert killed.last_checkpoint_step == 2
    rec = _Recording(engine)
    resumed = asyncio.run(Trainer(cfg, _deps(rec, renderer, store, tmp_path)).run(resume=killed.id))
    assert resumed.status == "completed" and len(rec.calls) == 2  # steps 3 and 4 ran
    (step3, restored), (step4, after_3) = rec.calls
    assert _sampler_gap(engine, step3, restored) < 2e-3  # on-policy: sampled from the checkpoint's adapter
    assert _sampler_gap(engine, step4, restored) < 2e-3 < 0.02 < _sampler_gap(engine, step4, after_3)


class Picky(Digits):
    """A toy environment whose constructor refuses its arguments with a multi-line error."""

    def __init__(self, level: int = 1) -> None:
        if level > 3:
            raise RuntimeError(f"level {level} is too hard\nlevels are 1..3")


@pytest.mark.parametrize(
    ("over", "param"),
    [
        ({"rl": {"env": "tests.unit.train.test_runs:Picky", "env_args": {"level": 9}}}, "rl.env_args"),
        ({"rl": {"env": "tests.unit.train.test_runs:Picky"}, "eval": {"tasks": 2, "env_args": {"level": 9}}},
         "eval.env_args"),
        ({"rl": {"env": "tests.unit.train.test_runs:Picky", "env_args": {"lvl": 1}}}, "rl.env_args"),
    ],
)
def test_environment_constructor_errors_name_the_env_args_field(
    over: dict[str, Any], param: str, engine: Any, renderer: Any, store: Any, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput) as err:
        Trainer(validate_config(_grpo(**over)), _deps(engine, renderer, store, tmp_path)).prepare()
    assert err.value.param == param and str(err.value).startswith(f"{param}: ")
    assert "\n" not in str(err.value)

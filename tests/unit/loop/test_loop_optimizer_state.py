"""The candidate lineage carries its optimizer state (issue 16): a loop run that continues a candidate restores the
adapter *and* the AdamW moments its run ended with, so nothing is lost between iterations.

The differential property on the tiny random Llama (CPU, real ``TorchEngine``, real trainer and blob store): N
steps, then M steps restored through the loop's own path (``lineage.final_states`` -> ``training.check_state`` ->
``train_candidate(init_state=...)``), give the adapter weights of one uninterrupted run of N + M steps; the same
M steps on the same adapter with a fresh AdamW do not. On the fake engine: ``check_state`` accepts a checkpoint
only with the adapter it was saved with. (The loop's iterations and a state that does not fit the adapter:
``test_loop_lineage.py``.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from teachloop.loop import validate_loop_config
from teachloop.loop.config import References
from teachloop.loop.curation import Curated
from teachloop.loop.lineage import final_states
from teachloop.loop.sources import Candidate
from teachloop.loop.training import TrainDeps, check_state, train_candidate
from teachloop.render import Renderer
from teachloop.store.schema.deployments import Deployment
from teachloop.train.runs import RunInfo
from tests._tiny import tiny_llama
from tests.unit.loop.conftest import BASE, DEPLOYMENT, Store, sft_config

N, M = 3, 2
ROWS = [Curated(Candidate({"messages": [{"role": "user", "content": f"Say {i}"},
                                        {"role": "assistant", "content": f"{i} {i} {i}"}]}, "feedback", None), "train")
        for i in range(4)]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-loop-optim"))


def _cfg(**algorithm: Any) -> Any:
    # the whole (shuffled) data set every step, so each step's gradient depends on the weights alone
    train = {"steps": N, "seed": 0, "lora": {"rank": 4}, "optim": {"lr": 1e-2}, "data": {"batch_size": len(ROWS)}}
    return validate_loop_config(sft_config(algorithm={"kind": "sft", "train": train, **algorithm}))


def _weights(store: Store, run: RunInfo, tmp: Path) -> dict[str, torch.Tensor]:
    assert run.final_adapter_key is not None
    return load_file(str(store.blobs.get_dir(run.final_adapter_key, tmp / run.id) / "adapter_model.safetensors"))


def test_n_steps_then_m_restored_steps_equal_one_run_of_n_plus_m(store: Store, tiny: Path, tmp_path: Path) -> None:
    from teachloop.engine.torch_engine import TorchEngine

    deps = TrainDeps(TorchEngine(tiny, device="cpu"), Renderer.from_pretrained(tiny), store.db, store.blobs,
                     store.org_id, store.cache, base_model=BASE)
    refs = References(Deployment(name=DEPLOYMENT, base_model=BASE), {}, [], {})
    cfg = _cfg()

    def train(steps: int, **kw: Any) -> RunInfo:
        return asyncio.run(train_candidate(deps, kw.pop("cfg", cfg), refs, ROWS, name="optim", budget_s=3600,
                                           steps=steps, **kw))

    whole = train(N + M)
    first = train(N)
    assert first.final_adapter_key is not None
    with store.db.session(write=False) as s:
        state = final_states(s, store.org_id, [first.id])[first.id]
    assert state == first.last_checkpoint_key and state is not None  # the checkpoint every run ends with
    assert check_state(deps, first.final_adapter_key, state) is None  # its adapter is the candidate; it fits
    assert all(a.name.startswith("run:") for a in deps.engine.list_adapters())  # the check's scratch copy is gone
    restored = train(M, init_key=first.final_adapter_key, init_state=state)
    assert restored.config["optim"] == {**first.config["optim"]}  # the plain lr, no warmup: nothing scaled

    want, got = _weights(store, whole, tmp_path), _weights(store, restored, tmp_path)
    assert want.keys() == got.keys() and want
    worst = max(float((want[k] - got[k]).abs().max()) for k in want)
    assert worst < TOLERANCE, f"restored run differs from the uninterrupted one by {worst:g}"
    ckpt = store.blobs.get_dir(str(restored.last_checkpoint_key), tmp_path / "ckpt")
    steps = {int(v["step"]) for v in torch.load(ckpt / "optimizer.pt", weights_only=True)["state"].values()}
    assert steps == {N + M}  # AdamW's bias correction went on counting

    # the same M steps on the same adapter with a fresh AdamW (and the plain lr): not the same run at all
    fresh = train(M, init_key=first.final_adapter_key, cfg=_cfg(keep_optimizer=False, continue_lr_scale=1.0,
                                                                continue_warmup=0.0))
    other = _weights(store, fresh, tmp_path)
    assert max(float((want[k] - other[k]).abs().max()) for k in want) > 100 * TOLERANCE


def test_a_state_is_restored_only_with_the_adapter_it_was_saved_with(store: Store, fake_engine: Any,
                                                                      renderer: Renderer, tmp_path: Path) -> None:
    from teachloop.core.training import LoraSpec

    deps = TrainDeps(fake_engine, renderer, store.db, store.blobs, store.org_id, store.cache, base_model=BASE)
    for name, seed in (("saved", 1), ("other", 2)):
        fake_engine.create_adapter(name, LoraSpec(rank=4, seed=seed))
        store.blobs.put_dir(f"adapters/{name}", fake_engine.save_adapter(name, tmp_path / name))
    store.blobs.put_dir("ckpt", fake_engine.save_checkpoint("saved", tmp_path / "ckpt"))
    assert check_state(deps, "adapters/saved", "ckpt") is None
    # e.g. eval.keep_best made an earlier step the run's final adapter: these moments are not its
    assert "holds another adapter than adapters/other" in str(check_state(deps, "adapters/other", "ckpt"))
    assert "not found" in str(check_state(deps, "adapters/saved", "no-such-ckpt"))
    assert sorted(a.name for a in fake_engine.list_adapters()) == ["other", "saved"]  # nothing loaded or left

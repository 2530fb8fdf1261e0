"""Experiment trackers: a 2-step SFT run on the tiny model reports to TensorBoard, MLflow, W&B (offline) and
trackio, and each tracker's own files are read back; a tracker that is not installed is refused before the
weights load."""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import json
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest

from teachloop.core import InvalidInput
from teachloop.train import Trainer, TrainerDeps, validate_config
from teachloop.train.runs import RunStore

STEPS = 2


def _rows(path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"The answer is {2 * i}."}]} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def reported(engine: Any, renderer: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    db, blobs, org = store
    cfg = validate_config({
        "name": "tracked", "algorithm": "sft", "steps": STEPS, "checkpoint_every": 0, "lora": {"rank": 4},
        "data": {"train": str(_rows(tmp_path / "sft.jsonl")), "batch_size": 2, "holdout_frac": 0.34},
        "report": {"to": ["tensorboard", "mlflow", "wandb", "trackio"], "dir": str(tmp_path / "reports"),
                   "project": "tl-test"},
    })
    deps = TrainerDeps(engine=engine, renderer=renderer, database=db, blobs=blobs, org_id=org,
                       env_cache=tmp_path / "envs")
    run = asyncio.run(Trainer(cfg, deps).run())
    return run, RunStore(db, blobs).metrics(org, run.id), tmp_path / "reports"


def _losses(metrics: list[tuple[int, str, dict[str, Any]]]) -> dict[int, float]:
    return {s: v["loss"] for s, p, v in metrics if p == "train"}


def _read_wandb(path: Path) -> list[dict[str, Any]]:
    """Records of a ``.wandb`` file: W&B's LevelDB-style log (7-byte header, 32 KiB blocks, chunked records)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            kind_name = record.WhichOneof("record_type")
            if kind_name == "history":
                out.append({"history": {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                        for i in record.history.item}})
            elif kind_name in ("run", "config"):  # the config comes with the run record, updates in config records
                items = record.run.config.update if kind_name == "run" else record.config.update
                out.append({"config": {i.key: json.loads(i.value_json) for i in items}})
    return out


def test_each_tracker_writes_the_runs_config_and_metrics(reported: Any) -> None:
    run, metrics, root = reported
    assert run.status == "completed"
    losses = _losses(metrics)
    heldout = {s: v["heldout_nll"] for s, p, v in metrics if p == "eval"}
    assert sorted(losses) == [1, 2] and sorted(heldout) == [0, 2]

    # TensorBoard: the event file, read with TensorBoard's own accumulator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(root / "tensorboard" / run.id))
    acc.Reload()
    assert {e.step: e.value for e in acc.Scalars("train/loss")} == pytest.approx(losses)
    assert {e.step: e.value for e in acc.Scalars("eval/heldout_nll")} == pytest.approx(heldout)
    assert '"algorithm": "sft"' in acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()

    # MLflow: the local file store, read with MlflowClient
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(root / "mlflow").resolve().as_uri())
    exp = client.get_experiment_by_name("tl-test")
    assert exp is not None
    [found] = client.search_runs([exp.experiment_id], filter_string=f"tags.`teachloop.run_id` = '{run.id}'")
    assert found.data.params["algorithm"] == "sft" and found.data.params["optim.lr"] == "0.0001"
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    assert found.info.status == "FINISHED"

    # W&B offline: the run's .wandb file under the offline folder
    [wandb_file] = glob.glob(str(root / "wandb" / "wandb" / f"offline-run-*-{run.id}" / f"run-{run.id}.wandb"))
    records = _read_wandb(Path(wandb_file))
    config = {k: v for r in records for k, v in r.get("config", {}).items()}
    assert config["algorithm"] == "sft" and config["steps"] == STEPS
    logged = {r["history"]["_step"]: r["history"]["train/loss"] for r in records
              if "train/loss" in r.get("history", {})}
    assert logged == pytest.approx(losses)

    # trackio: its local SQLite database (tables metrics and configs, JSON per row)
    with sqlite3.connect(root / "trackio" / "tl-test.db") as con:
        rows = con.execute("SELECT step, metrics FROM metrics WHERE run_name = ?", (run.id,)).fetchall()
        [(stored,)] = con.execute("SELECT config FROM configs WHERE run_name = ?", (run.id,)).fetchall()
    logged_t = {step: json.loads(m)["train/loss"] for step, m in rows if "train/loss" in json.loads(m)}
    assert logged_t == pytest.approx(losses)
    assert json.loads(stored)["algorithm"] == "sft"


def test_a_missing_tracker_is_refused_before_anything_is_built(
    engine: Any, renderer: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare_inputs (which the CLI runs before loading weights) refuses, naming the extra; no run is written."""
    from teachloop.train.trainer import prepare_inputs

    db, blobs, org = store
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = validate_config({"algorithm": "sft", "steps": 2, "data": {"train": str(_rows(tmp_path / "d.jsonl"))},
                           "report": {"to": ["wandb"], "dir": str(tmp_path / "r")}})
    with pytest.raises(InvalidInput) as err:
        prepare_inputs(cfg, renderer=renderer, database=db, blobs=blobs, org_id=org, env_cache=tmp_path / "e",
                       context_length=2048)
    assert err.value.param == "report.to" and "teachloop[wandb]" in err.value.message
    deps = TrainerDeps(engine=engine, renderer=renderer, database=db, blobs=blobs, org_id=org,
                       env_cache=tmp_path / "envs")
    with pytest.raises(InvalidInput, match=r"teachloop\[wandb\]"):
        asyncio.run(Trainer(cfg, deps).run())
    assert RunStore(db, blobs).list_runs(org) == [] and not (tmp_path / "r").exists()

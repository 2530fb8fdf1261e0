"""Experiment trackers: a run reports its config and metrics to TensorBoard, MLflow, W&B (offline) and trackio.

``[report] to = ["tensorboard", "mlflow"]`` picks the trackers; each writes
under ``report.dir`` (one subfolder per tracker) and each is an optional extra
(``pip install 'teachloop[mlflow]'``). ``check_trackers`` refuses a tracker
whose package is not installed, naming the extra, before any weights load
(``prepare_inputs`` calls it). ``open_reporters`` opens the chosen ones for a
run; every tracker library is imported only there, so a run that reports to
nothing imports none of them.

What each writes, per run (``run`` = the run id):

* ``tensorboard``: ``<dir>/tensorboard/<run>/events.out.tfevents.*``: the
  config as text ``config`` (JSON), every figure as scalar ``<phase>/<name>``.
* ``mlflow``: a local file store ``<dir>/mlflow`` (``file://`` URI;
  ``MLFLOW_ALLOW_FILE_STORE`` is set for this process, as MLflow 3 asks),
  experiment ``report.project``, a run named ``<run>``: the config flattened
  to params (``optim.lr``), figures as metrics ``<phase>/<name>`` per step,
  tag ``teachloop.run_id``.
* ``wandb``: an offline run in ``<dir>/wandb/wandb/offline-run-*`` (project
  ``report.project``, run id ``<run>``), config and figures
  ``<phase>/<name>`` with step; ``wandb sync`` uploads it later.
* ``trackio``: project ``report.project`` in trackio's local SQLite store
  under ``<dir>/trackio`` (``TRACKIO_DIR``, which trackio reads once per
  process: an already set ``TRACKIO_DIR`` wins), run ``<run>``, with the
  config and figures ``<phase>/<name>`` per step.

A tracker that fails while the run goes on is a tracker problem, not a
training problem: its error is logged and it is dropped; training goes on.
The console's run page and ``teachloop runs show`` stay the built-in view.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from teachloop.core.errors import InvalidInput
from teachloop.train.config import TRACKERS, TrainConfig

log = logging.getLogger(__name__)

#: The module whose presence means a tracker's extra is installed.
_MODULES: dict[str, str] = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


def check_trackers(config: TrainConfig) -> None:
    """Refuse (``InvalidInput`` naming ``report.to``) a tracker whose optional extra is not installed."""
    for name in config.report.to:
        if importlib.util.find_spec(_MODULES[name]) is None:
            raise InvalidInput(f"report.to: tracker {name!r} is not installed; install its extra: "
                               f"pip install 'teachloop[{TRACKERS[name]}]' (or drop it from report.to)",
                               param="report.to")


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-4}}`` -> ``{"optim.lr": 1e-4}`` (lists and scalars kept as leaves)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Reporter(Protocol):
    """One tracker, open for one run."""

    name: str

    def log(self, step: int, phase: str, values: Mapping[str, Any]) -> None:
        """Record the figures of ``step`` (``phase``: train or eval)."""
        ...

    def close(self) -> None:
        """Flush and close."""
        ...


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, root: Path, run_id: str, config: dict[str, Any]) -> None:
        import json

        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard" / run_id))
        self.writer.add_text("config", json.dumps(config, indent=1), 0)

    def log(self, step: int, phase: str, values: Mapping[str, Any]) -> None:
        for k, v in _numbers(values).items():
            self.writer.add_scalar(f"{phase}/{k}", v, step)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    name = "mlflow"

    def __init__(self, root: Path, run_id: str, config: dict[str, Any], project: str) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
        from mlflow.tracking import MlflowClient

        store = root / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=store.resolve().as_uri())
        found = self.client.get_experiment_by_name(project)
        exp = found.experiment_id if found is not None else self.client.create_experiment(project)
        self.run_id = self.client.create_run(exp, run_name=run_id, tags={"teachloop.run_id": run_id}).info.run_id
        from mlflow.entities import Param

        params = [Param(k[:250], str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, phase: str, values: Mapping[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{phase}/{k}", v, now, step) for k, v in _numbers(values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _WandB:
    name = "wandb"

    def __init__(self, root: Path, run_id: str, config: dict[str, Any], project: str, run_name: str) -> None:
        import wandb

        folder = root / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", save_code=False, disable_git=True,
                                  x_disable_stats=True)
        self.run = wandb.init(mode="offline", dir=str(folder), project=project, id=run_id, name=run_name,
                              config=config, settings=settings, reinit="create_new")

    def log(self, step: int, phase: str, values: Mapping[str, Any]) -> None:
        self.run.log({f"{phase}/{k}": v for k, v in _numbers(values).items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    name = "trackio"

    def __init__(self, root: Path, run_id: str, config: dict[str, Any], project: str) -> None:
        os.environ.setdefault("TRACKIO_DIR", str((root / "trackio").resolve()))
        import trackio

        with contextlib.redirect_stdout(io.StringIO()):
            self.run = trackio.init(project=project, name=run_id, config=config, embed=False,
                                    auto_log_cpu=False, auto_log_gpu=False)

    def log(self, step: int, phase: str, values: Mapping[str, Any]) -> None:
        self.run.log({f"{phase}/{k}": v for k, v in _numbers(values).items()}, step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()


class Reporters:
    """The run's open trackers; ``log`` and ``close`` fan out, and a failing tracker is dropped (logged)."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters

    def log(self, step: int, phase: str, values: Mapping[str, Any]) -> None:
        """Send one row of figures to every tracker."""
        for r in list(self.reporters):
            try:
                r.log(step, phase, values)
            except Exception:
                log.warning("tracker %s failed; it is dropped for the rest of the run", r.name, exc_info=True)
                self.reporters.remove(r)

    def close(self) -> None:
        """Close every tracker."""
        for r in self.reporters:
            try:
                r.close()
            except Exception:
                log.warning("tracker %s failed to close", r.name, exc_info=True)
        self.reporters = []


def open_reporters(config: TrainConfig, run_id: str) -> Reporters:
    """Open the trackers of ``config.report.to`` for run ``run_id`` (config sent on open)."""
    check_trackers(config)
    rep = config.report
    root = Path(rep.dir).expanduser()
    cfg = config.to_dict()
    opened: list[Reporter] = []
    try:
        for name in rep.to:
            if name == "tensorboard":
                opened.append(_TensorBoard(root, run_id, cfg))
            elif name == "mlflow":
                opened.append(_MLflow(root, run_id, cfg, rep.project))
            elif name == "wandb":
                opened.append(_WandB(root, run_id, cfg, rep.project, config.name))
            else:
                opened.append(_Trackio(root, run_id, cfg, rep.project))
    except BaseException:
        Reporters(opened).close()
        raise
    return Reporters(opened)


__all__ = ["Reporter", "Reporters", "check_trackers", "flatten", "open_reporters"]

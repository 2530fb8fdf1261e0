"""The run driver: validate and pin inputs, create or resume the run, step, evaluate, checkpoint, finish.

``prepare_inputs`` (``Trainer.prepare``) resolves and builds the
environment(s), pinned by digest, and loads and renders the datasets (skipping
and counting rows that don't fit) *before* any compute is spent -- it needs
the model's context length, not its weights, so a caller can run it before
building the engine; a missing or yanked environment version, environment
arguments its constructor rejects, or a dataset over the skip threshold is
refused there. ``run`` then creates the run
record (or resumes one from its last checkpoint), evaluates on held-out data
before the first step, runs the steps (metrics stored per step, checkpoints
every ``checkpoint_every`` steps), evaluates after the last step, stores the
final adapter, and marks the run completed -- or failed, with the error.

Watching (``train.watch``): held-out evaluation also runs every
``TrainConfig.eval_every()`` steps; each evaluation after step 0 that is the
best so far uploads its adapter (``RunStore.save_best``); with
``eval.keep_best`` the final adapter (and the engine's ``run:ID`` adapter)
is the best one. Early stopping (``eval.patience``) and a reward-hack alarm
with ``alarm.on_alarm = "stop"`` end the run at that evaluation: it is
``completed`` with ``stop_reason`` set and ``step`` below ``total_steps``; an
alarm is stored on the run either way. Every step's and evaluation's figures
also go to the trackers of ``[report]`` (``train.report``), which
``prepare_inputs`` checks are installed.

Cancellation: ``should_stop`` (a callable the caller passes, e.g. one that
reads the run record's ``cancelling`` status) is checked before every step;
when it answers True the run is marked ``cancelled`` at that step boundary
(its last checkpoint stays, so it can be resumed) and ``RunCancelled`` is
raised. A run created ahead of time (``RunStore.create(..., status="queued")``,
e.g. by the REST API) is started with ``run(resume=ID)``; its inputs are pinned
on that first start.

The trainer is async (the CLI runs it with ``asyncio.run``); engine calls run
in worker threads. It takes its collaborators explicitly (``TrainerDeps``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from teachloop.catalog.envref import ResolvedEnv, meter_env_run, resolve_env
from teachloop.catalog.usage import meter_use
from teachloop.core.errors import Conflict, InvalidInput, NotFound, TeachloopError
from teachloop.core.sampling import SamplingParams
from teachloop.engine.base import Engine
from teachloop.engine.completer import EngineCompleter
from teachloop.envs.eval import evaluate as evaluate_env
from teachloop.render import Renderer
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.train.catalog_data import CatalogData, is_catalog_ref, materialize
from teachloop.train.config import TrainConfig, validate_config
from teachloop.train.data import LoadedData, load_dpo, load_sft, split_holdout
from teachloop.train.grpo import GRPO
from teachloop.train.report import Reporters, check_trackers, open_reporters
from teachloop.train.runs import RunInfo, RunStore
from teachloop.train.supervised import DPO, SFT
from teachloop.train.watch import Verdict, Watch

#: Called with (event, payload): "run" {run}, "eval" {step, values, best}, "step" {step, values},
#: "checkpoint" {step}, "alarm" {step, alarm}, "stopped" {step, reason}.
Listener = Callable[[str, dict[str, Any]], None]


class RunCancelled(Conflict):
    """The run was cancelled (``should_stop`` answered True) at a step boundary; it is marked ``cancelled``."""


class Algorithm(Protocol):
    """What the trainer drives."""

    async def step(self, step: int) -> dict[str, Any]:
        """One optimizer step; returns its metrics."""
        ...


@dataclass
class TrainerDeps:
    """Everything a run needs, passed explicitly.

    Attributes:
        engine: the engine holding the base model.
        renderer: the base model's chat renderer.
        database: the system of record.
        blobs: the blob store (checkpoints, adapters, environment archives).
        org_id: the organisation the run belongs to.
        env_cache: folder for extracted environment archives.
    """

    engine: Engine
    renderer: Renderer
    database: Database
    blobs: BlobStore
    org_id: str
    env_cache: Path


@dataclass
class Prepared:
    """Inputs pinned before compute: the environments and datasets with their digests."""

    train_env: ResolvedEnv | None
    eval_env: ResolvedEnv | None
    data: LoadedData | None
    eval_data: LoadedData | None
    catalog: dict[str, CatalogData] = field(default_factory=dict)  # "dataset" / "eval_dataset" named dataset:REF

    def inputs(self) -> dict[str, Any]:
        """What the run record stores about its inputs."""
        out: dict[str, Any] = {}
        for key, env in (("env", self.train_env), ("eval_env", self.eval_env)):
            if env is not None:
                out[key] = {"ref": env.ref, "name": env.name, "version": env.version, "digest": env.digest}
        for key, data in (("dataset", self.data), ("eval_dataset", self.eval_data)):
            if data is not None:
                out[key] = {"digest": data.digest, "rows": data.total, "used": len(data.items),
                            "skipped": dict(data.skipped)}
                if key in self.catalog:
                    out[key]["ref"] = self.catalog[key].ref
        return out


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _resolve(ref: str, kwargs: dict[str, Any], field: str, *, database: Database, blobs: BlobStore, org_id: str,
             env_cache: Path) -> ResolvedEnv:
    """``resolve_env`` whose failures name the config field: ``field.env`` or ``field.env_args``.

    A missing environment stays ``NotFound`` and a yanked version ``InvalidInput``, both naming
    ``field.env``; anything the environment's constructor raises becomes ``InvalidInput`` naming
    ``field.env_args`` (one line, with the environment's reason).
    """
    args_field = f"{field}.env_args" if kwargs else f"{field}.env"
    try:
        with database.session(write=False) as s:
            return resolve_env(ref, session=s, blobs=blobs, org_id=org_id, cache=env_cache, **kwargs)
    except NotFound as err:
        raise NotFound(_one_line(f"{field}.env: {err.message}"), param=f"{field}.env") from None
    except InvalidInput as err:  # name the config field: "env" -> rl.env, "env_args" -> rl.env_args
        if err.param not in (None, "env", "env_args"):
            raise
        param = args_field if err.param is None else f"{field}.{err.param}"
        raise type(err)(_one_line(f"{param}: {err.message}"), param=param) from None
    except TeachloopError:
        raise
    except Exception as err:  # the environment's own constructor (or package code) refused its arguments
        raise InvalidInput(
            _one_line(f"{args_field}: environment {ref!r} could not be built with {kwargs}: "
                      f"{type(err).__name__}: {err}"),
            param=args_field,
        ) from None


def prepare_inputs(config: TrainConfig, *, renderer: Renderer, database: Database, blobs: BlobStore, org_id: str,
                   env_cache: Path, context_length: int) -> Prepared:
    """Everything a run checks before compute: environments resolved and built, datasets loaded and
    rendered (rows that don't fit counted), the holdout split and token budgets checked against the
    model's ``context_length`` (read from its ``config.json``; no weights are needed).

    Raises ``InvalidInput`` (naming the field) or ``NotFound``.
    """
    cfg = config
    check_trackers(cfg)
    where: dict[str, Any] = {"database": database, "blobs": blobs, "org_id": org_id, "env_cache": env_cache}
    if cfg.rl is not None and cfg.rl.max_tokens >= context_length:
        raise InvalidInput(f"rl.max_tokens {cfg.rl.max_tokens} does not fit the model's context of "
                           f"{context_length} tokens", param="rl.max_tokens")
    if cfg.eval.max_tokens is not None and cfg.eval.max_tokens >= context_length:
        raise InvalidInput(f"eval.max_tokens {cfg.eval.max_tokens} does not fit the model's context of "
                           f"{context_length} tokens", param="eval.max_tokens")
    train_env = _resolve(cfg.rl.env, cfg.rl.env_args, "rl", **where) if cfg.rl is not None else None
    eval_ref = cfg.eval_env()
    eval_env = None
    if eval_ref is not None:
        same = cfg.rl is not None and eval_ref == (cfg.rl.env, cfg.rl.env_args)
        eval_env = train_env if same else _resolve(*eval_ref, "eval", **where)
    data = eval_data = None
    catalog: dict[str, CatalogData] = {}
    if cfg.data is not None:
        d = cfg.data
        loader = load_sft if cfg.algorithm == "sft" else load_dpo
        kw: dict[str, Any] = {"max_seq_len": min(d.max_seq_len, context_length),
                              "max_skipped_frac": d.max_skipped_frac}
        if cfg.algorithm == "sft":
            kw["train_on"] = d.train_on
        with tempfile.TemporaryDirectory(prefix="teachloop-data-") as tmp:
            for key, value, fld in (("dataset", d.train, "data.train"), ("eval_dataset", d.eval, "data.eval")):
                if value is not None and is_catalog_ref(value):
                    catalog[key] = materialize(value, field=fld, algorithm=cfg.algorithm, database=database,
                                               org_id=org_id, folder=Path(tmp))
            data = loader(catalog["dataset"].path if "dataset" in catalog else Path(d.train), renderer, **kw)
            if d.eval:
                eval_path = catalog["eval_dataset"].path if "eval_dataset" in catalog else Path(d.eval)
                eval_data = loader(eval_path, renderer, field="data.eval", **kw)
            else:
                split_holdout(data.items, d.holdout_frac, cfg.seed)  # refuses a split that leaves nothing to train on
    return Prepared(train_env, eval_env, data, eval_data, catalog)


def verify_pinned(run: RunInfo, prepared: Prepared) -> None:
    """Refuse to resume ``run`` when an environment or dataset now resolves to a different digest."""
    now = prepared.inputs()
    for key in ("env", "eval_env", "dataset"):
        pinned = run.inputs.get(key)
        if pinned is not None and pinned.get("digest") != now.get(key, {}).get("digest"):
            raise InvalidInput(
                f"run {run.id} trained on {key} digest {pinned.get('digest')}, but it now resolves to "
                f"{now.get(key, {}).get('digest')}; refusing to resume on different inputs", param=key)


class Trainer:
    """Runs one training run end to end (see the module docstring).

    ``prepared`` (from ``prepare_inputs``) lets a caller check the inputs before it builds the engine.
    """

    def __init__(self, config: TrainConfig, deps: TrainerDeps, *, listener: Listener | None = None,
                 prepared: Prepared | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.deps = deps
        self.runs = RunStore(deps.database, deps.blobs)
        self.listener = listener or (lambda event, payload: None)
        self.should_stop = should_stop or (lambda: False)
        self._prepared = prepared

    # ---------------------------------------------------------------- prepare
    def prepare(self) -> Prepared:
        """Resolve environments and load datasets; raises ``InvalidInput``/``NotFound`` before any compute."""
        if self._prepared is None:
            d = self.deps
            self._prepared = prepare_inputs(self.config, renderer=d.renderer, database=d.database, blobs=d.blobs,
                                            org_id=d.org_id, env_cache=d.env_cache,
                                            context_length=d.engine.context_length)
        return self._prepared

    # -------------------------------------------------------------------- run
    def _algorithm(self, prepared: Prepared, adapter: str) -> Algorithm:
        cfg = self.config
        common: dict[str, Any] = {"optim": cfg.optim, "total_steps": cfg.steps, "seed": cfg.seed, "engine": self.deps.engine,
                  "adapter": adapter}
        if cfg.algorithm == "grpo":
            assert cfg.rl is not None and prepared.train_env is not None
            return GRPO(rl=cfg.rl, env=prepared.train_env, renderer=self.deps.renderer, **common)
        assert cfg.data is not None and prepared.data is not None
        items = prepared.data.items
        if prepared.eval_data is not None:
            train, holdout = items, prepared.eval_data.items
        else:
            train, holdout = split_holdout(items, cfg.data.holdout_frac, cfg.seed)
        cls = SFT if cfg.algorithm == "sft" else DPO
        return cls(data=cfg.data, train=train, holdout=holdout, **common)  # type: ignore[arg-type]

    async def _evaluate(self, algo: Algorithm, prepared: Prepared,
                        adapter: str) -> tuple[dict[str, Any], dict[str, float]]:
        """(figures, mean reward per held-out task id) of the held-out evaluation."""
        values: dict[str, Any] = {}
        tasks: dict[str, float] = {}
        own = getattr(algo, "evaluate", None)
        if own is not None:
            values.update(await own())
        if prepared.eval_env is not None:
            cfg = self.config
            max_tokens = cfg.eval.max_tokens or (cfg.rl.max_tokens if cfg.rl else 256)
            completer = EngineCompleter(self.deps.engine, self.deps.renderer, adapter=adapter)
            report = await evaluate_env(
                prepared.eval_env.env, completer, n=cfg.eval.tasks, seed=cfg.eval.seed,
                params=SamplingParams(max_tokens=max_tokens, temperature=0.0), max_concurrent_groups=cfg.eval.tasks,
                label=prepared.eval_env.ref,
            )
            values.update({"reward_mean": report.mean, "reward_ci_low": report.ci_low,
                           "reward_ci_high": report.ci_high, "eval_tasks": float(report.n_tasks),
                           "eval_failures": float(sum(report.failure_counts.values())),
                           "eval_seconds": report.seconds})
            tasks = dict(report.task_means)
        return values, tasks

    async def run(self, *, resume: str | None = None) -> RunInfo:
        """Run (or resume) to completion; returns the finished run record."""
        org = self.deps.org_id
        engine = self.deps.engine
        if resume is not None:
            run = self.runs.get(org, resume)
            self.config = validate_config(run.config)
        prepared = self.prepare()
        cfg = self.config
        if resume is None:
            run = self.runs.create(org, cfg, prepared.inputs())
            start = 0
        else:
            verify_pinned(run, prepared)
            if not run.inputs:  # created ahead of time (REST): pin the inputs on its first start
                self.runs.update(org, run.id, inputs=prepared.inputs())
        adapter = f"run:{run.id}"
        if engine.has_adapter(adapter):  # type: ignore[attr-defined]
            engine.delete_adapter(adapter)
        with tempfile.TemporaryDirectory(prefix="teachloop-resume-") as tmp:
            if resume is not None:
                start = self.runs.resume_point(org, run.id, Path(tmp) / "ckpt")
                if start > 0:
                    engine.load_checkpoint(adapter, Path(tmp) / "ckpt")
            if resume is None or start == 0:
                engine.create_adapter(adapter, cfg.lora.spec(cfg.seed))
        fw = getattr(engine, "fw", None)
        if fw is not None and hasattr(fw, "checkpoint_layers"):
            fw.checkpoint_layers = cfg.low_memory
        self.runs.start(org, run.id)
        if start == 0:
            self._meter_bought(prepared, run.id)
        self.listener("run", {"run": self.runs.get(org, run.id), "start": start})
        algo = self._algorithm(prepared, adapter)
        current = self.runs.get(org, run.id)
        watch = Watch(cfg, best_step=current.best_step, best_score=current.best_score, alarm=current.alarm)
        every = cfg.eval_every()
        reporters = Reporters([])
        try:
            reporters = open_reporters(cfg, run.id)
            if start == 0:
                await self._record_eval(algo, prepared, adapter, run.id, 0, watch, reporters)
            stop: str | None = None
            done = start
            for step in range(start, cfg.steps):
                if self.should_stop():
                    raise RunCancelled(f"run {run.id} was cancelled at step {step} of {cfg.steps}", param="run")
                values = await algo.step(step)
                done = step + 1
                self.runs.record(org, run.id, done, "train", values)
                watch.on_train(done, values)
                reporters.log(done, "train", values)
                self.listener("step", {"step": done, "values": values})
                last = done == cfg.steps
                if not last and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                    self._checkpoint(run.id, adapter, done)
                if not last and every and done % every == 0:
                    stop = (await self._record_eval(algo, prepared, adapter, run.id, done, watch, reporters)).stop
                    if stop is not None:
                        self.listener("stopped", {"step": done, "reason": stop})
                        break
            if stop is None:
                await self._record_eval(algo, prepared, adapter, run.id, done, watch, reporters)
            self._checkpoint(run.id, adapter, done)
            best = self.runs.get(org, run.id)
            with tempfile.TemporaryDirectory(prefix="teachloop-adapter-") as tmp:
                if cfg.eval.keep_best and best.best_adapter_key and best.best_step not in (None, done):
                    engine.load_adapter(adapter, self.deps.blobs.get_dir(best.best_adapter_key, Path(tmp) / "best"))
                engine.save_adapter(adapter, Path(tmp) / "adapter")
                key = self.runs.save_adapter(org, run.id, Path(tmp) / "adapter")
            self.runs.finish(org, run.id, "completed", final_adapter_key=key, stop_reason=stop)
        except BaseException as err:
            status = "cancelled" if isinstance(err, KeyboardInterrupt | SystemExit | RunCancelled) else "failed"
            self.runs.finish(org, run.id, status, error=f"{type(err).__name__}: {err}"[:2000])
            raise
        finally:
            reporters.close()
            close = getattr(algo, "close", None)
            if close is not None:
                await close()
        return self.runs.get(org, run.id)

    def _meter_bought(self, prepared: Prepared, run_id: str) -> None:
        """One metered use per run of each bought environment (``catalog.envref.meter_env_run``) and each
        granted dataset (``catalog.usage.meter_use``, ``train``) it names."""
        bought = {e.bought: e for e in (prepared.train_env, prepared.eval_env) if e is not None and e.bought}
        granted = {c.dataset_id: c for c in prepared.catalog.values() if c.granted}
        if bought or granted:
            with self.deps.database.session() as s:
                for env in bought.values():
                    meter_env_run(s, self.deps.org_id, env, detail={"run": run_id})
                for data in granted.values():
                    meter_use(s, self.deps.org_id, "dataset", data.dataset_id, "train", label=data.ref,
                              detail={"run": run_id})

    async def _record_eval(self, algo: Algorithm, prepared: Prepared, adapter: str, run_id: str, step: int,
                           watch: Watch, reporters: Reporters) -> Verdict:
        """Evaluate, store the figures, and act on the watch's verdict (best adapter, alarm)."""
        org = self.deps.org_id
        values, tasks = await self._evaluate(algo, prepared, adapter)
        if not values:
            return Verdict(False, None)
        self.runs.record(org, run_id, step, "eval", values)
        reporters.log(step, "eval", values)
        verdict = watch.on_eval(step, values, tasks)
        if verdict.improved and verdict.score is not None:
            with tempfile.TemporaryDirectory(prefix="teachloop-best-") as tmp:
                self.deps.engine.save_adapter(adapter, Path(tmp) / "best")
                self.runs.save_best(org, run_id, step, verdict.score, Path(tmp) / "best")
        self.listener("eval", {"step": step, "values": values, "best": verdict.improved})
        if verdict.alarm is not None:
            self.runs.record_alarm(org, run_id, verdict.alarm)
            self.listener("alarm", {"step": step, "alarm": verdict.alarm})
        return verdict

    def _checkpoint(self, run_id: str, adapter: str, step: int) -> None:
        with tempfile.TemporaryDirectory(prefix="teachloop-ckpt-") as tmp:
            self.deps.engine.save_checkpoint(adapter, Path(tmp) / "ckpt")
            self.runs.save_checkpoint(self.deps.org_id, run_id, step, Path(tmp) / "ckpt")
        self.listener("checkpoint", {"step": step})


__all__ = ["Algorithm", "Listener", "Prepared", "RunCancelled", "Trainer", "TrainerDeps", "prepare_inputs", "verify_pinned"]

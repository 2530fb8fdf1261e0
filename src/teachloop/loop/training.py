"""One iteration's data and candidate: snapshot the curated rows, train, publish the adapter version.

* ``snapshot`` turns curated rows into ``NewRow``s (content + lineage) and
  records them through ``catalog.datasets.record_snapshot`` (canonical JSONL
  in the blob store, then the immutable ``Dataset``: ``<deployment>-loop``,
  next version).
* ``train_candidate`` writes the train split (and for SFT/DPO the holdout) to
  JSONL files in a scratch folder and runs ``train.Trainer`` with the
  iteration's ``TrainConfig``: SFT/DPO read the files as ``data.train`` /
  ``data.eval``; GRPO trains on the built-in environment ``traffic``
  (``envs.builtin.traffic.TrafficPrompts``) over the prompts file (its digest
  pinned in the environment arguments; each row with the score its served
  reply got, so ``algorithm.failure_share`` can draw the failed prompts more
  often), graded by the grader source's environment. With ``warm_start`` the candidate starts from
  the deployed adapter version, or from the PEFT folder the iteration's
  ``loop.lineage.Plan`` names (an earlier candidate: ``init_key``), with the
  plan's steps, temperature and extra draws (``WarmStart`` makes the trainer's fresh
  adapter a copy of it). A training-time budget is enforced between steps:
  past it the run is stopped (``BudgetExceeded``) and recorded as failed.
* **The optimizer state goes with the candidate.** Every training run ends
  with a checkpoint (``train.Trainer``: the adapter, the AdamW moments and
  step count, ``engine.save_checkpoint``) in the blob store beside its final
  adapter. When the plan names that checkpoint (``init_state``: the run that
  trained the start, found only among the loop's own runs), the run restores
  it whole (``engine.load_checkpoint``) and trains at the plain
  ``optim.lr`` with the config's schedule over its own steps: with the
  default constant lr and no warmup, N steps then M restored steps give the
  weights of one run of N + M steps (tested). ``check_state`` first makes
  sure the checkpoint can be restored -- its adapter is the start's folder
  (same digest; not so when ``eval.keep_best`` made an earlier step the
  final adapter) and the engine accepts its moments (a state of another LoRA
  rank or other target modules is refused by ``engine.optim_state``, naming
  the parameter and both shapes) -- and the runner otherwise records why on
  the plan and starts a fresh AdamW, never a half-restored one.
* A start without saved state (the deployed adapter pushed by hand,
  ``keep_optimizer = false``, a refused state) starts a fresh AdamW at
  ``algorithm.continue_lr_scale`` times the lr, ramped up over
  ``continue_warmup`` of its steps (``continued_optim``: a fresh AdamW moves
  every parameter by about lr at its first steps).
* ``publish_candidate`` fetches the run's final adapter and publishes it with
  ``catalog.adapters.publish_adapter`` as the next version of the adapter
  named like the deployment, with ``source_run_id`` (the digest is the one
  ``teachloop deploy push`` records for the same folder).

Knows nothing of the gate, promotion or HTTP.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from teachloop.catalog.adapters import publish_adapter
from teachloop.catalog.datasets import record_snapshot
from teachloop.catalog.envref import ResolvedEnv, fetch_package
from teachloop.core.errors import TeachloopError
from teachloop.core.files import file_digest, folder_digest
from teachloop.engine.base import AdapterInfo, Engine
from teachloop.envs.builtin.traffic import TrafficPrompts
from teachloop.loop.config import LoopConfig, References, training_dict
from teachloop.loop.curation import Curated
from teachloop.loop.sources import KIND_OF
from teachloop.render import Renderer
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.repos.datasets import NewRow
from teachloop.store.schema.datasets import Dataset
from teachloop.store.schema.deployments import AdapterVersion
from teachloop.train.config import OptimSection, TrainConfig, validate_config
from teachloop.train.runs import RunInfo
from teachloop.train.trainer import Trainer, TrainerDeps
from teachloop.train.watch import refuse_alarmed

#: The built-in environment GRPO trains on: the snapshot's prompts, graded by the grader source's env.
TRAFFIC_ENV = "traffic"


class BudgetExceeded(TeachloopError):
    """The day's training budget ran out during a run."""


def new_rows(rows: Sequence[Curated]) -> list[NewRow]:
    """Curated rows as dataset rows with their lineage."""
    out = []
    for r in rows:
        c, lin = r.candidate, r.candidate.lineage
        out.append(NewRow(content=c.content, split=r.split, source_kind=c.source_kind,
                          source_trace_id=lin.get("source_trace_id"), source_row_id=lin.get("source_row_id"),
                          expert_id=lin.get("expert_id"), env_ref=lin.get("env_ref"),
                          env_version=lin.get("env_version"), env_digest=lin.get("env_digest"), score=c.score,
                          license=lin.get("license") or "LicenseRef-proprietary"))
    return out


def snapshot(database: Database, blobs: BlobStore, org_id: str, cfg: LoopConfig, rows: Sequence[Curated],
             source: dict[str, Any]) -> Dataset:
    """Record the curated rows as the next immutable version of ``<deployment>-loop``."""
    dataset, _ = record_snapshot(database, blobs, org_id, name=f"{cfg.deployment}-loop"[:100],
                                 kind=KIND_OF[cfg.algorithm.kind], rows=new_rows(rows), source=source, actor="loop")
    return dataset


class WarmStart:
    """An engine whose next ``create_adapter`` loads a given PEFT folder (or checkpoint) instead of a fresh adapter.

    The trainer creates its run's adapter with ``create_adapter``; wrapped in
    ``WarmStart(engine, folder)`` that adapter starts as a copy of ``folder``
    (whose LoRA shape wins over the config's ``[lora]``); with
    ``checkpoint=True`` ``folder`` is a checkpoint and the adapter's optimizer
    state and step count are restored with it. Every other call goes to the
    wrapped engine.
    """

    def __init__(self, engine: Engine, folder: Path, *, checkpoint: bool = False) -> None:
        self._engine = engine
        self._folder = folder
        self._checkpoint = checkpoint
        self.used = False

    def create_adapter(self, name: str, spec: Any) -> AdapterInfo:
        if self.used:
            return self._engine.create_adapter(name, spec)
        self.used = True
        if self._checkpoint:
            return self._engine.load_checkpoint(name, self._folder)
        return self._engine.load_adapter(name, self._folder)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._engine, attr)


def prompt_rows(rows: Sequence[Curated]) -> list[dict[str, Any]]:
    """The train split as the ``traffic`` environment's prompt rows, each with the score its served reply got
    (what ``algorithm.failure_share`` draws failed prompts by; None where the source has none)."""
    return [{"messages": c.content["messages"], "answer": c.content.get("answer"), "info": c.content.get("info", {}),
             "score": c.score} for c in (r.candidate for r in rows if r.split == "train")]


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    return path


def grader_env_ref(cfg: LoopConfig, refs: References, database: Database, blobs: BlobStore, org_id: str,
                   cache: Path) -> tuple[str, dict[str, Any]]:
    """(a locally loadable reference, its arguments) of the grader source's environment."""
    src = cfg.grader_source()
    if src is None:
        raise TeachloopError("grpo needs a grader source to score the traffic prompts")
    index = cfg.sources.index(src)
    return _local_ref(refs.source_envs[index], src.env_args, database, blobs, org_id, cache)


def _local_ref(env: ResolvedEnv, args: dict[str, Any], database: Database, blobs: BlobStore, org_id: str,
               cache: Path) -> tuple[str, dict[str, Any]]:
    if env.version is None:
        return env.ref, dict(args)
    from teachloop.store.repos.environments import EnvironmentRegistry

    with database.session(write=False) as s:
        row = EnvironmentRegistry(s).resolve(org_id, env.ref)
    return str(fetch_package(blobs, row.blob_key, row.digest, cache)), dict(args)


def eval_env_ref(cfg: LoopConfig, refs: References, database: Database, blobs: BlobStore, org_id: str,
                 cache: Path) -> tuple[str, dict[str, Any]] | None:
    """(a locally loadable reference, its arguments) of the environment a GRPO run evaluates on held out -- the
    first gate environment, else the grader source's -- or None (``algorithm.eval_tasks = 0``, not GRPO)."""
    if cfg.algorithm.kind != "grpo" or cfg.algorithm.eval_tasks == 0:
        return None
    if cfg.gate.environments:
        return _local_ref(refs.gate_envs[0], cfg.gate.environments[0].env_args, database, blobs, org_id, cache)
    return grader_env_ref(cfg, refs, database, blobs, org_id, cache)


@dataclass
class TrainDeps:
    """What the loop needs to train and evaluate.

    Attributes:
        engine: the engine holding the base model (may be shared with serving).
        renderer: its chat renderer.
        database: the system of record.
        blobs: the blob store.
        org_id: the organisation.
        env_cache: folder for extracted environment archives.
        base_model: the base model id the engine runs; when set, a deployment of another base model is refused.
    """

    engine: Engine
    renderer: Renderer
    database: Database
    blobs: BlobStore
    org_id: str
    env_cache: Path
    base_model: str | None = None


async def train_candidate(deps: TrainDeps, cfg: LoopConfig, refs: References, rows: Sequence[Curated], *,
                          name: str, warm_start: AdapterVersion | None = None, budget_s: float,
                          on_step: Callable[[int, dict[str, Any]], None] | None = None,
                          on_run: Callable[[str], object] | None = None, init_key: str | None = None,
                          init_state: str | None = None, steps: int | None = None,
                          temperature: float | None = None, extra_draws: int | None = None,
                          lr_scale: float | None = None) -> RunInfo:
    """Train the iteration's candidate (see the module docstring); raises on failure (the run is marked failed).

    ``init_key`` (a PEFT folder in the blob store: an earlier candidate of the lineage) overrides
    ``warm_start``; ``init_state`` (the checkpoint of the run that trained that folder, passed by
    ``check_state``) is restored instead of it, optimizer state included; ``steps``, ``temperature`` and
    ``extra_draws`` override ``train.steps``, ``rl.temperature`` and ``rl.extra_draws``, and ``lr_scale``
    multiplies ``optim.lr`` (``scaled_lr``; the iteration's ``loop.lineage.Plan``).
    """
    dep = refs.deployment
    with tempfile.TemporaryDirectory(prefix="teachloop-loop-") as tmp:
        folder = Path(tmp)
        env = data_path = eval_path = None
        env_args: dict[str, Any] | None = None
        held_out = eval_env_ref(cfg, refs, deps.database, deps.blobs, deps.org_id, deps.env_cache)
        if cfg.algorithm.kind == "grpo":
            path = _write_jsonl(folder / "prompts.jsonl", prompt_rows(rows))
            inner, inner_args = grader_env_ref(cfg, refs, deps.database, deps.blobs, deps.org_id, deps.env_cache)
            env = TRAFFIC_ENV
            env_args = {"path": str(path), "digest": file_digest(path), "env": inner, "env_args": inner_args}
            if cfg.algorithm.failure_share:
                env_args["failure_share"] = cfg.algorithm.failure_share
        else:
            train = [r.candidate.content for r in rows if r.split == "train"]
            holdout = [r.candidate.content for r in rows if r.split == "holdout"]
            data_path = str(_write_jsonl(folder / "train.jsonl", train))
            if holdout:
                eval_path = str(_write_jsonl(folder / "holdout.jsonl", holdout))
        raw = training_dict(cfg, model=dep.base_model, name=name, env=env, env_args=env_args, data_path=data_path,
                            eval_path=eval_path, eval_env=held_out[0] if held_out else None,
                            eval_env_args=held_out[1] if held_out else None)
        if steps is not None:
            raw["steps"] = steps
        if "rl" in raw:
            late = {"temperature": temperature, "extra_draws": extra_draws}
            raw["rl"] = {**raw["rl"], **{k: v for k, v in late.items() if v is not None}}
        key = init_key or (warm_start.blob_key if warm_start is not None else None)
        if init_state is not None and key is None:
            raise TeachloopError("init_state needs the folder it was saved with (init_key)")
        if key is not None and init_state is None:  # a fresh AdamW on a trained adapter: the stop-gap
            raw = continued_optim(raw, cfg.algorithm.continue_lr_scale, cfg.algorithm.continue_warmup)
        if lr_scale is not None:
            raw = scaled_lr(raw, lr_scale)
        tc = validate_config(raw)
        engine: Engine = deps.engine
        if init_state is not None:  # moments restored: the plain lr, as if the run had never stopped
            engine = cast(Engine, WarmStart(deps.engine, deps.blobs.get_dir(init_state, folder / "init"),
                                            checkpoint=True))
        elif key is not None:
            init = deps.blobs.get_dir(key, folder / "init")
            engine = cast(Engine, WarmStart(deps.engine, init))
        started = time.monotonic()

        def listen(event: str, payload: dict[str, Any]) -> None:
            if event == "run" and on_run is not None:
                on_run(payload["run"].id)
            if event != "step":
                return
            if on_step is not None:
                on_step(payload["step"], payload["values"])
            spent = time.monotonic() - started
            if spent > budget_s and payload["step"] < tc.steps:
                raise BudgetExceeded(f"training budget exhausted after {spent / 60:.1f} min at step "
                                     f"{payload['step']}/{tc.steps} (budget.train_minutes_per_day)")

        trainer = Trainer(tc, TrainerDeps(engine=engine, renderer=deps.renderer, database=deps.database,
                                          blobs=deps.blobs, org_id=deps.org_id, env_cache=deps.env_cache),
                          listener=listen)
        run = await trainer.run()
        refuse_alarmed(run)  # issue 16: a run that raised a reward-hack alarm is never gated nor promoted
        return run


def check_state(deps: TrainDeps, adapter_key: str, state_key: str) -> str | None:
    """Why the checkpoint ``state_key`` cannot be restored as the PEFT folder ``adapter_key``, or None if it can.

    It can when the checkpoint's adapter is that folder (the same digest: the moments were saved with
    these weights) and the engine loads it (``load_checkpoint``, all or nothing: moments that do not
    fit the adapter are refused there, naming the parameter and both shapes). Loads it once under a
    scratch name and drops it; changes nothing.
    """
    with tempfile.TemporaryDirectory(prefix="teachloop-state-") as tmp:
        try:
            ckpt = deps.blobs.get_dir(state_key, Path(tmp) / "state")
            start = deps.blobs.get_dir(adapter_key, Path(tmp) / "start")
            if not (ckpt / "adapter").is_dir() or folder_digest(ckpt / "adapter") != folder_digest(start):
                return (f"its checkpoint {state_key} holds another adapter than {adapter_key} (e.g. "
                        "eval.keep_best made an earlier step the run's final adapter)")
        except TeachloopError as err:
            return str(err)
        probe = f"loop-state-check:{uuid.uuid4().hex[:12]}"
        try:
            deps.engine.load_checkpoint(probe, ckpt)
        except TeachloopError as err:
            return str(err).replace(str(ckpt), state_key)
        finally:
            if deps.engine.has_adapter(probe):
                deps.engine.delete_adapter(probe)
    return None


def continued_optim(raw: dict[str, Any], lr_scale: float, warmup: float) -> dict[str, Any]:
    """The training config of a run that continues a trained adapter with a fresh AdamW (no saved state):
    ``lr_scale`` times the lr, ramped up over
    ``warmup`` of its steps (``algorithm.continue_lr_scale`` / ``continue_warmup``); unchanged when the config's
    ``optim`` sets ``warmup_steps`` itself, or with (1.0, 0.0)."""
    if "warmup_steps" in (raw.get("optim") or {}) or (lr_scale == 1.0 and warmup == 0.0):
        return raw
    out = scaled_lr(raw, lr_scale)  # a new optim dict: raw is not changed
    out["optim"]["warmup_steps"] = int(int(raw.get("steps", TrainConfig.model_fields["steps"].default)) * warmup)
    return out


def scaled_lr(raw: dict[str, Any], scale: float) -> dict[str, Any]:
    """The training config ``raw`` with ``scale`` times its ``optim.lr`` (the default lr when it sets none);
    its schedule and warmup are kept (``algorithm.late_lr_scale``)."""
    optim = dict(raw.get("optim") or {})
    optim["lr"] = float(optim.get("lr", OptimSection.model_fields["lr"].default)) * scale
    return {**raw, "optim": optim}


def publish_candidate(database: Database, blobs: BlobStore, org_id: str, deployment: str, base_model: str,
                      run: RunInfo, info: dict[str, Any]) -> AdapterVersion:
    """Store the run's final adapter as the next version of adapter ``deployment``."""
    refuse_alarmed(run)  # issue 16: never publish a candidate whose run raised a reward-hack alarm
    if not run.final_adapter_key:
        raise TeachloopError(f"run {run.id} has no final adapter")
    with tempfile.TemporaryDirectory(prefix="teachloop-publish-") as tmp, database.session() as s:
        folder = blobs.get_dir(run.final_adapter_key, Path(tmp) / "adapter")
        version, _ = publish_adapter(s, blobs, org_id, name=deployment, folder=folder, base_model=base_model,
                                     source_run_id=run.id, info=info, actor="loop")
        return version


def holdout_env(cfg: LoopConfig, refs: References, rows: Sequence[dict[str, Any]]) -> TrafficPrompts | None:
    """The holdout rows that carry an answer (chat, prompt or pair rows), as an environment graded by the
    grader source's env; None when there is no grader source or no row with an answer."""
    src = cfg.grader_source()
    if src is None:
        return None
    inner = refs.source_envs[cfg.sources.index(src)].env
    prompts = []
    for r in rows:
        if r.get("answer") is None or not ("messages" in r or "prompt" in r):
            continue
        msgs = list(r["messages"] if "messages" in r else r["prompt"])
        if msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        prompts.append({"messages": msgs, "answer": r["answer"], "info": r.get("info", {})})
    return TrafficPrompts.from_rows(prompts, inner) if prompts else None


__all__ = [
    "TRAFFIC_ENV",
    "BudgetExceeded",
    "TrainDeps",
    "WarmStart",
    "check_state",
    "continued_optim",
    "eval_env_ref",
    "grader_env_ref",
    "holdout_env",
    "new_rows",
    "prompt_rows",
    "publish_candidate",
    "scaled_lr",
    "snapshot",
    "train_candidate",
]

"""``LoopRunner``: the loop of one deployment, one ``tick`` at a time.

A tick:

1. reads the loop's stored config and re-checks what it names (deployment,
   environments, datasets); a loop that is disabled or whose references broke
   does nothing (the reason is noted on the loop);
2. scores the deployment's new traffic with the grader source's environment
   (the online reward, ``trace_scores``);
3. advances a candidate in ``canary`` (promote, roll back or wait, per
   ``promotion.judge``); while a canary runs nothing else happens;
4. otherwise **watches** the deployed version when the loop promoted it
   (``promotion.watch``: its newest ``watch_requests`` requests against the
   previous version, for as long as it serves) and rolls it back on a drop;
5. counts the new usable examples since the loop's cursor (by arrival time:
   feedback, grader scores and dataset rows that came after it) and, if the
   trigger is due and today's training budget allows, runs an iteration:
   snapshot -> plan -> train -> gate -> canary (the watch goes on meanwhile).
   The plan (``loop.lineage``) says where the candidate starts -- the newest
   candidate of the lineage that was not worse than the deployed version, or
   the deployed adapter -- with the AdamW state of the run that trained it
   when one of this loop's runs did (``loop.training.check_state`` checks it
   can be restored first; the plan records why not), and its steps and
   temperature. Each
   dataset another organisation granted through the marketplace is checked and
   metered once per iteration first (``meter_bought_sources``); a revoked
   (refunded) entitlement fails the iteration, naming the dataset, before
   anything is read or trained (the refusal stays in the access log).

An iteration that fails -- no usable data, a training run that fails, an
eval or gate that raises -- is recorded with status ``failed`` (or
``skipped`` when there were too few rows) and the reason; the deployment is
untouched, the cursor moves past the data it saw, and the next trigger
starts a new one.
The deployment is changed only through ``loop.promotion`` (the store's
deployment registry), so serving processes pick the change up on their next
request. An iteration left ``running`` by a process that died is marked
failed after ``STALE_MINUTES`` without progress.

``run_forever`` ticks every ``trigger.check_seconds`` until stopped. Listeners
receive ``(event, payload)`` for a live view. The runner holds the engine
for training and evaluation; the CLI and the worker build it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from teachloop.core.errors import (
    ConfigurationError,
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    TeachloopError,
)
from teachloop.core.loop import CanaryRecord, IterationStage, IterationStatus, Judgement, LoopPhase, Revisions
from teachloop.core.rl import ChatCompleter, Task
from teachloop.engine.completer import EngineCompleter
from teachloop.loop import lineage, promotion
from teachloop.loop.config import (
    GateConfig,
    LoopConfig,
    References,
    check_references,
    meter_bought_sources,
    validate_loop_config,
)
from teachloop.loop.curation import curate
from teachloop.loop.distill import gate_baseline
from teachloop.loop.gate import (
    GateDecision,
    Sequential,
    Suite,
    decide,
    interim,
    likelihood_suite,
    reward_suite,
    stream_slice,
)
from teachloop.loop.scoring import AnswerFinder, score_new_traffic
from teachloop.loop.sources import collect, send_to_experts
from teachloop.loop.training import (
    TrainDeps,
    check_state,
    holdout_env,
    publish_candidate,
    snapshot,
    train_candidate,
)
from teachloop.loop.trigger import budget_left, day_start, due
from teachloop.store.repos.deployments import AdapterVersions, Deployments
from teachloop.store.repos.loops import Loops, OnlineFigures, canary_of, revisions_of
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.deployments import AdapterVersion
from teachloop.store.schema.loops import Loop, LoopIteration

log = logging.getLogger(__name__)


def _before(revisions: Revisions) -> int:
    """The deployment revision to roll back to; an iteration records it when it starts."""
    if revisions.before is None:
        raise ConfigurationError("the iteration recorded no revision to roll back to")
    return revisions.before

STALE_MINUTES = 60
Listener = Callable[[str, dict[str, Any]], None]


@dataclass
class TickResult:
    """What one tick did."""

    phase: str
    scored: int = 0
    new_examples: int = 0
    iteration: int | None = None
    status: str | None = None
    note: str = ""


def drop_adapter(engine: Any, name: str) -> None:
    """Unload ``name`` from the engine -- unless it is the last adapter there.

    The torch engine's PEFT model keeps its "active adapter" pointing at the last
    adapter deleted when none is left, and the next ``save_adapter`` then fails
    with a KeyError; keeping the last one (a few tens of MB) avoids that.
    """
    with contextlib.suppress(Exception):
        if engine.has_adapter(name) and len(engine.list_adapters()) > 1:
            engine.delete_adapter(name)


class _GateSlice(NamedTuple):
    """One gate environment's held-out tasks for an iteration: its reference, the tasks, the ``sample`` record
    (``gate.stream_slice``) and the key of the deployed version's cached rewards on them."""

    env_ref: Any
    tasks: list[Task]
    sample: dict[str, Any]
    key: tuple[Any, ...]


class LoopRunner:
    """Runs the loop of ``deployment`` (see the module docstring)."""

    def __init__(self, deps: TrainDeps, deployment: str, *, listener: Listener | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.deps = deps
        self.deployment = deployment
        self.listener = listener or (lambda event, payload: None)
        self.clock = clock
        self._finder: tuple[str, AnswerFinder] | None = None
        self._gate_cache: dict[tuple[Any, ...], list[float]] = {}
        self.check_seconds = 30.0

    # ------------------------------------------------------------------ state
    def _load(self) -> tuple[Loop, LoopConfig, References]:
        d = self.deps
        with d.database.session(write=False) as s:
            dep = Deployments(s).get(d.org_id, self.deployment)
            loop = Loops(s).for_deployment(d.org_id, dep.id)
            if loop is None:
                raise NotFound(f"deployment {self.deployment!r} has no loop; configure one with `teachloop loop set`",
                               param="deployment")
            cfg = validate_loop_config(loop.config)
            refs = check_references(cfg, s, blobs=d.blobs, org_id=d.org_id, cache=d.env_cache)
        if d.base_model is not None and dep.base_model != d.base_model:
            raise ConfigurationError(f"deployment {dep.name!r} serves base model {dep.base_model!r}; this process's "
                                     f"engine runs {d.base_model!r}", param="deployment")
        return loop, cfg, refs

    def _update_loop(self, loop_id: str, **fields: Any) -> None:
        with self.deps.database.session() as s:
            Loops(s).update(self.deps.org_id, loop_id, **fields)

    def _update_it(self, it_id: str, **fields: Any) -> LoopIteration:
        with self.deps.database.session() as s:
            return Loops(s).update_iteration(self.deps.org_id, it_id, **fields)

    def _emit(self, event: str, **payload: Any) -> None:
        self.listener(event, payload)

    # ------------------------------------------------------------------ tick
    async def tick(self) -> TickResult:
        """One pass of the loop (see the module docstring)."""
        try:
            loop, cfg, refs = self._load()
        except TeachloopError as err:
            with contextlib.suppress(TeachloopError), self.deps.database.session() as s:
                dep = Deployments(s).find(self.deps.org_id, self.deployment)
                row = Loops(s).for_deployment(self.deps.org_id, dep.id) if dep else None
                if row is not None:
                    row.note = f"paused: {err}"[:2000]
            self._emit("paused", reason=str(err))
            return TickResult("paused", note=str(err))
        now = self.clock()
        self.check_seconds = cfg.trigger.check_seconds
        self._update_loop(loop.id, last_tick_at=now, note=None)
        if not loop.enabled:
            return TickResult(loop.phase, note="loop disabled")
        scored = await self._score(loop, cfg, refs)
        result = TickResult(loop.phase, scored=scored)
        if loop.phase == LoopPhase.CANARY and loop.active_iteration_id:
            result.note = await asyncio.to_thread(self._advance, loop, cfg, refs)
            result.phase = self._phase(loop.id)
            return result
        watch_note, rolled_back = await asyncio.to_thread(self._watch, loop, cfg)
        result.phase = self._phase(loop.id)
        if rolled_back:
            result.note = watch_note
            return result
        with self.deps.database.session(write=False) as s:
            loop = Loops(s).get(self.deps.org_id, loop.id)
        if self._running(loop):
            result.note = "an iteration is running"
            return result
        if any(src.kind == "experts" for src in cfg.sources):  # issue 14: unsure traffic goes to the experts
            with self.deps.database.session() as s:
                send_to_experts(s, cfg, refs, org_id=self.deps.org_id, loop_id=loop.id, now=now)
        new = self.new_examples(loop, cfg, refs)
        result.new_examples = new
        with self.deps.database.session(write=False) as s:
            last = next(iter(Loops(s).iterations(self.deps.org_id, loop.id, limit=1)), None)
            spent = Loops(s).train_seconds_since(self.deps.org_id, loop.id, day_start(now))
        reason = due(cfg.trigger, new_examples=new, last_started=last.started_at if last else None, now=now)
        self._emit("tick", scored=scored, new_examples=new, due=reason, phase=loop.phase)
        if reason is None:
            return result
        left = budget_left(cfg.budget, spent)
        if left <= 0:
            result.note = f"trigger due ({reason}) but today's training budget is spent"
            return result
        it = await self.run_iteration(loop, cfg, refs, reason, budget_s=left)
        result.iteration, result.status, result.phase = it.number, it.status, self._phase(loop.id)
        result.note = it.reason or ""
        return result

    def _phase(self, loop_id: str) -> str:
        with self.deps.database.session(write=False) as s:
            return Loops(s).get(self.deps.org_id, loop_id).phase

    def _running(self, loop: Loop) -> bool:
        with self.deps.database.session() as s:
            repo = Loops(s)
            running = [i for i in repo.iterations(self.deps.org_id, loop.id, limit=5) if i.status == IterationStatus.RUNNING]
            stale = self.clock() - timedelta(minutes=STALE_MINUTES)
            for it in running:
                if it.updated_at < stale:
                    repo.update_iteration(self.deps.org_id, it.id, status=IterationStatus.FAILED, finished_at=self.clock(),
                                          reason=f"interrupted at {it.stage} (no progress for {STALE_MINUTES} min)")
            return any(i.updated_at >= stale for i in running)

    async def _score(self, loop: Loop, cfg: LoopConfig, refs: References) -> int:
        src = cfg.grader_source()
        if src is None:
            return 0
        env = refs.source_envs[cfg.sources.index(src)]
        key = f"{env.digest}:{src.answer}:{src.lookup_tasks}:{src.lookup_seed}"
        if self._finder is None or self._finder[0] != key:
            self._finder = (key, AnswerFinder(src, env.env))
        n = await score_new_traffic(self.deps.database, self.deps.org_id, loop.id, refs.deployment.id, env,
                                    self._finder[1])
        if n:
            self._emit("scored", count=n)
        return n

    def new_examples(self, loop: Loop, cfg: LoopConfig, refs: References) -> int:
        """Usable examples that arrived after the loop's cursor (after filters, before dedupe)."""
        with self.deps.database.session(write=False) as s:
            cands = collect(s, cfg, refs, org_id=self.deps.org_id, loop_id=loop.id)
        cur = cfg.curation
        fresh = [c for c in cands if c.created_at is not None and (loop.cursor is None or c.created_at > loop.cursor)]
        return sum(1 for c in fresh if all(str(c.metadata.get(k)) == v for k, v in cur.metadata.items())
                   and not any(str(c.metadata.get(k)) == v for k, v in cur.exclude_metadata.items()))

    # ------------------------------------------------------------------ iteration
    async def run_iteration(self, loop: Loop, cfg: LoopConfig, refs: References, reason: str, *,
                            budget_s: float) -> LoopIteration:
        """Snapshot, train, gate and (if better) start the canary; failures are the iteration's outcome."""
        d = self.deps
        dep = refs.deployment
        with d.database.session() as s:
            it = Loops(s).start_iteration(d.org_id, loop.id, reason, baseline_version_id=dep.adapter_version_id,
                                          revisions=Revisions(before=dep.revision))
        self._emit("iteration", number=it.number, trigger=reason)
        stage = IterationStage.DATA
        run_adapter: str | None = None
        try:
            if refs.licenses:  # bought datasets: entitlement checked and the use metered, once per iteration
                refused: Forbidden | None = None
                with d.database.session() as s:
                    try:
                        meter_bought_sources(s, cfg, refs, org_id=d.org_id,
                                             detail={"loop_id": loop.id, "iteration": it.number})
                    except Forbidden as err:  # commit the refusal's access-log row, then fail the iteration
                        refused = err
                if refused is not None:
                    raise refused
            with d.database.session(write=False) as s:
                cands = collect(s, cfg, refs, org_id=d.org_id, loop_id=loop.id)
            newest = max((c.created_at for c in cands if c.created_at is not None), default=loop.cursor)
            self._update_loop(loop.id, cursor=newest)
            report = curate(cands, cfg.curation)
            counts = report.counts()
            if counts["train"] < cfg.trigger.min_examples:
                return self._finish(it, IterationStatus.SKIPPED, f"only {counts['train']} training rows after curation "
                                                   f"(trigger.min_examples {cfg.trigger.min_examples})", counts=counts)
            ds = await asyncio.to_thread(snapshot, d.database, d.blobs, d.org_id, cfg, report.rows,
                                         {"loop_id": loop.id, "iteration": it.number, "curation": counts})
            self._update_it(it.id, dataset_id=ds.id, dataset_digest=ds.digest, counts=counts, stage=IterationStage.TRAIN)
            self._emit("stage", number=it.number, stage=IterationStage.TRAIN, dataset=ds.ref, counts=counts)
            stage = IterationStage.TRAIN
            baseline = self._version(dep.adapter_version_id)
            plan = self._plan(loop, cfg, refs, it, baseline)
            if plan.adapter_key is not None and plan.state_key is not None:
                why = await asyncio.to_thread(check_state, d, plan.adapter_key, plan.state_key)
                if why is not None:  # recorded on the plan; the run starts a fresh AdamW
                    plan = plan.without_state(why)
            self._update_it(it.id, plan=plan.to_json())
            self._emit("plan", number=it.number, plan=plan.to_json())
            started = self.clock()

            def on_step(step: int, values: dict[str, Any]) -> None:
                self._emit("train_step", number=it.number, step=step, values=values)
                if step % 5 == 0:
                    self._update_it(it.id, train_seconds=(self.clock() - started).total_seconds())

            try:
                run = await train_candidate(d, cfg, refs, report.rows, name=f"{cfg.deployment}-loop-{it.number}",
                                            init_key=plan.adapter_key, init_state=plan.state_key, steps=plan.steps,
                                            temperature=plan.temperature, extra_draws=plan.extra_draws,
                                            lr_scale=plan.lr_scale,
                                            budget_s=budget_s, on_step=on_step,
                                            on_run=lambda run_id: self._update_it(it.id, run_id=run_id))
            finally:
                self._update_it(it.id, train_seconds=(self.clock() - started).total_seconds())
            run_adapter = f"run:{run.id}"
            self._update_it(it.id, run_id=run.id, stage=IterationStage.GATE)
            stage = IterationStage.GATE
            self._emit("stage", number=it.number, stage=IterationStage.GATE, run=run.id)
            holdout = [r.candidate.content for r in report.rows if r.split == "holdout"][: cfg.gate.holdout_max]
            decision = await self.gate(cfg, refs, holdout, baseline, run_adapter, iteration=it.number)
            self._update_it(it.id, gate=decision.to_json())
            self._emit("gate", number=it.number, decision=decision.to_json())
            if not decision.passed:
                return self._finish(it, IterationStatus.REJECTED, decision.reason)
            stage = IterationStage.PROMOTE
            version = await asyncio.to_thread(
                publish_candidate, d.database, d.blobs, d.org_id, dep.name, dep.base_model, run,
                {"loop_id": loop.id, "iteration": it.number, "dataset": ds.digest})
            return self._start_canary(loop, cfg, it, version, decision)
        except Exception as err:
            log.warning("loop %s iteration %d: %s failed", self.deployment, it.number, stage, exc_info=True)
            msg = f"{stage} failed: {type(err).__name__}: {err}"[:2000]
            self._emit("failed", number=it.number, stage=stage, error=msg)
            return self._finish(it, IterationStatus.FAILED, msg + "; the deployment is unchanged")
        finally:
            if run_adapter is not None:
                drop_adapter(d.engine, run_adapter)

    def _plan(self, loop: Loop, cfg: LoopConfig, refs: References, it: LoopIteration,
              deployed: AdapterVersion | None) -> lineage.Plan:
        """Where the iteration's candidate starts, its steps and temperature (``loop.lineage``)."""
        d = self.deps
        with d.database.session(write=False) as s:
            past = [p for p in Loops(s).iterations(d.org_id, loop.id, limit=100) if p.id != it.id]
            runs = [str(p.run_id) for p in past if p.run_id]
            keys = lineage.final_adapters(s, d.org_id, runs)
            start = refs.continue_from.state_run if refs.continue_from is not None else None
            states = lineage.final_states(s, d.org_id, runs + ([start] if start else []))
        return lineage.plan(cfg, deployed, past, keys.get, continue_from=refs.continue_from, final_state=states.get)

    def _finish(self, it: LoopIteration, status: IterationStatus, reason: str, **fields: Any) -> LoopIteration:
        row = self._update_it(it.id, status=status, reason=reason, finished_at=self.clock(), stage=IterationStage.DONE,
                              **fields)
        self._emit("outcome", number=it.number, status=status, reason=reason)
        return row

    def _version(self, version_id: str | None) -> AdapterVersion | None:
        if version_id is None:
            return None
        with self.deps.database.session(write=False) as s:
            return AdapterVersions(s).get(self.deps.org_id, version_id)

    async def gate(self, cfg: LoopConfig, refs: References, holdout: list[dict[str, Any]],
                   baseline: AdapterVersion | None, candidate: str, *, iteration: int | None = None) -> GateDecision:
        """Evaluate the candidate against the deployed version (or the base) and decide.

        With ``gate.fresh_tasks`` each environment suite of iteration ``iteration`` uses its own slice of the
        held-out stream (``gate.stream_slice``), named in the suite's ``sample`` record; the deployed version's
        rewards are then measured on every slice (no cache). Without it, every iteration uses the same tasks
        and the deployed version's rewards on them are computed once per version and reused. The environment
        tasks are evaluated in ``gate.looks`` chunks and the gate may stop after any but the last
        (``loop.gate.interim``); the holdout suite is evaluated whole first.
        """
        d = self.deps
        base_name = None
        loaded = False
        if baseline is not None:
            base_name = "loop-base-" + baseline.digest.removeprefix("sha256:")[:16]
            if not d.engine.has_adapter(base_name):
                with tempfile.TemporaryDirectory(prefix="teachloop-gate-") as tmp:
                    folder = d.blobs.get_dir(baseline.blob_key, Path(tmp) / "adapter")
                    d.engine.load_adapter(base_name, folder)
                loaded = True
        try:
            g = cfg.gate
            suites: list[Suite] = []
            base_c: ChatCompleter = EngineCompleter(d.engine, d.renderer, adapter=base_name)
            cand_c = EngineCompleter(d.engine, d.renderer, adapter=candidate)
            teacher = gate_baseline(d.database, refs.deployment)  # issue 17: an upstream primary arm is the baseline
            if teacher is not None:
                base_c = teacher[1]
            empty = "empty holdout and no environments"
            if g.holdout and holdout:
                if g.metric == "reward":
                    env = holdout_env(cfg, refs, holdout)
                    if env is not None:
                        tasks = list(env.tasks())
                        suites.append(await reward_suite("holdout", env, tasks, base_c, cand_c, max_tokens=g.max_tokens))
                    else:
                        empty = (f"none of the {len(holdout)} holdout rows carries a reference answer to grade, and "
                                 "gate.environments is empty; add gate.environments or use gate.metric = 'likelihood'")
                else:
                    suites.append(await likelihood_suite(holdout, d.engine, d.renderer, base_name, candidate))
            planned: list[_GateSlice] = []
            for spec, env_ref in zip(g.environments, refs.gate_envs, strict=True):
                tasks, sample = stream_slice(env_ref.env, seed=spec.seed, tasks=spec.tasks, iteration=iteration,
                                             fresh=g.fresh_tasks)
                if not tasks:
                    empty = (f"the held-out stream of {env_ref.ref} (seed {spec.seed}) has no tasks left at offset "
                             f"{sample['offset']}")
                # the deployed version's greedy rewards on a fixed task set do not change: computed once; a fresh
                # slice per iteration is measured every time (keyed by the slice all the same)
                key = (teacher[0] if teacher else baseline.digest if baseline else "base", env_ref.digest, spec.tasks,
                       spec.seed, sample["offset"], g.max_tokens)
                planned.append(_GateSlice(env_ref, tasks, sample, key))
            seq = await self._looks(g, suites, planned, base_c, cand_c)
            return decide(suites, g, baseline=teacher[0] if teacher else baseline.ref if baseline else "base",
                          candidate=candidate, empty_reason=empty, sequential=seq)
        finally:
            if loaded and base_name is not None:
                drop_adapter(d.engine, base_name)

    async def _looks(self, g: GateConfig, suites: list[Suite],
                     planned: list[_GateSlice],
                     base_c: ChatCompleter, cand_c: ChatCompleter) -> Sequential | None:
        """Evaluate the environment suites in ``g.looks`` chunks, appending them to ``suites``; stop early when
        ``gate.interim`` says so (module docstring of ``loop.gate``). None when there is no environment task."""
        total = sum(len(p.tasks) for p in planned)
        if not total:
            return None
        seq = Sequential(looks=g.looks, planned=total)
        env_suites: dict[int, Suite] = {}  # planned environment -> its suite so far
        for look in range(g.looks):
            for i, (env_ref, tasks, sample, key) in enumerate(planned):
                size = -(-len(tasks) // g.looks)
                chunk = tasks[look * size:(look + 1) * size]
                if not chunk:
                    continue
                cached = self._gate_cache.get(key)
                part = await reward_suite(env_ref.ref, env_ref.env, chunk, base_c, cand_c, max_tokens=g.max_tokens,
                                          deciding=g.metric == "reward",
                                          baseline_rewards=cached[look * size:(look + 1) * size] if cached else None)
                so_far = env_suites.get(i)
                if so_far is None:
                    part.sample = sample
                    env_suites[i] = part
                    suites.append(part)
                else:
                    so_far.extend(part)
                seq.evaluated += len(chunk)
            seq.taken = look + 1
            if seq.evaluated >= total:
                break
            seq.stopped = interim(suites, g, seq)
            if seq.stopped is not None:
                break
        if not g.fresh_tasks:  # a complete fixed slice: the deployed version's rewards on it are kept
            for i, suite in env_suites.items():
                if len(suite.ids) == len(planned[i].tasks):
                    self._gate_cache[planned[i].key] = list(suite.baseline)
        return seq

    # ------------------------------------------------------------------ promotion
    def _start_canary(self, loop: Loop, cfg: LoopConfig, it: LoopIteration, version: AdapterVersion,
                      decision: GateDecision) -> LoopIteration:
        d, p = self.deps, cfg.promotion
        now = self.clock()
        with d.database.session() as s:
            row = promotion.start_canary(s, d.org_id, cfg.deployment, version.id, p.canary_percent)
            Loops(s).update_iteration(d.org_id, it.id, candidate_version_id=version.id,
                                      revisions=revisions_of(it).model_copy(update={"canary": row.revision}),
                                      canary=CanaryRecord(started_at=now, percent=p.canary_percent),
                                      status=IterationStatus.CANARY, stage=IterationStage.CANARY,
                                      reason=decision.reason)
            Loops(s).update(d.org_id, loop.id, phase=LoopPhase.CANARY, active_iteration_id=it.id)
        self._emit("canary", number=it.number, version=version.ref, percent=p.canary_percent, reason=decision.reason)
        with d.database.session(write=False) as s:
            return Loops(s).iteration(d.org_id, it.id)

    def _advance(self, loop: Loop, cfg: LoopConfig, refs: References) -> str:
        """Judge the active candidate's canary: promote (then watch), roll back or wait."""
        d, p = self.deps, cfg.promotion
        assert loop.active_iteration_id is not None
        with d.database.session(write=False) as s:
            repo = Loops(s)
            it = repo.iteration(d.org_id, loop.active_iteration_id)
            dep = Deployments(s).get(d.org_id, cfg.deployment)
        canary, revisions = canary_of(it), revisions_of(it)
        if dep.revision != revisions.canary or canary.started_at is None:
            self._end(loop, it, IterationStatus.SUPERSEDED, f"the deployment was changed outside the loop (revision {dep.revision}); "
                                              "left as it is")
            return "superseded"
        now = self.clock()
        cand_id = it.candidate_version_id
        started = canary.started_at
        with d.database.session(write=False) as s:
            repo = Loops(s)
            base = repo.online(d.org_id, loop.id, dep.id, since=started, arm="primary")
            cand = repo.online(d.org_id, loop.id, dep.id, since=started, arm="canary", adapter_version_id=cand_id)
        minutes = (now - started).total_seconds() / 60
        verdict = promotion.judge(p, base, cand, min_requests=p.canary_min_requests, minutes=minutes,
                                  min_minutes=p.canary_min_minutes, phase="canary")
        figures = Judgement(baseline=base.summary(), candidate=cand.summary(), verdict=verdict.reason)
        if verdict.action == "wait":
            self._update_it(it.id, canary=canary.model_copy(update={"canary": figures}))
            return verdict.reason
        with d.database.session() as s:
            repo = Loops(s)
            if verdict.action == "rollback":
                row = promotion.roll_back(s, d.org_id, cfg.deployment, _before(revisions))
                repo.update_iteration(d.org_id, it.id, status=IterationStatus.ROLLED_BACK, stage=IterationStage.DONE,
                                      reason=verdict.reason, finished_at=now,
                                      canary=canary.model_copy(update={"canary": figures}),
                                      revisions=revisions.model_copy(update={"rolled_back": row.revision}))
                repo.update(d.org_id, loop.id, phase=LoopPhase.IDLE, active_iteration_id=None)
                event = "rolled_back"
            else:
                row = promotion.promote(s, d.org_id, cfg.deployment, str(cand_id))
                repo.end_watches(d.org_id, loop.id, now, keep=it.id)
                repo.update_iteration(d.org_id, it.id, status=IterationStatus.PROMOTED, stage=IterationStage.WATCH,
                                      reason=verdict.reason,
                                      canary=canary.model_copy(update={"canary": figures, "promoted_at": now}),
                                      revisions=revisions.model_copy(update={"promoted": row.revision}))
                repo.update(d.org_id, loop.id, phase=LoopPhase.WATCH, active_iteration_id=it.id)
                event = "promoted"
        self._emit(event, number=it.number, reason=verdict.reason, figures=figures.model_dump(mode="json"))
        return verdict.reason

    def _watch(self, loop: Loop, cfg: LoopConfig) -> tuple[str, bool]:
        """Watch the deployed version if the loop promoted it; roll back on a drop. Returns (note, rolled back)."""
        d, p = self.deps, cfg.promotion
        now = self.clock()
        with d.database.session() as s:
            repo = Loops(s)
            dep = Deployments(s).get(d.org_id, cfg.deployment)
            it = None
            if dep.adapter_version_id is not None and dep.canary_version_id is None:
                it = repo.watched(d.org_id, loop.id, dep.adapter_version_id)
            canary = canary_of(it) if it is not None else None
            if it is None or canary is None or canary.promoted_at is None:
                if loop.phase == LoopPhase.WATCH:
                    repo.end_watches(d.org_id, loop.id, now)
                    repo.update(d.org_id, loop.id, phase=LoopPhase.IDLE, active_iteration_id=None)
                return "", False
            if loop.phase != LoopPhase.WATCH or loop.active_iteration_id != it.id or it.stage != IterationStage.WATCH:
                repo.end_watches(d.org_id, loop.id, now, keep=it.id)
                repo.update_iteration(d.org_id, it.id, stage=IterationStage.WATCH, finished_at=None)
                repo.update(d.org_id, loop.id, phase=LoopPhase.WATCH, active_iteration_id=it.id)
            promoted = canary.promoted_at
            base = self._baseline(repo, loop, dep.id, it, promoted, p.min_samples)
            recent = repo.online(d.org_id, loop.id, dep.id, since=promoted, adapter_version_id=dep.adapter_version_id,
                                 last=p.watch_requests)
            verdict = promotion.watch(p, base, recent)
            figures = Judgement(baseline=base.summary(), candidate=recent.summary(), verdict=verdict.reason, at=now)
            if verdict.action == "wait":
                if canary.watch is None or canary.watch.candidate != figures.candidate:
                    repo.update_iteration(d.org_id, it.id, canary=canary.model_copy(update={"watch": figures}))
                return verdict.reason, False
            revisions = revisions_of(it)
            row = promotion.roll_back(s, d.org_id, cfg.deployment, _before(revisions))
            repo.update_iteration(d.org_id, it.id, status=IterationStatus.ROLLED_BACK, stage=IterationStage.DONE,
                                  reason=verdict.reason, finished_at=now,
                                  canary=canary.model_copy(update={"watch": figures}),
                                  revisions=revisions.model_copy(update={"rolled_back": row.revision}))
            repo.update(d.org_id, loop.id, phase=LoopPhase.IDLE, active_iteration_id=None)
            number = it.number
        self._emit("rolled_back", number=number, reason=verdict.reason, figures=figures.model_dump(mode="json"))
        return verdict.reason, True

    def _baseline(self, repo: Loops, loop: Loop, deployment_id: str, it: LoopIteration, promoted: datetime,
                  min_samples: int) -> OnlineFigures:
        """The previous version's online figures: its traffic since the iteration began (or all of it)."""
        prev = it.baseline_version_id
        recent = repo.online(self.deps.org_id, loop.id, deployment_id, since=it.started_at, until=promoted,
                             adapter_version_id=prev)
        if recent.graded >= min_samples or recent.feedback >= min_samples:
            return recent
        return repo.online(self.deps.org_id, loop.id, deployment_id, until=promoted, adapter_version_id=prev)

    def _end(self, loop: Loop, it: LoopIteration, status: IterationStatus, reason: str) -> None:
        with self.deps.database.session() as s:
            Loops(s).update_iteration(self.deps.org_id, it.id, status=status, stage=IterationStage.DONE, reason=reason,
                                      finished_at=self.clock())
            Loops(s).update(self.deps.org_id, loop.id, phase=LoopPhase.IDLE, active_iteration_id=None)
        self._emit(status, number=it.number, reason=reason)

    # ------------------------------------------------------------------ forever
    async def run_forever(self, stop: asyncio.Event, *, interval_s: float | None = None) -> None:
        """Tick until ``stop`` is set (every ``trigger.check_seconds`` unless ``interval_s``)."""
        while not stop.is_set():
            try:
                await self.tick()
            except (Conflict, ServiceUnavailable) as err:  # another ticker won a race, or the database is busy
                self._emit("paused", reason=str(err))
            except Exception as err:  # never let one bad tick end the autopilot; the next tick retries
                log.exception("loop %s: tick failed", self.deployment)
                self._emit("paused", reason=f"tick failed: {type(err).__name__}: {err}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s or self.check_seconds)


__all__ = ["STALE_MINUTES", "Listener", "LoopRunner", "TickResult", "drop_adapter"]

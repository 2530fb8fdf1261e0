"""The loop's lineage: where an iteration's candidate starts, how many steps it trains, at what temperature.

Before issue 16 every iteration restarted from the deployed adapter with
``train.steps`` steps, so a candidate the gate refused as "not better yet"
was thrown away with everything it had learnt. ``plan`` decides instead,
from the loop's own iterations (newest first, one loop of one organisation):

* **start** -- with ``algorithm.lineage`` (default on), the newest candidate
  trained against the version deployed now that was **not worse** than it on
  the gate (pooled deciding mean difference >= 0 and no suite the gate's
  guard refused: down by more than ``gate.max_regression``, a drop shown at
  the gate's confidence); a candidate that was worse, rolled back or
  failed is skipped, so the lineage goes back to its not-worse ancestor, and
  when none is left, to the deployed adapter (or the base). A promotion or
  rollback changes the deployed version and so starts a new lineage (the
  promoted candidate *is* the deployed adapter). ``algorithm.continue_from``
  names the start of the first iteration (``resolve_continue_from`` checks
  it belongs to this deployment's loop: a run of one of its iterations or a
  version of the adapter named like the deployment, in the same organisation).
  ``lineage = false`` is the behaviour before issue 16. With
  ``algorithm.through_worse = N`` the lineage also continues a candidate the
  gate found worse (a refusal, never a rollback or a failed run), as long as
  the newest candidate's line (it and its parents, ``Plan.parent_iteration``)
  ends in at most N worse candidates in a row; a longer run of worse ones
  goes back to the newest not-worse candidate, as above. GRPO's held-out
  curve dips and recovers (``bench/README.md``, "Loop vs offline"): a lineage
  that drops every dip drops the steps that would have climbed out of it.
* **steps** -- with ``algorithm.max_steps``, an iteration whose predecessor
  still improved on its own start (its gate reward above its parent's) trains
  twice the predecessor's steps, up to ``max_steps``; after one that got
  worse it goes back to ``train.steps``; otherwise it keeps the predecessor's.
* **temperature** -- with ``algorithm.late_temperature``, rollouts are sampled
  at it once the start's gate reward reaches ``algorithm.late_reward``; with
  ``algorithm.late_extra_draws``, from then on a step also draws that many more
  batches of prompts at most while too few of its groups' rewards vary
  (``rl.extra_draws``, dynamic sampling: a good policy's groups are mostly all
  correct, and teach nothing); with ``algorithm.late_lr_scale``, from then on
  the run trains at that fraction of ``optim.lr`` (``Plan.lr_scale``).
* **optimizer state** -- with ``algorithm.keep_optimizer`` (default on), a start
  that a run of this loop trained (a candidate of the lineage, the deployed
  version when a loop run made it, a ``continue_from`` of this loop) also names
  that run's last checkpoint (``state_key``: its adapter and AdamW moments and
  step count, which the trainer stores at every run's end), so the next run
  continues as if it had never stopped (``loop.training``). The run is found
  only among this loop's own iterations, read in the loop's organisation: a
  version's ``source_run_id`` that is not a run of one of them (a hand-pushed
  adapter, another deployment's or organisation's run) names no state, and the
  run then starts a fresh AdamW at ``continue_lr_scale`` (``Plan.optimizer``
  says which and why).

The *gate reward* of an iteration is the pooled mean of its deciding gate
suites (weighted by their sizes), for the baseline and for the candidate.
``Plan.to_json`` is stored on the iteration (``loop_iterations.plan``). This
module reads rows it is given; it writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.ids import is_id
from teachloop.core.loop import IterationStatus
from teachloop.store.repos.deployments import AdapterVersions
from teachloop.store.schema.deployments import AdapterVersion, Deployment
from teachloop.store.schema.loops import Loop, LoopIteration
from teachloop.store.schema.runs import TrainingRun

if TYPE_CHECKING:
    from teachloop.loop.config import LoopConfig

#: Statuses of iterations that trained and gated a candidate.
TRAINED = (IterationStatus.REJECTED, IterationStatus.CANARY, IterationStatus.PROMOTED, IterationStatus.ROLLED_BACK,
           IterationStatus.SUPERSEDED)


@dataclass(frozen=True)
class ContinueFrom:
    """A resolved ``algorithm.continue_from``: the PEFT folder (blob key) the first candidate starts from."""

    ref: str
    adapter_key: str
    run_id: str | None = None
    version_id: str | None = None
    state_run: str | None = None  # the run of this loop whose final AdamW state goes with it, if any


@dataclass(frozen=True)
class Plan:
    """How one iteration trains.

    Attributes:
        start: ``base`` (a fresh adapter), ``deployed`` (a copy of the deployed adapter), ``candidate`` (a
            copy of an earlier candidate of the lineage) or ``continue_from`` (the configured start).
        adapter_key: blob key of the PEFT folder the candidate starts from (None: a fresh adapter).
        parent_iteration: the iteration whose candidate it continues, if any.
        parent_reward: the gate reward of the start (the parent candidate's, or the deployed version's
            as last measured), if known.
        steps: training steps of this iteration.
        temperature: rollout temperature, or None for the config's.
        extra_draws: dynamic sampling's extra draws per step (``rl.extra_draws``), or None for the config's.
        lr_scale: the fraction of ``optim.lr`` the run trains at (``algorithm.late_lr_scale``), or None: the plain lr.
        reason: why, in words.
        state_key: blob key of the checkpoint (adapter + AdamW state) of the run that trained the start, restored
            with it; None: the run starts a fresh AdamW.
        state_run: that run's id.
        optimizer: what happens to the optimizer, in words (why no state is restored, when none is).
    """

    start: str
    adapter_key: str | None
    steps: int
    parent_iteration: int | None = None
    parent_reward: float | None = None
    temperature: float | None = None
    reason: str = ""
    state_key: str | None = None
    state_run: str | None = None
    optimizer: str = ""
    extra_draws: int | None = None
    lr_scale: float | None = None

    def without_state(self, why: str) -> Plan:
        """This plan with a fresh AdamW instead of the saved state, ``why`` recorded."""
        return replace(self, state_key=None, optimizer=f"a fresh AdamW: the saved state of run {self.state_run} "
                                                        f"is not restored ({why})")

    def to_json(self) -> dict[str, Any]:
        """As stored on the iteration."""
        return {"start": self.start, "parent_iteration": self.parent_iteration, "parent_reward": self.parent_reward,
                "steps": self.steps, "temperature": self.temperature, "extra_draws": self.extra_draws,
                "lr_scale": self.lr_scale, "reason": self.reason,
                "optimizer": {"restored": self.state_key is not None, "run": self.state_run,
                              "reason": self.optimizer}}


def gate_rewards(gate: dict[str, Any] | None) -> tuple[float, float] | None:
    """(baseline, candidate) pooled means of the deciding suites of a stored gate decision, or None."""
    suites = [s for s in (gate or {}).get("suites", []) if s.get("deciding") and s.get("n")]
    n = sum(int(s["n"]) for s in suites)
    if not n:
        return None
    base = sum(float(s["baseline_mean"]) * int(s["n"]) for s in suites) / n
    cand = sum(float(s["candidate_mean"]) * int(s["n"]) for s in suites) / n
    return base, cand


def not_worse(gate: dict[str, Any] | None, max_regression: float) -> bool:
    """Whether a gated candidate was not worse than its baseline (see the module docstring)."""
    rewards = gate_rewards(gate)
    if rewards is None:
        return False
    if any(_guarded(s, max_regression) for s in (gate or {}).get("suites", [])):
        return False
    return rewards[1] >= rewards[0]


def _guarded(suite: dict[str, Any], max_regression: float) -> bool:
    """Whether the gate's guard refused on this suite: its stored verdict, or for a record written before the
    verdict was stored, a mean drop of more than ``max_regression``."""
    if isinstance(suite.get("regression"), dict):
        return bool(suite["regression"].get("guarded"))
    return suite.get("mean_diff") is not None and -float(suite["mean_diff"]) > max_regression


def _worse_run(it: LoopIteration, by_number: dict[int, LoopIteration], max_regression: float) -> int:
    """How many candidates in a row, ``it`` and then its parents, were worse than their baseline on the gate
    (0: ``it`` was not worse). The walk follows ``plan.parent_iteration`` among ``by_number``."""
    count, seen = 0, set()
    cur: LoopIteration | None = it
    while cur is not None and cur.number not in seen and not not_worse(cur.gate, max_regression):
        seen.add(cur.number)
        count += 1
        parent = (cur.plan or {}).get("parent_iteration") if (cur.plan or {}).get("start") == "candidate" else None
        cur = by_number.get(int(parent)) if parent is not None else None
    return count


def base_steps(cfg: LoopConfig) -> int:
    """``algorithm.train.steps`` (or the training config's default)."""
    from teachloop.train.config import TrainConfig

    steps = cfg.algorithm.train.get("steps")
    return int(steps) if steps is not None else int(TrainConfig.model_fields["steps"].default)


def _progress(it: LoopIteration) -> float | None:
    """How much ``it``'s candidate improved on its own start (gate reward), or None."""
    rewards = gate_rewards(it.gate)
    if rewards is None:
        return None
    parent = (it.plan or {}).get("parent_reward")
    start = float(parent) if parent is not None and (it.plan or {}).get("start") == "candidate" else rewards[0]
    return rewards[1] - start


def _steps(cfg: LoopConfig, trained: Sequence[LoopIteration]) -> tuple[int, str]:
    first = base_steps(cfg)
    cap = cfg.algorithm.max_steps
    if cap is None or not trained:
        return first, ""
    last = trained[0]
    steps = int((last.plan or {}).get("steps") or first)
    progress = _progress(last)
    if progress is None:
        return steps, ""
    if progress > 0:
        return min(cap, max(first, 2 * steps)), f"iteration {last.number} still improved ({progress:+.3f}): " \
                                                 f"{min(cap, max(first, 2 * steps))} steps"
    if progress < 0:
        return first, f"iteration {last.number} got worse ({progress:+.3f}): back to {first} steps"
    return steps, f"iteration {last.number} did not move: {steps} steps"


def plan(cfg: LoopConfig, deployed: AdapterVersion | None, history: Sequence[LoopIteration],
         final_adapter: Callable[[str], str | None], *, continue_from: ContinueFrom | None = None,
         final_state: Callable[[str], str | None] | None = None) -> Plan:
    """The plan of the next iteration (see the module docstring).

    ``history`` is the loop's iterations, newest first (the one being planned excluded);
    ``final_adapter(run_id)`` gives a run's final adapter blob key (None when it has none),
    ``final_state(run_id)`` its final checkpoint's (None when it has none; no callable: no state at all).
    """
    a = cfg.algorithm
    trained = [it for it in history if it.status in TRAINED and it.run_id]
    steps, why_steps = _steps(cfg, trained)
    deployed_id = deployed.id if deployed is not None else None
    start, key, parent, parent_reward = "base", None, None, None
    state_run: str | None = None  # the run of this loop that trained the start
    own_runs = {str(it.run_id) for it in history if it.run_id}
    reason = "a fresh adapter (algorithm.warm_start = false)"
    if a.warm_start:
        if deployed is not None:
            start, key, reason = "deployed", deployed.blob_key, f"the deployed adapter {deployed.ref}"
            state_run = deployed.source_run_id if deployed.source_run_id in own_runs else None
        else:
            reason = "a fresh adapter (the deployment serves the base model)"
        last_gate = next((it for it in trained if it.baseline_version_id == deployed_id and gate_rewards(it.gate)),
                         None)
        promoted = next((it for it in trained if deployed_id and it.candidate_version_id == deployed_id
                         and gate_rewards(it.gate)), None)
        if last_gate is not None:
            parent_reward = gate_rewards(last_gate.gate)[0]  # type: ignore[index]
        elif promoted is not None:  # just promoted: its gate measured it as the candidate
            parent_reward = gate_rewards(promoted.gate)[1]  # type: ignore[index]
        if not trained and continue_from is not None:
            start, key, reason = "continue_from", continue_from.adapter_key, \
                f"algorithm.continue_from = {continue_from.ref}"
            parent_reward, state_run = None, continue_from.state_run
        elif a.lineage:
            line: list[tuple[LoopIteration, str]] = []  # rejected candidates against the deployed version
            for it in trained:
                if it.baseline_version_id != deployed_id:
                    break  # trained against another deployed version: a promotion or rollback since
                run_key = final_adapter(str(it.run_id)) if it.status == IterationStatus.REJECTED else None
                if run_key is not None:
                    line.append((it, run_key))
            worse = _worse_run(line[0][0], {it.number: it for it in trained}, cfg.gate.max_regression) if line else 0
            chosen: tuple[LoopIteration, str] | None = line[0] if line and worse <= a.through_worse else None
            if chosen is None:  # the newest ends too many worse ones in a row: the newest not-worse one
                worse = 0
                chosen = next((c for c in line if not_worse(c[0].gate, cfg.gate.max_regression)), None)
            if chosen is not None:
                it, run_key = chosen
                rewards = gate_rewards(it.gate)
                start, key, parent, state_run = "candidate", run_key, it.number, str(it.run_id)
                parent_reward = rewards[1] if rewards else None
                reason = f"the candidate of iteration {it.number} " + (
                    "(not worse than the deployed version on the gate)" if not worse else
                    f"(worse than the deployed version on the gate, {worse} of algorithm.through_worse = "
                    f"{a.through_worse} in a row)")
    temperature = extra_draws = lr_scale = None
    if parent_reward is not None and parent_reward >= a.late_reward:
        temperature, extra_draws, lr_scale = a.late_temperature, a.late_extra_draws, a.late_lr_scale
        late = ([f"rollouts at temperature {temperature:g}"] if temperature is not None else []) + \
               ([f"up to {extra_draws} extra draws a step"] if extra_draws is not None else []) + \
               ([f"lr x {lr_scale:g}"] if lr_scale is not None else [])
        if late:
            reason += f"; {' and '.join(late)} (start's gate reward {parent_reward:.3f} >= {a.late_reward:g})"
    if why_steps:
        reason += f"; {why_steps}"
    if key is None:
        return Plan(start, key, steps, parent, parent_reward, temperature, reason,
                    optimizer="a fresh adapter and AdamW", extra_draws=extra_draws, lr_scale=lr_scale)
    state_key, optimizer = _state(cfg, state_run, final_state)
    return Plan(start, key, steps, parent, parent_reward, temperature, reason, state_key, state_run, optimizer,
                extra_draws, lr_scale)


def _state(cfg: LoopConfig, run: str | None, final_state: Callable[[str], str | None] | None) -> tuple[str | None, str]:
    """(the blob key of the AdamW state restored with a trained start, what happens to the optimizer)."""
    a = cfg.algorithm
    fresh = f"a fresh AdamW at {a.continue_lr_scale:g} x lr, ramped up over {a.continue_warmup:g} of the steps"
    if not a.keep_optimizer:
        return None, f"{fresh} (algorithm.keep_optimizer = false)"
    if run is None:
        return None, f"{fresh}: no run of this loop trained the start (e.g. an adapter pushed by hand)"
    key = final_state(run) if final_state is not None else None
    if key is None:
        return None, f"{fresh}: run {run} left no final checkpoint"
    return key, f"the AdamW state of run {run} (moments and step count), at the plain lr"


def final_adapters(session: Session, org_id: str, run_ids: Sequence[str]) -> dict[str, str | None]:
    """Final adapter blob keys of the organisation's runs ``run_ids``."""
    if not run_ids:
        return {}
    rows = session.execute(select(TrainingRun.id, TrainingRun.final_adapter_key)
                           .where(TrainingRun.org_id == org_id, TrainingRun.id.in_(list(run_ids)))).all()
    return {r[0]: r[1] for r in rows}


def final_states(session: Session, org_id: str, run_ids: Sequence[str]) -> dict[str, str | None]:
    """Blob keys of the final checkpoints (adapter + optimizer state) of the organisation's runs ``run_ids``:
    a completed run's last checkpoint when it was written at its last step (the trainer writes one at the end of
    every run), else None."""
    if not run_ids:
        return {}
    rows = session.execute(select(TrainingRun.id, TrainingRun.status, TrainingRun.step,
                                  TrainingRun.last_checkpoint_step, TrainingRun.last_checkpoint_key)
                           .where(TrainingRun.org_id == org_id, TrainingRun.id.in_(list(run_ids)))).all()
    return {run_id: key if status == "completed" and at is not None and at == step else None
            for run_id, status, step, at, key in rows}


def resolve_continue_from(session: Session, org_id: str, deployment: Deployment, ref: str,
                          field: str = "algorithm.continue_from") -> ContinueFrom:
    """Check that ``ref`` is a candidate of this deployment's loop in this organisation; ``InvalidInput`` otherwise.

    A run id must be the run of an iteration of the deployment's loop; an adapter version
    (``NAME@N`` or ``av_...``) must be a version of the adapter the loop publishes for the
    deployment (named like it). Another organisation's id reads as not found.
    """
    ref = ref.strip()
    if is_id(ref, "run"):
        if _loop_run(session, org_id, deployment, ref) is None:
            raise InvalidInput(f"config field {field}: run {ref!r} is not a candidate of the loop of deployment "
                               f"{deployment.name!r} (a run of another deployment or organisation, or none)",
                               param=field)
        key = final_adapters(session, org_id, [ref]).get(ref)
        if key is None:
            raise InvalidInput(f"config field {field}: run {ref!r} has no final adapter", param=field)
        return ContinueFrom(ref, key, run_id=ref, state_run=ref)
    try:
        version = AdapterVersions(session).resolve(org_id, ref)
    except (NotFound, InvalidInput):
        raise InvalidInput(f"config field {field}: adapter version {ref!r} not found", param=field) from None
    if version.name != deployment.name:
        raise InvalidInput(f"config field {field}: {version.ref} is a candidate of another deployment; the loop "
                           f"of {deployment.name!r} continues only its own ({deployment.name}@N)", param=field)
    if version.base_model != deployment.base_model:
        raise InvalidInput(f"config field {field}: {version.ref} was trained on {version.base_model!r}, the "
                           f"deployment serves {deployment.base_model!r}", param=field)
    return ContinueFrom(ref, version.blob_key, version_id=version.id,
                        state_run=_loop_run(session, org_id, deployment, version.source_run_id))


def _loop_run(session: Session, org_id: str, deployment: Deployment, run_id: str | None) -> str | None:
    """``run_id`` when it is the run of an iteration of the deployment's loop in ``org_id``, else None."""
    if run_id is None:
        return None
    loop = session.scalar(select(Loop).where(Loop.org_id == org_id, Loop.deployment_id == deployment.id))
    found = None if loop is None else session.scalar(
        select(LoopIteration.id).where(LoopIteration.org_id == org_id, LoopIteration.loop_id == loop.id,
                                       LoopIteration.run_id == run_id))
    return run_id if found is not None else None


__all__ = [
    "TRAINED",
    "ContinueFrom",
    "Plan",
    "base_steps",
    "final_adapters",
    "final_states",
    "gate_rewards",
    "not_worse",
    "plan",
    "resolve_continue_from",
]

"""Publish-time checks of an environment: ``teachloop env check`` and ``env publish`` run these.

Each check passes, fails with a reason, or is skipped with a reason:

- ``loads`` -- the reference resolves to an ``Environment`` in this process.
- ``imports_offline`` -- in a fresh Python process whose sockets refuse to
  connect or resolve names, with an empty temporary ``HOME``, ``HF_HOME`` and
  ``XDG_CACHE_HOME``, the environment loads and lists its tasks. It runs
  *before* the environment is loaded here, so nothing this process downloads
  or caches can make it pass.
- ``deterministic`` -- the same seed gives the same task hashes twice here,
  and the same as in that fresh process (which has another hash seed).
- ``manifest`` -- for a package folder: a complete manifest (semver, license...).
- ``reference_top_score`` -- ``env.reference(task)`` earns the top of
  ``reward_range`` with no failure (skipped when no task has a reference).
- ``adversarial`` -- an empty reply, the reference padded with junk and a
  later wrong answer, and a 100,000-character reply neither fail the grader
  nor score above the middle of the reward range.
- ``reward_range`` -- every reward observed above lies inside ``reward_range``.
- ``concurrent_episodes`` -- groups of episodes run concurrently against an
  oracle completer (one per task, so tasks that share a prompt -- a secret in
  ``info`` -- each get their own reference) finish without failure, each
  scoring as its reference.

Checks never raise on a broken environment; they report it. They know
nothing of the store and make no network calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from teachloop.core.chat import Message, ToolSpec
from teachloop.core.rl import Completion, Task
from teachloop.core.sampling import SamplingParams
from teachloop.envs.base import Environment
from teachloop.envs.graders.base import Sample, Score
from teachloop.envs.rollout import rollout_group

Status = Literal["pass", "fail", "skip"]

_CHILD = """
import json, socket, sys
def _blocked(*a, **k):
    raise OSError("network access is blocked by teachloop env check")
for name in ("connect", "connect_ex", "sendto", "sendmsg"):
    setattr(socket.socket, name, _blocked)
socket.create_connection = _blocked
socket.getaddrinfo = _blocked
from teachloop.envs.registry import load
env = load(sys.argv[1])
print(json.dumps([t.hash for t in env.take(int(sys.argv[2]), seed=int(sys.argv[3]))]))
"""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    status: Status
    message: str = ""


@dataclass
class CheckReport:
    """All check outcomes for one environment reference."""

    target: str
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(r.status != "fail" for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        """The failed checks."""
        return [r for r in self.results if r.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"target": self.target, "ok": self.ok, "seconds": round(self.seconds, 3),
                "results": [{"name": r.name, "status": r.status, "message": r.message} for r in self.results]}


class OracleCompleter:
    """Replies with ``env.reference(task)`` for the task whose prompt opens the conversation.

    Give it one task (``OracleCompleter(env, [task])``) and it always answers that task's reference. Given
    several, it finds the task by its prompt; tasks that share a prompt but not a reference (the secret
    is in ``info``) cannot be told apart and get the fixed non-answer -- use one oracle per task for them.
    """

    def __init__(self, env: Environment, tasks: list[Task]):
        self.replies: dict[str, str | None] = {}
        ambiguous: set[str] = set()
        for t in tasks:
            key, reply = json.dumps([m.model_dump() for m in t.prompt]), env.reference(t)
            if key in self.replies and self.replies[key] != reply:
                ambiguous.add(key)
            self.replies[key] = reply
        for key in ambiguous:
            self.replies[key] = None
        self.only = env.reference(tasks[0]) if len(tasks) == 1 else None

    async def complete(self, messages: list[Message], params: SamplingParams, *, n: int = 1,
                       tools: list[ToolSpec] | None = None) -> list[Completion]:
        """``n`` copies of the reference for the task whose prompt opens ``messages``."""
        await asyncio.sleep(0)
        reply = self.only
        for k in range(len(messages), 0, -1):
            if reply is not None:
                break
            reply = self.replies.get(json.dumps([m.model_dump() for m in messages[:k]]))
        text = reply if reply is not None else "I do not know."
        return [Completion(message=Message(role="assistant", content=text)) for _ in range(n)]


def junk_probes(reference: str, answer: str | None) -> dict[str, str]:
    """The adversarial replies: empty, padded reference with a later wrong answer, very long."""
    wrong = "7919" if answer != "7919" else "7907"
    padded = (f"Lorem ipsum {wrong} dolor sit amet. {reference}\nWait, let me reconsider. "
              f"answer: {wrong} <answer>{wrong}</answer> \\boxed{{{wrong}}} {{\"junk\": {wrong}}} {wrong}")
    long = ("lorem ipsum " + wrong + " dolor ") * (100_000 // (len(wrong) + 19) + 1)
    return {"empty": "", "padded": padded, "long": long[:100_000]}


#: Cache locations the fresh process must not inherit (it gets an empty temporary home instead).
_CACHE_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "XDG_DATA_HOME")


def _subprocess_hashes(ref: str, n: int, seed: int, timeout_s: float) -> tuple[list[str] | None, str]:
    with tempfile.TemporaryDirectory(prefix="teachloop-check-home-") as home:
        env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARS}
        env.update({"PYTHONHASHSEED": "12345", "NO_PROXY": "*", "HF_HUB_OFFLINE": "1", "HOME": home,
                    "HF_HOME": str(Path(home) / "hf"), "XDG_CACHE_HOME": str(Path(home) / "cache")})
        return _run_child(ref, n, seed, timeout_s, env)


def _run_child(ref: str, n: int, seed: int, timeout_s: float, env: dict[str, str]) -> tuple[list[str] | None, str]:
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, ref, str(n), str(seed)], capture_output=True, text=True,
                             timeout=timeout_s, env=env, cwd=os.getcwd())
    except subprocess.TimeoutExpired:
        return None, f"loading took more than {timeout_s:.0f}s with the network blocked"
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"failed with the network blocked: {tail[:300]}"
    try:
        return list(json.loads(out.stdout.strip().splitlines()[-1])), ""
    except (json.JSONDecodeError, IndexError):
        return None, f"printed no task list: {out.stdout[-200:]!r}"


async def _grade(env: Environment, task: Task, text: str) -> Score:
    try:
        return await env.score(Sample.of(task, text))
    except Exception as err:
        return Score.failed(f"{type(err).__name__}: {err}")


async def _scoring_checks(env: Environment, tasks: list[Task], out: list[CheckResult], seen: list[float]) -> None:
    lo, hi = env.reward_range
    refs = [(t, r) for t in tasks if (r := env.reference(t)) is not None]
    if not refs:
        out.append(CheckResult("reference_top_score", "skip", "no task has a reference answer"))
    else:
        bad = []
        for task, ref in refs:
            s = await _grade(env, task, ref)
            seen.append(s.value)
            if s.failure or s.value < hi - 1e-6:
                bad.append(f"{task.id}: {s.value:g}" + (f" ({s.failure.message})" if s.failure else ""))
        out.append(CheckResult("reference_top_score", "fail" if bad else "pass",
                               f"reference scored below {hi:g}: " + "; ".join(bad[:3]) if bad else f"{len(refs)} tasks"))
    bad = []
    for task in tasks[:4]:
        for probe, text in junk_probes(env.reference(task) or "", task.answer).items():
            started = time.perf_counter()
            s = await _grade(env, task, text)
            seen.append(s.value)
            if s.failure:
                bad.append(f"{probe} reply crashed the grader on {task.id}: {s.failure.message[:150]}")
            elif s.value > lo + 0.5 * (hi - lo):
                bad.append(f"{probe} reply scored {s.value:g} on {task.id}")
            elif time.perf_counter() - started > 10:
                bad.append(f"{probe} reply took {time.perf_counter() - started:.0f}s to grade on {task.id}")
    out.append(CheckResult("adversarial", "fail" if bad else "pass", "; ".join(bad[:3]) if bad else "empty, padded, long"))


async def _concurrency_check(env: Environment, tasks: list[Task], seen: list[float]) -> CheckResult:
    groups = list(await asyncio.gather(*(rollout_group(env, t, OracleCompleter(env, [t]), size=4, timeout_s=60)
                                         for t in tasks[:4])))
    failures = [f"{t.task_id}: {t.failure.kind}: {t.failure.message[:150]}" for g in groups for t in g.trajectories if t.failure]
    if failures:
        return CheckResult("concurrent_episodes", "fail", "; ".join(failures[:3]))
    seen.extend(r for g in groups for r in g.rewards)
    if env.group_grader is None:
        hi = env.reward_range[1]
        uneven = [g.task.id for g in groups if len(set(g.rewards)) > 1]
        low = [g.task.id for g in groups if env.reference(g.task) is not None and min(g.rewards) < hi - 1e-6]
        if uneven or low:
            return CheckResult("concurrent_episodes", "fail", "run concurrently, reference replies scored "
                               f"differently or below {hi:g} on {(uneven or low)[:3]} (state shared between episodes?)")
    return CheckResult("concurrent_episodes", "pass", f"{sum(len(g.trajectories) for g in groups)} episodes")


async def check_environment(
    ref: str, *, n_tasks: int = 8, seed: int = 0, offline: bool = True, subprocess_timeout_s: float = 180.0
) -> CheckReport:
    """Run every check on the environment ``ref`` names (see the module docstring).

    ``offline=False`` skips the fresh-process check (tests use it for speed;
    ``env check`` and ``env publish`` never do).
    """
    from teachloop.envs.manifest import build_manifest
    from teachloop.envs.registry import load

    report = CheckReport(ref)
    results = report.results
    started = time.perf_counter()
    child: list[str] | None = None
    offline_result = CheckResult("imports_offline", "skip", "not requested")
    if offline:  # first: nothing loaded or cached by this process can help it
        child, why = await asyncio.to_thread(_subprocess_hashes, ref, n_tasks, seed, subprocess_timeout_s)
        offline_result = CheckResult("imports_offline", "pass" if child is not None else "fail",
                                     why or "sockets blocked, empty HOME and caches")
    try:
        env = load(ref)
        tasks = env.take(n_tasks, seed)
        if not tasks:
            raise ValueError(f"tasks(seed={seed}) yielded no task")
        results.append(CheckResult("loads", "pass", f"{type(env).__name__}, {len(tasks)} tasks"))
    except Exception as err:
        results.append(CheckResult("loads", "fail", f"{type(err).__name__}: {err}"))
        results.append(offline_result)
        names = ["deterministic", "manifest", "reference_top_score", "adversarial", "reward_range",
                 "concurrent_episodes"]
        results.extend(CheckResult(n, "skip", "the environment does not load") for n in names)
        report.seconds = time.perf_counter() - started
        return report
    hashes = [t.hash for t in tasks]
    results.append(offline_result)
    again = [t.hash for t in env.take(n_tasks, seed)]
    if again != hashes:
        results.append(CheckResult("deterministic", "fail", "the same seed gave different tasks in one process"))
    elif child is not None and child != hashes:
        results.append(CheckResult("deterministic", "fail", "the same seed gave different tasks in another process "
                                   "(iteration over a set? the global RNG?)"))
    else:
        results.append(CheckResult("deterministic", "pass", f"seed {seed}, {len(hashes)} task hashes"))
    root = Path(ref.partition("?")[0])
    if root.is_dir():
        try:
            m = build_manifest(root, env)
            results.append(CheckResult("manifest", "pass", m.ref))
        except Exception as err:
            results.append(CheckResult("manifest", "fail", str(err)))
    else:
        results.append(CheckResult("manifest", "skip", "not a package folder"))
    seen: list[float] = []
    try:
        await _scoring_checks(env, tasks, results, seen)
        results.append(await _concurrency_check(env, tasks, seen))
    except Exception as err:  # a bug in the environment outside its grader
        results.append(CheckResult("concurrent_episodes", "fail", f"{type(err).__name__}: {err}"))
    lo, hi = env.reward_range
    outside = [v for v in seen if not lo - 1e-9 <= v <= hi + 1e-9]
    results.insert(-1, CheckResult("reward_range", "fail" if outside else "pass",
                                   f"rewards {outside[:3]} outside [{lo:g}, {hi:g}]" if outside else f"[{lo:g}, {hi:g}]"))
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["CheckReport", "CheckResult", "OracleCompleter", "check_environment", "junk_probes"]

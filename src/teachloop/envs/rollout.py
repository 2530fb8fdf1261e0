"""Rollouts: run episodes of an environment against a ``ChatCompleter``, concurrently, failures as data.

- ``run_episode`` plays one task to the end: model turn, then (unless
  ``env.is_done``) the tools the model called or ``env.env_response``, until
  the environment says done or ``max_turns`` is reached; then ``env.score``. Every ``Completion.turn``
  (token ids and sampler logprobs, when the completer is the engine) is kept
  in ``Trajectory.turns`` in order, so training never re-tokenises.
- ``rollout_group`` runs ``size`` episodes of one task concurrently. The first
  turn is requested once with ``n=size`` (the engine prefills the shared
  prompt once); later turns are per episode. A ``group_grader`` then scores
  the group; each trajectory keeps its own grader's value in
  ``scores["independent"]``.
- ``rollout`` runs many groups with bounded concurrency.

Any exception inside the completer, the environment, a tool or a grader, and
a per-episode timeout, becomes ``Trajectory.failure`` (kind, message) with
reward 0 on that trajectory only; the rest of the group and run go on. So do
contract breaches: an ``env_response`` that returns anything but ``None`` or
a list of ``Message``, a ``score`` override that returns anything but a
``Score``, a non-finite reward, and any error while assembling the
trajectory. Cancellation is never swallowed. This module knows nothing of tokenisers,
training or storage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import Any

from teachloop.core.chat import Message
from teachloop.core.rl import (
    ChatCompleter,
    Completion,
    Failure,
    FailureKind,
    ModelTurn,
    Task,
    Trajectory,
    TrajectoryGroup,
)
from teachloop.core.sampling import SamplingParams
from teachloop.envs.base import Environment
from teachloop.envs.graders.base import Sample, Score


class _Fail(Exception):
    def __init__(self, kind: FailureKind, err: BaseException | str):
        text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        super().__init__(text)
        self.failure = Failure(kind=kind, message=text[:2000])


_Shared = tuple["asyncio.Future[list[Completion]]", int]


async def _model_turn(
    env: Environment, completer: ChatCompleter, messages: list[Message], params: SamplingParams, shared: _Shared | None
) -> Completion:
    completion: Any = None
    try:
        if shared is not None:
            future, index = shared
            done = await asyncio.shield(future)
            if index < len(done):
                completion = done[index]
        if completion is None:
            specs = [t.spec for t in env.tools] or None
            [completion] = (await completer.complete(messages, params, n=1, tools=specs))[:1]
    except (asyncio.CancelledError, _Fail):
        raise
    except Exception as err:
        raise _Fail("model", err) from err
    if not isinstance(completion, Completion):
        raise _Fail("model", f"the completer returned {type(completion).__name__}; expected a Completion")
    return completion


async def _run_tools(env: Environment, task: Task, message: Message, state: dict[str, Any]) -> list[Message]:
    tools = {t.name: t for t in env.tools}
    out = []
    for call in message.tool_calls:
        found = tools.get(call.name)
        if found is None:
            text = f"error: unknown tool {call.name!r}; available: {sorted(tools)}"
        else:
            try:
                text = await found.call(call.arguments, task=task, state=state)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                raise _Fail("tool", f"tool {call.name!r} raised {type(err).__name__}: {err}") from err
        out.append(Message(role="tool", content=text, tool_call_id=call.id, name=call.name))
    return out


async def _play(
    env: Environment, task: Task, completer: ChatCompleter, params: SamplingParams,
    messages: list[Message], turns: list[ModelTurn], meta: dict[str, Any], shared: _Shared | None,
) -> None:
    try:
        state = env.initial_state(task)
    except Exception as err:
        raise _Fail("env", err) from err
    for turn_index in range(env.max_turns):
        completion = await _model_turn(env, completer, messages, params, shared if turn_index == 0 else None)
        message = completion.message
        if message.role != "assistant":
            message = message.model_copy(update={"role": "assistant"})
        messages.append(message)
        if completion.turn is not None:
            turns.append(completion.turn)
        meta["model_turns"] = turn_index + 1
        try:
            done = env.is_done(task, list(messages), state)
        except Exception as err:
            raise _Fail("env", err) from err
        if done:
            meta["stop"] = "done"
            return
        if message.tool_calls and env.tools:
            meta["tool_calls"] = meta.get("tool_calls", 0) + len(message.tool_calls)
            messages.extend(await _run_tools(env, task, message, state))
            continue
        try:
            reply = await env.env_response(task, list(messages), state)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise _Fail("env", err) from err
        if reply is None:
            meta["stop"] = "done"
            return
        if not isinstance(reply, list | tuple) or not all(isinstance(m, Message) for m in reply):
            got = type(reply).__name__ if not isinstance(reply, list | tuple) else \
                f"a list holding {sorted({type(m).__name__ for m in reply if not isinstance(m, Message)})}"
            raise _Fail("env", f"env_response returned {got}; expected None or a list of Message")
        messages.extend(reply)
    meta["stop"] = "max_turns"


async def _score(env: Environment, sample: Sample) -> Score:
    try:
        score = await env.score(sample)
    except asyncio.CancelledError:
        raise
    except Exception as err:
        return Score.failed(f"{type(err).__name__}: {err}")
    if not isinstance(score, Score):
        return Score.failed(f"{type(env).__name__}.score returned {type(score).__name__}; expected a Score", kind="env")
    if not math.isfinite(score.value):
        return Score.failed(f"{type(env).__name__}.score gave a non-finite reward {score.value}")
    return score


async def run_episode(
    env: Environment,
    task: Task,
    completer: ChatCompleter,
    *,
    params: SamplingParams | None = None,
    timeout_s: float | None = None,
    _shared: _Shared | None = None,
) -> Trajectory:
    """Play and score one episode of ``task``; never raises except on cancellation."""
    params = params or env.sampling
    messages: list[Message] = list(task.prompt)
    turns: list[ModelTurn] = []
    meta: dict[str, Any] = {"model_turns": 0}
    started = time.perf_counter()
    failure: Failure | None = None
    try:
        async with asyncio.timeout(timeout_s):
            await _play(env, task, completer, params, messages, turns, meta, _shared)
    except _Fail as err:
        failure = err.failure
    except TimeoutError:
        failure = Failure(kind="timeout", message=f"episode exceeded {timeout_s}s")
    except Exception as err:  # outside the guarded calls: still this episode's failure, never the group's
        failure = Failure(kind="env", message=f"{type(err).__name__}: {err}"[:2000])
    score = Score(value=0.0)
    if failure is None:
        score = await _score(env, Sample(task, tuple(messages), tuple(turns)))
        failure = score.failure
    if score.details:
        meta["details"] = score.details
    meta.setdefault("stop", "failure")
    meta["seconds"] = round(time.perf_counter() - started, 4)
    try:
        return Trajectory(
            task_id=task.id, task_hash=task.hash, messages=tuple(messages), turns=tuple(turns),
            reward=0.0 if failure else score.value, scores=dict(score.components), failure=failure, metadata=meta,
        )
    except Exception as err:  # e.g. a score component or turn that does not validate
        return Trajectory(
            task_id=task.id, task_hash=task.hash, messages=tuple(m for m in messages if isinstance(m, Message)),
            reward=0.0, failure=Failure(kind="env", message=f"building the trajectory failed: "
                                                             f"{type(err).__name__}: {err}"[:2000]),
            metadata={"stop": "failure", "seconds": meta["seconds"]},
        )


async def _group_scores(env: Environment, task: Task, trajectories: list[Trajectory]) -> list[Trajectory]:
    grader = env.group_grader
    ok = [i for i, t in enumerate(trajectories) if t.failure is None]
    if grader is None or not ok:
        return trajectories
    try:
        scores = list(await grader.grade_group([Sample.from_trajectory(task, trajectories[i]) for i in ok]))
        if len(scores) != len(ok) or not all(isinstance(s, Score) for s in scores):
            raise TypeError(f"grade_group returned {len(scores)} items for {len(ok)} samples, expected Scores")
    except asyncio.CancelledError:
        raise
    except Exception as err:
        scores = [Score.failed(f"group grader {grader.name!r}: {type(err).__name__}: {err}")] * len(ok)
    scores = [s if math.isfinite(s.value) else Score.failed(f"group grader {grader.name!r} gave a non-finite "
                                                             f"reward {s.value}") for s in scores]
    out = list(trajectories)
    for i, score in zip(ok, scores, strict=True):
        t = out[i]
        components = {**t.scores, "independent": t.reward, grader.name: score.value}
        out[i] = t.model_copy(update={"reward": 0.0 if score.failure else score.value, "scores": components,
                                       "failure": score.failure})
    return out


async def rollout_group(
    env: Environment,
    task: Task,
    completer: ChatCompleter,
    *,
    size: int = 4,
    params: SamplingParams | None = None,
    timeout_s: float | None = None,
    share_first_turn: bool = True,
) -> TrajectoryGroup:
    """``size`` concurrent episodes of ``task``, group-scored when the env has a ``group_grader``."""
    if size < 1:
        raise ValueError("size must be >= 1")
    params = params or env.sampling
    shared: asyncio.Future[list[Completion]] | None = None
    if share_first_turn and size > 1:
        specs = [t.spec for t in env.tools] or None
        shared = asyncio.ensure_future(completer.complete(list(task.prompt), params, n=size, tools=specs))
    try:
        trajectories = await asyncio.gather(*(
            run_episode(env, task, completer, params=params, timeout_s=timeout_s,
                        _shared=(shared, i) if shared is not None else None)
            for i in range(size)
        ))
    finally:
        if shared is not None and not shared.done():
            shared.cancel()
        elif shared is not None and not shared.cancelled():
            shared.exception()  # mark retrieved; each episode already recorded it
    return TrajectoryGroup(task=task, trajectories=tuple(await _group_scores(env, task, list(trajectories))))


async def rollout(
    env: Environment,
    tasks: Iterable[Task],
    completer: ChatCompleter,
    *,
    group_size: int = 1,
    params: SamplingParams | None = None,
    timeout_s: float | None = None,
    max_concurrent_groups: int = 16,
) -> list[TrajectoryGroup]:
    """One group per task, at most ``max_concurrent_groups`` at a time, in task order."""
    limit = asyncio.Semaphore(max_concurrent_groups)

    async def one(task: Task) -> TrajectoryGroup:
        async with limit:
            return await rollout_group(env, task, completer, size=group_size, params=params, timeout_s=timeout_s)

    return list(await asyncio.gather(*(one(t) for t in tasks)))


__all__ = ["rollout", "rollout_group", "run_episode"]

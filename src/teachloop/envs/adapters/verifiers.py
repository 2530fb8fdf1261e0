"""verifiers v1 tasksets as teachloop environments: ``vf:<taskset-id>?<config>``.

Needs the optional extra (``pip install 'teachloop[verifiers]'``, i.e.
``verifiers>=0.4``), imported lazily; ``import verifiers.v1`` takes seconds.
The taskset is found the way verifiers finds it (``taskset_class(id)``: an
installed module exporting one ``Taskset`` subclass in ``__all__``) and
built with its config class from the query parameters.

Each v1 ``Task`` becomes a teachloop ``Task`` whose prompt is the v1
``system_prompt`` + ``prompt``, whose answer is the data's ``answer`` field
when it has one, and whose ``info["vf"]`` is the v1 ``TaskData`` as JSON
(rebuilt for scoring). Scoring builds a v1 ``Trace`` from the conversation
and calls ``Task.score(trace)`` without a runtime, so the task's
``@vf.reward`` functions and judges run exactly as in verifiers; the reward
is ``trace.reward`` (the weighted sum; ``reward_range`` assumes each reward
lies in [0, 1], so its top is the sum of the weights). Limits, stated: tasks that need a
container (``NEEDS_CONTAINER``), harnesses, MCP toolsets and runtime-only
rewards are not supported (the latter are skipped by verifiers itself).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from teachloop.core.chat import Message, Role
from teachloop.core.errors import ConfigurationError, InvalidInput
from teachloop.core.rl import Task
from teachloop.envs.adapters.reasoning_gym import parse_value
from teachloop.envs.base import Environment
from teachloop.envs.graders.base import Grader, Sample, Score


def _vf() -> Any:
    try:
        import verifiers.v1 as vf
    except ImportError as err:
        raise ConfigurationError(
            f"verifiers v1 is not available ({err}); install the extra: pip install 'teachloop[verifiers]'"
        ) from None
    return vf


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(getattr(p, "text", "")) for p in content or [])


_MODULE = re.compile(r"^[a-z][a-z0-9_]{0,99}$")


def _module_name(taskset_id: str) -> str:
    """The module verifiers imports for ``taskset_id`` (hub ids ``owner/name@version`` become ``name``)."""
    return taskset_id.rsplit("/", 1)[-1].split("@", 1)[0].replace("-", "_").lower()


def taskset_installed(taskset_id: str) -> bool:
    """Whether ``taskset_id`` is a taskset verifiers ships, or a top-level module of an installed distribution
    that requires verifiers -- decided without importing the module (untrusted references use this)."""
    module = _module_name(taskset_id)
    if not _MODULE.match(module):
        return False
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec(f"verifiers.v1.tasksets.{module}") is not None:
            return True
    for dist_name in importlib.metadata.packages_distributions().get(module, []):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            requires = importlib.metadata.distribution(dist_name).requires or []
            if any(re.match(r"^verifiers(?![A-Za-z0-9_.-])", r.strip(), re.IGNORECASE) for r in requires):
                return True
    return False


class _VerifiersGrader(Grader):
    name = "verifiers"
    timeout_s = 120.0

    def __init__(self, env: VerifiersTaskset):
        self.env = env

    async def ascore(self, sample: Sample) -> Score:
        vf = _vf()
        from verifiers.v1.graph import MessageNode
        from verifiers.v1.types import AssistantMessage, SystemMessage, ToolCall, ToolMessage, UserMessage

        task_cls = self.env.taskset.task_type()
        data = task_cls.data_type().model_validate(sample.task.info["vf"])
        vtask = task_cls(data, self.env.taskset.config.task)
        nodes = []
        for i, m in enumerate(sample.messages):
            msg: Any
            if m.role == "system":
                msg = SystemMessage(content=m.content)
            elif m.role == "user":
                msg = UserMessage(content=m.content)
            elif m.role == "tool":
                msg = ToolMessage(content=m.content, tool_call_id=m.tool_call_id or "", name=m.name)
            else:
                calls = [ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls] or None
                msg = AssistantMessage(content=m.content, tool_calls=calls)
            nodes.append(MessageNode(parent=i - 1 if i else None, message=msg, sampled=m.role == "assistant"))
        trace = vf.Trace(task=vf.TraceTask(type=task_cls.__name__, data=data, key=vtask.key, hash=vtask.hash),
                         agent=vf.AgentInfo(config=vf.AgentConfig()), nodes=nodes)
        await vtask.score(trace)
        components = {k: float(r.score) for k, r in trace.rewards.items() if r is not None}
        return Score(value=float(trace.reward), components=components or {self.name: float(trace.reward)})


class VerifiersTaskset(Environment):
    """A verifiers v1 taskset; rewards by the taskset's own ``Task.score`` (see the module docstring)."""

    name = "verifiers"
    version = "1.0.0"

    def __init__(self, taskset_id: str, **config: Any):
        _vf()
        from verifiers.v1.utils.loaders import taskset_class, taskset_config_type

        try:
            cls = taskset_class(taskset_id)
            self.taskset = cls(taskset_config_type(taskset_id).model_validate({"id": taskset_id, **config}))
        except (ModuleNotFoundError, TypeError, AttributeError, ValueError) as err:
            raise InvalidInput(f"vf:{taskset_id}: {err}") from None
        if getattr(cls.task_type(), "NEEDS_CONTAINER", False):
            raise ConfigurationError(f"vf:{taskset_id} needs a container runtime, which teachloop does not run")
        self.taskset_id = taskset_id
        self.grader = _VerifiersGrader(self)
        first = next(iter(self.taskset.take(1)), None)
        if first is not None:  # rewards are weighted and summed; assume each lies in [0, 1]
            self.reward_range = (0.0, float(sum(getattr(fn, "_vf_weight", 1.0) for fn in first.hooks("reward"))))

    @classmethod
    def from_uri(cls, uri: str, **kwargs: Any) -> VerifiersTaskset:
        """The environment named by ``vf:<taskset-id>?<config>``; ``kwargs`` are config fields, merged over the query."""
        parts = urlsplit(uri.removeprefix("vf:"))
        return cls(parts.path, **{**{k: parse_value(v) for k, v in parse_qsl(parts.query)}, **kwargs})

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        view = self.taskset
        if seed and view.bounded:
            view = view.shuffle(seed)
        for vtask in view:
            data = vtask.data
            prompt: list[Message] = []
            if data.system_prompt:
                prompt.append(Message(role="system", content=data.system_prompt))
            if isinstance(data.prompt, str):
                prompt.append(Message(role="user", content=data.prompt))
            else:
                for m in data.prompt or []:
                    role: Role = m.role if m.role in ("system", "user", "assistant") else "user"
                    prompt.append(Message(role=role, content=_content(m.content)))
            answer = getattr(data, "answer", None)
            yield Task(id=str(data.id or f"vf-{self.taskset_id}-{data.idx}"), prompt=tuple(prompt),
                       answer=None if answer is None else str(answer), info={"vf": data.model_dump(mode="json")})


__all__ = ["VerifiersTaskset", "taskset_installed"]

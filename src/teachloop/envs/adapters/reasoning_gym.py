"""reasoning-gym datasets as teachloop environments: ``rg:basic_arithmetic?seed=1&size=500``.

The URI names a registered dataset; ``seed`` and ``size`` and any other
query parameters become its config (values are read as JSON where they
parse, lists for comma-separated values of tuple/list fields, else strings).
Without ``seed`` in the URI, ``tasks(seed)`` builds the dataset with that seed.
Keyword arguments (``load("rg:x?size=5", seed=3)``) are merged over the query.
The config is checked when the environment is built -- ``size`` must be a
positive integer and the dataset is built once, so reasoning-gym's own
validation fails there, as ``InvalidInput``, not at the first task.
Each entry becomes a task: reasoning-gym's default system prompt (asking for
``<answer>…</answer>``) plus the question; ``info`` stores only where the
entry comes from (dataset, seed, size, config, index), since the generator is
deterministic. Scoring re-derives the entry and calls the dataset's own
``score_answer`` on the *extracted* answer (``<answer>`` tags, else
``final_answer``), because the raw reply scores near 0 and a padded oracle can
earn substring credit. Needs ``pip install reasoning-gym`` (imported lazily);
``composite`` datasets are not supported by URI.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from teachloop.core.errors import ConfigurationError, InvalidInput, NotFound
from teachloop.core.rl import Task
from teachloop.envs.base import Environment, system, user
from teachloop.envs.extract import final_answer
from teachloop.envs.graders.base import Grader, Sample, Score


def _rg() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigurationError("reasoning-gym is not installed: pip install reasoning-gym") from None
    return reasoning_gym


def parse_value(raw: str) -> Any:
    """A query value as JSON if it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """``rg:name?k=v&...`` -> (name, {k: value})."""
    if not uri.startswith("rg:"):
        raise InvalidInput(f"not a reasoning-gym URI: {uri!r} (expected rg:<dataset>?seed=..&size=..)")
    parts = urlsplit(uri[3:])
    return parts.path, {k: parse_value(v) for k, v in parse_qsl(parts.query, keep_blank_values=True)}


@lru_cache(maxsize=32)
def _dataset(name: str, config_json: str) -> Any:
    return _rg().create_dataset(name, **json.loads(config_json))


class _RGGrader(Grader):
    name = "reasoning_gym"
    blocking = True

    def score(self, sample: Sample) -> Score:
        from reasoning_gym.utils import extract_answer

        src = sample.task.info["rg"]
        ds = _dataset(src["dataset"], json.dumps(src["config"], sort_keys=True))
        entry = ds[src["index"]]
        answer = extract_answer(sample.completion) or final_answer(sample.completion)
        value = float(ds.score_answer(answer=answer, entry=entry))
        return Score(value=min(max(value, 0.0), 1.0), details={"extracted": (answer or "")[:200]})


class ReasoningGym(Environment):
    """A reasoning-gym procedural dataset, scored by its own ``score_answer`` after answer extraction."""

    name = "reasoning_gym"
    version = "1.0.0"
    grader = _RGGrader()
    sampling = Environment.sampling.model_copy(update={"max_tokens": 512})

    def __init__(self, dataset: str, **config: Any):
        _rg()
        from reasoning_gym.factory import DATASETS as datasets
        if dataset not in datasets or dataset == "composite":
            raise NotFound(f"reasoning-gym has no dataset {dataset!r} usable by URI (it has {len(datasets)}; "
                           "see reasoning_gym.factory.DATASETS)")
        config_cls = datasets[dataset][1]
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise InvalidInput(f"rg:{dataset} has no config field(s) {unknown}; fields: {sorted(fields)}")
        for key, value in list(config.items()):
            default = fields[key].default
            if isinstance(default, tuple | list) and isinstance(value, str):
                config[key] = value.split(",")
        self.dataset, self.config = dataset, config
        self.config.setdefault("size", 500)
        size = self.config["size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidInput(f"rg:{dataset}: size must be a positive integer, got {size!r}", param="size")
        self._build(self.config.get("seed", 0))  # a bad config fails here, naming the field, not at the first task

    def _build(self, seed: Any) -> Any:
        config = {"seed": seed, **self.config}
        try:
            ds = _dataset(self.dataset, json.dumps(config, sort_keys=True))
            len(ds)
        except (TypeError, ValueError, AssertionError, KeyError) as err:
            raise InvalidInput(f"rg:{self.dataset}: bad config {config}: {type(err).__name__}: {err}") from None
        return ds

    @classmethod
    def from_uri(cls, uri: str, **kwargs: Any) -> ReasoningGym:
        """The environment named by ``rg:<dataset>?<config>``; ``kwargs`` are config fields, merged over the query."""
        name, config = parse_uri(uri)
        return cls(name, **{**config, **kwargs})

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        config = {"seed": seed, **self.config}
        ds = self._build(seed)
        from reasoning_gym.utils import SYSTEM_PROMPTS

        prompt = SYSTEM_PROMPTS["default"]
        for i in range(len(ds)):
            entry = ds[i]
            answer = entry.get("answer")
            yield Task(id=f"rg-{self.dataset}-{config['seed']}-{i}", prompt=(system(prompt), user(str(entry["question"]))),
                       answer=None if answer is None else str(answer),
                       info={"rg": {"dataset": self.dataset, "config": config, "index": i}})

    def reference(self, task: Task) -> str | None:
        return None if task.answer is None else f"<answer>{task.answer}</answer>"


__all__ = ["ReasoningGym", "parse_uri", "parse_value"]

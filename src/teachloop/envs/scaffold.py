"""``teachloop env new NAME``: scaffold an environment package that passes ``env check`` as generated.

The package is a normal Python distribution: ``pyproject.toml`` with the
``teachloop.environments`` entry point and the ``[tool.teachloop.environment]``
manifest table, ``src/<module>/env.py`` (one environment with its grader,
one screen) and ``tests/test_env.py``. Nothing is installed or run.
"""

from __future__ import annotations

import re
from pathlib import Path

from teachloop.core.errors import Conflict, InvalidInput

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

PYPROJECT = '''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "A teachloop environment: reverse a word."
license = "Apache-2.0"
requires-python = ">=3.11"
dependencies = ["teachloop"]

[project.entry-points."teachloop.environments"]
{name} = "{module}.env:{cls}"

[tool.teachloop.environment]
price = {{ amount_minor = 0, currency = "USD" }}
resources = {{ cpu = 1, memory_mb = 256 }}
requires_network = false
tags = ["example"]

[tool.pytest.ini_options]
pythonpath = ["src"]
'''

ENV = '''"""{cls}: reverse a word. Reward 1.0 when the final answer is the reversed word, else 0.0.

Edit ``tasks`` (deterministic for a seed: use ``random.Random(seed)``) and the
grader; keep the environment and its grader on one screen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from teachloop.core.rl import Task
from teachloop.envs import Environment, ExactMatch, system, user

WORDS = ["teacher", "gradient", "reward", "episode", "adapter", "sampler", "lattice", "harbor"]


class {cls}(Environment):
    """Reverse a word; graded by exact match of the final answer."""

    name = "{name}"
    version = "0.1.0"
    grader = ExactMatch(case_sensitive=False)

    def __init__(self, size: int | None = None):
        self.size = size

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        rng = random.Random(f"{name}:{{seed}}")
        i = 0
        while self.size is None or i < self.size:
            word = rng.choice(WORDS)
            prompt = (system("End with a line 'answer: <word>'."), user(f"Reverse the word {{word!r}}."))
            yield Task(id=f"{name}-{{seed}}-{{i}}", prompt=prompt, answer=word[::-1])
            i += 1
'''

TEST = '''import asyncio

from {module}.env import {cls}
from teachloop.envs import Sample


def test_same_seed_same_tasks():
    env = {cls}()
    assert [t.hash for t in env.take(5, seed=1)] == [t.hash for t in env.take(5, seed=1)]


def test_reference_gets_top_score_and_wrong_answer_zero():
    env = {cls}()
    task = env.take(1)[0]
    assert asyncio.run(env.score(Sample.of(task, f"answer: {{task.answer}}"))).value == 1.0
    assert asyncio.run(env.score(Sample.of(task, "answer: nope"))).value == 0.0
'''

README = '''# {name}

A teachloop environment. Check it, evaluate it, publish it:

    teachloop env check .
    teachloop env eval . --model <model> -n 50
    teachloop env publish .
'''


def scaffold(name: str, dest: Path | None = None) -> Path:
    """Write the package for ``name`` into ``dest`` (default ``./name``); returns the folder."""
    if not _NAME.match(name):
        raise InvalidInput(f"environment name {name!r}: use lower case letters, digits, '-' or '_', starting with a letter")
    root = dest or Path(name)
    if root.exists() and any(root.iterdir()):
        raise Conflict(f"{root} already exists and is not empty")
    module = name.replace("-", "_")
    cls = "".join(p.capitalize() for p in re.split(r"[-_]", name)) or "Env"
    fill = {"name": name, "module": module, "cls": cls}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{module}/__init__.py": '"""{name}: a teachloop environment."""\n',
        f"src/{module}/env.py": ENV,
        "tests/test_env.py": TEST,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fill), encoding="utf-8")
    return root


__all__ = ["scaffold"]

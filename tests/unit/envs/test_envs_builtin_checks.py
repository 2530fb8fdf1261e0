"""Every built-in passes ``env check``; the offline check runs first in a clean home; arithmetic's held-out split."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from teachloop.envs import Arithmetic, GuessNumber, OracleCompleter, check_environment, load
from teachloop.envs.builtin.arithmetic import TEST_FRACTION, split_of


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "json_extract", "guess_number"])
def test_every_builtin_passes_every_check(name: str) -> None:
    report = asyncio.run(check_environment(name))
    assert report.ok, report.to_dict()
    statuses = {r.name: r.status for r in report.results}
    assert statuses.pop("manifest") == "skip" and set(statuses.values()) == {"pass"}, statuses


def test_the_oracle_answers_per_task_when_tasks_share_a_prompt() -> None:
    env = GuessNumber(high=100)
    tasks = env.take(4)
    assert len({t.prompt for t in tasks}) == 1 and len({t.answer for t in tasks}) > 1  # the secret is in info
    for task in tasks:
        [reply] = asyncio.run(OracleCompleter(env, [task]).complete(list(task.prompt), env.sampling))
        assert reply.message.content == f"answer: {task.answer}"
    [shared] = asyncio.run(OracleCompleter(env, tasks).complete(list(tasks[0].prompt), env.sampling))
    assert shared.message.content == "I do not know."  # ambiguous by prompt: never another task's answer


def test_the_offline_check_runs_first_in_a_fresh_home(tmp_path: Path) -> None:
    log = tmp_path / "homes.log"
    env_py = tmp_path / "homes.py"
    env_py.write_text(
        "import os\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(os.environ.get('HOME', '') + '|' + os.environ.get('HF_HOME', '') + '|' "
        "+ os.environ.get('XDG_CACHE_HOME', '') + '\\n')\n"
        "from teachloop.envs import Arithmetic\n"
        "class Homes(Arithmetic):\n    name = 'homes'\n")
    report = asyncio.run(check_environment(str(env_py), n_tasks=2))
    assert report.ok, report.to_dict()
    first, *rest = log.read_text().splitlines()
    home, hf_home, xdg = first.split("|")
    assert home != os.environ.get("HOME") and "teachloop-check-home-" in home  # the child, before this process
    assert hf_home.startswith(home) and xdg.startswith(home) and not Path(home).exists()  # removed afterwards
    assert rest and all("teachloop-check-home-" not in line for line in rest)  # then loaded here


def test_arithmetic_train_and_test_splits_never_share_a_problem() -> None:
    train = {t.info["expression"] for seed in (0, 1) for t in load("arithmetic?level=1&split=train").take(400, seed)}
    test = {t.info["expression"] for seed in (0, 1) for t in load("arithmetic?level=1&split=test").take(200, seed)}
    every = {t.info["expression"] for t in Arithmetic(level=1).take(2000)}
    assert train and test and not train & test
    assert train | test <= every and all(split_of(e) == "test" for e in test)
    share = sum(split_of(e) == "test" for e in every) / len(every)
    assert abs(share - TEST_FRACTION) < 0.08, share
    # deterministic, and "all" is the unfiltered stream it always was
    assert [t.hash for t in Arithmetic(1, split="test").take(5)] == [t.hash for t in Arithmetic(1, split="test").take(5)]
    assert [t.info["expression"] for t in Arithmetic(2, split="all").take(20)] == \
        [t.info["expression"] for t in Arithmetic(2).take(20)]
    assert Arithmetic(1, split="test").take(1)[0].id.startswith("arithmetic-test-")

"""The built-in ``traffic`` environment: found by name, reads its prompts file only for trusted callers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teachloop.core.errors import InvalidInput
from teachloop.core.files import file_digest
from teachloop.envs.builtin.traffic import TrafficPrompts
from teachloop.envs.registry import load, untrusted_references


def _prompts(tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "1 + 1?"}], "answer": "2"}) + "\n")
    return str(path), file_digest(path)


def test_traffic_is_a_builtin_name_and_the_old_module_reference_still_loads(tmp_path: Path) -> None:
    path, digest = _prompts(tmp_path)
    env = load("traffic", path=path, digest=digest, env="arithmetic")
    assert isinstance(env, TrafficPrompts) and next(env.tasks(0)).answer == "2"
    legacy = "teachloop.loop.trafficenv" + ":TrafficPrompts"  # what runs stored before the move name
    assert isinstance(load(legacy, path=path, digest=digest, env="arithmetic"), TrafficPrompts)


def test_an_untrusted_reference_may_not_make_the_server_read_a_file(tmp_path: Path) -> None:
    path, digest = _prompts(tmp_path)
    with pytest.raises(InvalidInput, match="trusted") as info:
        load("traffic", trusted=False, path=path, digest=digest, env="arithmetic")
    assert info.value.param == "path"
    with untrusted_references(), pytest.raises(InvalidInput, match="trusted"):
        load("traffic", path=path, digest=digest, env="arithmetic")

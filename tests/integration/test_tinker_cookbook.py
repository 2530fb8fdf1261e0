"""The ``tinker-cookbook`` package's own recipes, unchanged, against a teachloop server (tiny model, 2 steps).

Needs ``tinker-cookbook`` (0.5.8 with ``tml-renderers`` 0.2.1: ``scripts/setup.sh`` installs it
for the dev extra); skipped without it. The recipes run as subprocesses, as a user would run them,
with ``TINKER_BASE_URL``/``TINKER_API_KEY`` pointing at the server; the model is named by its
folder (the recipes load the tokenizer from the model name) with the ``role_colon`` renderer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_tinker_sdk import Server, start_server

pytest.importorskip("tinker_cookbook")
pytestmark = pytest.mark.slow  # two recipe subprocesses, ~30 s each on 2 vCPUs


@pytest.fixture(scope="module")
def cookbook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(tmp_path_factory)


def _run(server: Server, module: str, *args: str, log: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TINKER_BASE_URL": server.url, "TINKER_API_KEY": server.key, "TINKER_TELEMETRY": "0",
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, f"model_name={server.model_dir}", "renderer_name=role_colon",
         f"log_path={log}", "behavior_if_log_dir_exists=delete", f"base_url={server.url}", *args],
        env=env, capture_output=True, text=True, timeout=240,
    )


def test_chat_sl_recipe_trains_two_steps_and_saves(cookbook_server: Server, tmp_path: Path) -> None:
    import tinker_cookbook

    data = Path(tinker_cookbook.__file__).parent / "example_data" / "conversations.jsonl"
    done = _run(cookbook_server, "tinker_cookbook.recipes.chat_sl.train", f"dataset={data}", "batch_size=4",
                "max_length=128", "lora_rank=4", "eval_every=0", "save_every=1", "max_steps=2",
                "learning_rate=1e-3", log=tmp_path / "sl")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "sl" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and all(r.get("train_mean_nll", 0) > 0 for r in rows if "train_mean_nll" in r), rows
    saved = [json.loads(line) for line in (tmp_path / "sl" / "checkpoints.jsonl").read_text().splitlines()]
    assert saved and all(p.startswith("tinker://") for s in saved for k, p in s.items() if k.endswith("path"))


def test_math_rl_recipe_on_arithmetic_runs_two_steps(cookbook_server: Server, tmp_path: Path) -> None:
    done = _run(cookbook_server, "tinker_cookbook.recipes.math_rl.train", "env=arithmetic", "group_size=2",
                "groups_per_batch=2", "max_tokens=4", "lora_rank=4", "eval_every=0", "save_every=0",
                "max_steps=2", log=tmp_path / "rl")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 2, rows

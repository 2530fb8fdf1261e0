"""The public surface is deliberate and documented: exports, settings, CLI help."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["core", "render", "engine", "envs", "store", "catalog", "train", "serve", "loop", "app"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists(name: str) -> None:
    try:
        mod = importlib.import_module(f"teachloop.{name}")
    except ModuleNotFoundError:
        pytest.skip(f"teachloop.{name} is not part of this checkout")
    exported = list(mod.__all__)  # ruff's RUF022 keeps it sorted
    assert len(exported) == len(set(exported)), f"teachloop.{name}.__all__ repeats a name"
    for item in exported:
        assert getattr(mod, item) is not None, f"teachloop.{name}.{item}"
    assert (mod.__doc__ or "").strip(), f"teachloop.{name} has no docstring stating its contract"


def test_every_environment_variable_is_documented() -> None:
    from teachloop.core.settings import SETTINGS

    used = set()
    for path in (ROOT / "src" / "teachloop").rglob("*.py"):
        used |= set(re.findall(r"TEACHLOOP_[A-Z_]+[A-Z]", path.read_text()))
    assert used <= set(SETTINGS), f"undocumented in core.settings.SETTINGS: {sorted(used - set(SETTINGS))}"
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in SETTINGS if f"`{name}`" not in doc]
    assert not missing, f"docs/configuration.md misses {missing}"


def _commands(app, prefix=()):  # type: ignore[no-untyped-def]
    import typer.main

    group = typer.main.get_command(app)
    stack = [(prefix, group)]
    while stack:
        path, cmd = stack.pop()
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            stack.append(((*path, name), sub))


def test_every_cli_command_has_help() -> None:
    from teachloop.cli.main import app

    runner = CliRunner()
    paths = list(_commands(app))
    assert len(paths) > 15
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output
        if path:
            body = result.output.split("Usage", 1)[1]
            assert len(body.strip().splitlines()) > 2, f"teachloop {' '.join(path)} --help says nothing"


def test_import_teachloop_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, teachloop, teachloop.core, teachloop.cli.main; print(sorted(m for m in ('torch','transformers','sqlalchemy','vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing teachloop and building the CLI pulled in {out}"

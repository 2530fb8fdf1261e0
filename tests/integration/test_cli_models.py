"""``teachloop models add``: a local folder into the cache, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachloop.cli.main import app
from teachloop.core.settings import Settings
from teachloop.engine.models import MANIFEST, list_models, resolve_model
from tests._tiny import tiny_llama


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return tiny_llama(tmp_path / "src")


def _listed(name: str) -> list[dict[str, object]]:
    out = CliRunner().invoke(app, ["models", "list", "--json"])
    assert out.exit_code == 0, out.output
    return [row for row in map(json.loads, out.output.splitlines()) if row["name"] == name]


def test_models_add_caches_a_folder_that_models_list_and_resolve_then_see(teachloop_home: Path, tiny: Path) -> None:
    result = CliRunner().invoke(app, ["models", "add", "my-tiny", str(tiny)])
    assert result.exit_code == 0, result.output
    settings = Settings.from_env()
    cached = settings.model_cache / "my-tiny"
    assert f"ok my-tiny: {cached}" in result.output
    [row] = _listed("my-tiny")
    assert row["status"] == "ok" and str(tiny) in str(row["source"])
    assert resolve_model(settings, "my-tiny", download=False) == cached
    assert sorted(p.name for p in tiny.iterdir()) == sorted(p.name for p in cached.iterdir() if p.name != MANIFEST)


def test_models_add_refuses_to_replace_without_force(teachloop_home: Path, tiny: Path, tmp_path: Path) -> None:
    assert CliRunner().invoke(app, ["models", "add", "my-tiny", str(tiny)]).exit_code == 0
    other = tiny_llama(tmp_path / "other", seed=1)
    again = CliRunner().invoke(app, ["models", "add", "my-tiny", str(other)])
    assert again.exit_code == 2, again.output
    assert again.output.strip() == "error: model 'my-tiny' is already in the cache; pass --force to replace it"
    cached = Settings.from_env().model_cache / "my-tiny"
    assert (cached / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    forced = CliRunner().invoke(app, ["models", "add", "--force", "my-tiny", str(other)])
    assert forced.exit_code == 0, forced.output
    assert (cached / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("config.json", "it has no config.json"),
        ("model.safetensors", "it has no weights"),
        ("tokenizer.json", "it has no tokenizer"),
    ],
)
def test_models_add_refuses_an_incomplete_folder(teachloop_home: Path, tiny: Path, damage: str, message: str) -> None:
    (tiny / damage).unlink()
    if damage == "tokenizer.json":
        for extra in ("tokenizer.model", "vocab.json"):
            (tiny / extra).unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["models", "add", "broken", str(tiny)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {tiny} is not a model folder: {message}")
    assert len(result.output.strip().splitlines()) == 1
    assert list_models(Settings.from_env()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["smollm2-135m-instruct"], "is a known model name"),
        (["bad name!"], "invalid model name"),
        (["ok", "/nonexistent/teachloop-model"], "error: no folder at /nonexistent/teachloop-model"),
    ],
)
def test_models_add_bad_input_is_one_line(teachloop_home: Path, tiny: Path, args: list[str], expected: str) -> None:
    full = ["models", "add", *args] if len(args) == 2 else ["models", "add", args[0], str(tiny)]
    result = CliRunner().invoke(app, full)
    assert result.exit_code == 2, result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    cache = Settings.from_env().model_cache
    assert not cache.exists() or [p for p in cache.iterdir() if not p.name.startswith(".")] == []


def test_models_add_has_help() -> None:
    result = CliRunner().invoke(app, ["models", "add", "--help"])
    assert result.exit_code == 0
    assert "local model folder" in result.output and "--force" in result.output
    listed = CliRunner().invoke(app, ["models", "--help"])
    assert " add " in listed.output


def test_models_add_leaves_the_source_folder_alone(teachloop_home: Path, tiny: Path) -> None:
    before = {p.name: p.read_bytes() for p in tiny.iterdir()}
    assert CliRunner().invoke(app, ["models", "add", "t", str(tiny)]).exit_code == 0
    assert {p.name: p.read_bytes() for p in tiny.iterdir()} == before
    shutil.rmtree(tiny)  # the cached copy does not depend on the source
    assert resolve_model(Settings.from_env(), "t", download=False).joinpath("config.json").is_file()

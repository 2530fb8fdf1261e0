"""Adapter publishing and content digests: one digest for every publisher, one atomic folder replace."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from teachloop.catalog.adapters import adapter_key, folder_digest, publish_adapter
from teachloop.core.errors import InvalidInput
from teachloop.core.files import bytes_digest, file_digest, files_digest, replace_dir
from teachloop.envs.manifest import package_hash
from tests.unit.catalog.conftest import Store


def _adapter(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text('{"r": 4}')
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "weights.bin").write_bytes(text.encode())
    (root / "a.txt").write_text("a")
    return root


def test_folder_digest_is_the_documented_algorithm_and_ignores_hidden_files(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "ad", "w1")
    outer = hashlib.sha256()
    for rel in sorted(["a.txt", "adapter_config.json", "sub/weights.bin"], key=lambda r: Path(folder / r)):
        outer.update(rel.encode() + b"\0" + hashlib.sha256((folder / rel).read_bytes()).digest())
    digest = folder_digest(folder)
    assert digest == "sha256:" + outer.hexdigest()  # adapter versions stored before the move stay valid
    (folder / ".DS_Store").write_text("noise")
    assert folder_digest(folder) == digest
    (folder / "sub" / "weights.bin").write_text("w2")
    assert folder_digest(folder) != digest
    with pytest.raises(InvalidInput, match="not a folder"):
        folder_digest(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="empty"):
        folder_digest(tmp_path / "empty")


def test_file_and_package_digests_keep_their_formats(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_bytes(b"abc\n" * 1000)
    assert file_digest(f) == bytes_digest(f.read_bytes()) == "sha256:" + hashlib.sha256(b"abc\n" * 1000).hexdigest()
    pkg = tmp_path / "pkg"
    (pkg / "m").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text("[project]\nname='p'\n")
    (pkg / "m" / "__init__.py").write_text("X = 1\n")
    h = hashlib.sha256()
    for rel in ("m/__init__.py", "pyproject.toml"):
        h.update(f"file:{rel}\0".encode() + (pkg / rel).read_bytes() + b"\0")
    assert package_hash(pkg) == files_digest([("m/__init__.py", pkg / "m/__init__.py"),
                                              ("pyproject.toml", pkg / "pyproject.toml")]) == "sha256:" + h.hexdigest()


def test_replace_dir_swaps_a_whole_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    first = tmp_path / ".stage1"
    first.mkdir()
    (first / "v").write_text("1")
    replace_dir(first, dest)
    assert (dest / "v").read_text() == "1" and not first.exists()
    second = tmp_path / ".stage2"
    second.mkdir()
    (second / "w").write_text("2")
    replace_dir(second, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["w"]  # the old folder's files are gone with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    with pytest.raises(InvalidInput):
        replace_dir(tmp_path / "nope", dest)


def test_publish_adapter_is_content_keyed_and_idempotent(store: Store, tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "ad", "w1")
    with store.db.session() as s:
        v, created = publish_adapter(s, store.blobs, store.org_id, name="calc", folder=folder, base_model="m",
                                     source_run_id=None, actor="loop")
        again, created_again = publish_adapter(s, store.blobs, store.org_id, name="calc",
                                               folder=_adapter(tmp_path / "copy", "w1"), base_model="m")
    assert created and not created_again and again.id == v.id
    assert v.digest == folder_digest(folder) and v.blob_key == adapter_key(store.org_id, v.digest)
    assert folder_digest(store.blobs.get_dir(v.blob_key, tmp_path / "back")) == v.digest
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x").write_text("x")
    with pytest.raises(InvalidInput, match="not a PEFT adapter folder") as info, store.db.session() as s:
        publish_adapter(s, store.blobs, store.org_id, name="calc", folder=tmp_path / "plain", base_model="m")
    assert info.value.param == "path"


def test_the_loop_publishes_a_run_adapter_with_the_digest_deploy_push_records(store: Store, tmp_path: Path) -> None:
    from teachloop.loop.training import publish_candidate
    from teachloop.train.config import validate_config
    from teachloop.train.runs import RunStore

    folder = _adapter(tmp_path / "ad", "run")
    runs = RunStore(store.db, store.blobs)
    run = runs.create(store.org_id, validate_config({"algorithm": "sft", "data": {"train": "x.jsonl"}}), {})
    key = runs.save_adapter(store.org_id, run.id, folder)
    runs.finish(store.org_id, run.id, "completed", final_adapter_key=key)
    run = runs.get(store.org_id, run.id)
    version = publish_candidate(store.db, store.blobs, store.org_id, "calc", "m", run, {"iteration": 1})
    assert version.digest == folder_digest(folder) and version.source_run_id == run.id
    with store.db.session() as s:
        pushed, created = publish_adapter(s, store.blobs, store.org_id, name="calc", folder=folder, base_model="m")
    assert not created and pushed.id == version.id

"""BlobStore on a local folder and on fsspec's in-memory filesystem."""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from teachloop.core.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from teachloop.store import BlobStore


@pytest.fixture(params=["local", "memory"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield BlobStore(tmp_path / "blobs")
        return
    root = f"memory://teachloop-test-{secrets.token_hex(4)}"
    yield BlobStore(root)
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)


def _adapter(tmp_path: Path, marker: str) -> Path:
    folder = tmp_path / f"adapter-{marker}"
    (folder / "sub").mkdir(parents=True)
    (folder / "adapter_config.json").write_text(f'{{"r": 8, "marker": "{marker}"}}')
    (folder / "sub" / "weights.safetensors").write_bytes(marker.encode() * 100)
    return folder


def test_bytes_round_trip_and_overwrite(blobs: BlobStore) -> None:
    assert blobs.put_bytes("orgs/o1/a.txt", b"one") == "orgs/o1/a.txt"
    assert blobs.get_bytes("orgs/o1/a.txt") == b"one"
    blobs.put_bytes("orgs/o1/a.txt", b"two")
    assert blobs.get_bytes("orgs/o1/a.txt") == b"two"
    with blobs.open("orgs/o1/a.txt") as f:
        assert f.read() == b"two"
    assert blobs.exists("orgs/o1/a.txt") and blobs.exists("orgs/o1")
    assert not blobs.exists("orgs/o1/b.txt")


def test_put_file_from_path_and_file_object(blobs: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "data.jsonl"
    source.write_bytes(b'{"a": 1}\n' * 1000)
    blobs.put_file("data/one.jsonl", source)
    blobs.put_file("data/two.jsonl", io.BytesIO(b"streamed"))
    assert blobs.get_bytes("data/one.jsonl") == source.read_bytes()
    assert blobs.get_bytes("data/two.jsonl") == b"streamed"
    with pytest.raises(InvalidInput, match="not a file"):
        blobs.put_file("data/three.jsonl", tmp_path / "missing")


def test_content_addressed_keys(blobs: BlobStore) -> None:
    key = blobs.put_content(b"hello")
    assert key == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert blobs.put_content(b"hello") == key
    assert blobs.get_bytes(key) == b"hello"
    blobs.put_bytes("plain/x", b"x")
    assert blobs.list() == sorted([key, "plain/x"])
    assert blobs.list("sha256:") == [key]
    with pytest.raises(InvalidInput, match="reserved"):
        blobs.put_bytes("sha256/aa/bb", b"no")


def test_dirs_round_trip(blobs: BlobStore, tmp_path: Path) -> None:
    blobs.put_dir("adapters/ad1", _adapter(tmp_path, "v1"))
    assert blobs.list("adapters/") == [
        "adapters/ad1/adapter_config.json",
        "adapters/ad1/sub/weights.safetensors",
    ]
    out = blobs.get_dir("adapters/ad1", tmp_path / "out")
    assert (out / "sub" / "weights.safetensors").read_bytes() == b"v1" * 100
    with pytest.raises(Conflict, match="already exists"):
        blobs.put_dir("adapters/ad1", _adapter(tmp_path, "v2"))
    assert blobs.get_bytes("adapters/ad1/sub/weights.safetensors") == b"v1" * 100
    blobs.put_dir("adapters/ad1", _adapter(tmp_path, "v3"), overwrite=True)
    assert blobs.get_bytes("adapters/ad1/sub/weights.safetensors") == b"v3" * 100
    with pytest.raises(NotFound):
        blobs.get_dir("adapters/missing", tmp_path / "out2")
    with pytest.raises(InvalidInput, match="not a folder"):
        blobs.put_dir("adapters/ad2", tmp_path / "nope")


def test_list_and_delete(blobs: BlobStore) -> None:
    for key in ("a/1", "a/2", "ab/3", "b/4"):
        blobs.put_bytes(key, b".")
    assert blobs.list("a/") == ["a/1", "a/2"]
    assert blobs.list("a") == ["a/1", "a/2", "ab/3"]
    assert blobs.list("zzz/") == []
    assert blobs.delete("a") is True
    assert blobs.delete("a") is False
    assert blobs.list() == ["ab/3", "b/4"]


def test_missing_blobs_are_not_found(blobs: BlobStore) -> None:
    with pytest.raises(NotFound, match="'nope' not found"):
        blobs.get_bytes("nope")
    with pytest.raises(NotFound), blobs.open("nope"):
        pass


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "../up", "a/../b", ".hidden", "a/.tmp-x", "sp ace", "a\\b"]
)
def test_bad_keys_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(InvalidInput) as info:
        blobs.put_bytes(key, b"x")
    assert info.value.param == "key"
    assert blobs.list() == []


class _Exploding(io.RawIOBase):
    """A source that yields some bytes, then fails: a write cut off half-way."""

    def __init__(self) -> None:
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        if self.sent >= 3 << 20:
            raise OSError("connection reset")
        n = min(len(buffer), 1 << 20)
        buffer[:n] = b"x" * n
        self.sent += n
        return n


def test_a_half_written_local_blob_is_never_visible(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    blobs.put_bytes("big.bin", b"old")
    with pytest.raises(OSError, match="connection reset"):
        blobs.put_file("big.bin", _Exploding())
    with pytest.raises(OSError, match="connection reset"):
        blobs.put_file("fresh.bin", _Exploding())
    assert blobs.get_bytes("big.bin") == b"old"
    assert not blobs.exists("fresh.bin")
    assert blobs.list() == ["big.bin"]
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == ["big.bin"]  # no temporary files left


def test_a_failed_local_dir_upload_leaves_the_old_one(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    blobs.put_dir("ad", _adapter(tmp_path, "v1"))
    broken = _adapter(tmp_path, "v2")
    (broken / "dangling").symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(OSError, match="dangling"):
        blobs.put_dir("ad", broken, overwrite=True)
    assert blobs.get_bytes("ad/sub/weights.safetensors") == b"v1" * 100
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == ["ad"]


def test_unusable_roots_are_configuration_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="cannot create the blob folder"):
        BlobStore(tmp_path / "file" / "blobs")
    with pytest.raises(ConfigurationError, match="cannot open blob store"):
        BlobStore("nosuchprotocol://bucket")

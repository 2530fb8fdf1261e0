"""The blob store: bytes, files and folders under string keys, on any fsspec filesystem.

``BlobStore(url)`` roots the store at a local folder (the default,
``$TEACHLOOP_HOME/blobs``) or any fsspec URL (``s3://bucket/prefix``,
``memory://x`` in tests). Keys are ``/``-separated relative paths of
``[A-Za-z0-9._=+@-]`` segments that do not start with a dot; ``put_content``
returns a content-addressed key ``sha256:<hex>`` (stored under
``sha256/<2 hex>/<hex>``, a namespace ordinary keys cannot use).

Atomicity. On the local filesystem a file is written to a hidden temporary name
in its folder and renamed into place, and ``put_dir`` renames a complete
temporary folder into place: a reader sees the old blob or the new one, never
half of one. Object stores make each object visible whole; a folder there
appears file by file, so callers publish a folder's key (a database row) only
after ``put_dir`` returns -- the database is the commit point.

This module knows nothing about what the blobs mean or who owns them; callers
put the organisation into the key (e.g. ``orgs/<org_id>/adapters/<id>``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import fsspec

from teachloop.core.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from teachloop.core.files import bytes_digest, replace_dir

_SEGMENT = r"[A-Za-z0-9_=+@-][A-Za-z0-9._=+@-]*"
_KEY_RE = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*$")
_CONTENT_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_CONTENT_PATH_RE = re.compile(r"^sha256/([0-9a-f]{2})/([0-9a-f]{64})$")
_CHUNK = 1 << 20


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``: an open binary file, a socket stream, ``io.BytesIO``."""

    def read(self, size: int = -1, /) -> bytes: ...


class BlobStore:
    """Blobs under keys, rooted at a local folder or an fsspec URL."""

    def __init__(self, url: str | os.PathLike[str], **storage_options: Any) -> None:
        text = str(url)
        protocol, rest = fsspec.core.split_protocol(text)
        self.url = text
        self.local = protocol in (None, "file", "local")
        if self.local:
            self.root = str(Path(rest).expanduser().resolve())
            try:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigurationError(
                    f"cannot create the blob folder {self.root}: {err.strerror}", param="TEACHLOOP_BLOB_URL"
                ) from None
            self.fs: fsspec.AbstractFileSystem = fsspec.filesystem("file")
        else:
            try:
                self.fs, root = fsspec.core.url_to_fs(text, **storage_options)
            except (ImportError, ValueError) as err:
                raise ConfigurationError(
                    f"cannot open blob store {text!r}: {err}", param="TEACHLOOP_BLOB_URL"
                ) from None
            self.root = str(root).rstrip("/")

    # -- keys ---------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        if not isinstance(key, str):
            raise InvalidInput(f"a blob key is a string, got {type(key).__name__}", param="key")
        content = _CONTENT_RE.match(key)
        if content is not None:
            digest = content.group(1)
            return f"{self.root}/sha256/{digest[:2]}/{digest}"
        if len(key) > 1024 or not _KEY_RE.match(key) or key.startswith("sha256/"):
            raise InvalidInput(
                f"invalid blob key {key!r}: use '/'-separated names of letters, digits and ._=+@- "
                "that do not start with '.' (sha256/ is reserved)",
                param="key",
            )
        return f"{self.root}/{key}"

    def _key(self, path: str) -> str | None:
        rel = path[len(self.root) :].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            return None  # a temporary file of an unfinished write
        content = _CONTENT_PATH_RE.match(rel)
        return f"sha256:{content.group(2)}" if content is not None else rel

    # -- writes -------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` (replacing what was there); return the key."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput(f"put_bytes needs bytes, got {type(data).__name__}", param="data")
        path = self._path(key)
        if self.local:
            self._write_local(path, lambda f: f.write(data))
        else:
            self.fs.pipe_file(path, bytes(data))
        return key

    def put_file(self, key: str, source: str | os.PathLike[str] | Readable) -> str:
        """Store a local file (a path or a binary file object) under ``key``; return the key."""
        path = self._path(key)
        if isinstance(source, str | os.PathLike):
            if not Path(source).is_file():
                raise InvalidInput(f"not a file: {source}", param="source")
            if not self.local:
                self.fs.put_file(os.fspath(source), path)
                return key
            with open(source, "rb") as src:
                self._write_local(path, lambda f: shutil.copyfileobj(src, f, _CHUNK))
            return key
        if self.local:
            self._write_local(path, lambda f: shutil.copyfileobj(source, f, _CHUNK))
        else:
            with self.fs.open(path, "wb") as dst:
                shutil.copyfileobj(source, dst, _CHUNK)
        return key

    def put_dir(self, key: str, source: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Store a local folder (e.g. an adapter) under ``key``; ``Conflict`` if it exists unless ``overwrite``."""
        src = Path(source)
        if not src.is_dir():
            raise InvalidInput(f"not a folder: {source}", param="source")
        path = self._path(key)
        if self.exists(key) and not overwrite:
            raise Conflict(f"blob {key!r} already exists; pass overwrite=True to replace it", param="key")
        if not self.local:
            if self.exists(key):
                self.fs.rm(path, recursive=True)
            for file in sorted(p for p in src.rglob("*") if p.is_file()):
                self.fs.put_file(str(file), f"{path}/{file.relative_to(src).as_posix()}")
            return key
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(src, tmp)
            replace_dir(tmp, dest)
        finally:
            if tmp.exists():
                _remove(tmp)
        return key

    def put_content(self, data: bytes) -> str:
        """Store ``data`` under its content key ``sha256:<hex>`` (a no-op if present); return the key."""
        key = bytes_digest(data)
        if not self.exists(key):
            self.put_bytes(key, data)
        return key

    def _write_local(self, path: str, write: Callable[[BinaryIO], object]) -> None:
        target = Path(path)
        if target.is_dir():
            raise Conflict(f"blob {self._key(path)!r} is a folder; delete it before writing a file there")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict(f"a parent of blob {self._key(path)!r} is a file", param="key") from None
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # -- reads --------------------------------------------------------------------------------

    def _require_file(self, key: str) -> str:
        path = self._path(key)
        if not self.fs.isfile(path):
            raise NotFound(f"blob {key!r} not found", param="key")
        return path

    def get_bytes(self, key: str) -> bytes:
        """The bytes stored under ``key``; ``NotFound`` if there are none."""
        return bytes(self.fs.cat_file(self._require_file(key)))

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """The blob under ``key`` opened for binary reading (a context manager)."""
        with self.fs.open(self._require_file(key), "rb") as f:
            yield f

    def get_dir(self, key: str, dest: str | os.PathLike[str]) -> Path:
        """Copy the folder under ``key`` into ``dest`` (created if needed); return ``dest``."""
        path = self._path(key)
        if not self.fs.isdir(path):
            raise NotFound(f"blob folder {key!r} not found", param="key")
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        for file in self.fs.find(path):
            if self._key(file) is None:
                continue
            target = out / file[len(path) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(file, str(target))
        return out

    def exists(self, key: str) -> bool:
        """Whether a blob or a folder is stored under ``key``."""
        return bool(self.fs.exists(self._path(key)))

    def list(self, prefix: str = "") -> list[str]:
        """The keys of every file whose key starts with ``prefix``, sorted."""
        if prefix.startswith("sha256:"):
            base = f"{self.root}/sha256"
        else:
            folder = prefix.rpartition("/")[0]
            if folder:
                self._path(folder)  # validates the folder part of the prefix
            base = f"{self.root}/{folder}" if folder else self.root
        if not self.fs.isdir(base):
            return []
        keys = (self._key(p) for p in self.fs.find(base))
        return sorted(k for k in keys if k is not None and k.startswith(prefix))

    def delete(self, key: str) -> bool:
        """Delete the blob or folder under ``key``; return whether anything was there."""
        path = self._path(key)
        if not self.fs.exists(path):
            return False
        if self.local and Path(path).is_dir():
            _remove(Path(path))
        else:
            self.fs.rm(path, recursive=True)
        return True

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["BlobStore", "Readable"]

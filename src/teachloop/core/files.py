"""Content digests of bytes, files and folders, and the atomic replacement of a folder (stdlib only).

Every ``sha256:`` digest of local content in teachloop comes from here, so two
packages that must agree on a digest (the loop and ``teachloop deploy push``
publishing the same adapter folder) call the same function:

* ``bytes_digest(data)`` / ``file_digest(path)``: ``sha256:<hex>`` of the
  bytes (a file is read in 1 MiB chunks).
* ``folder_digest(path)``: ``sha256:<hex>`` over every file of a folder
  except hidden ones: for each file in path order, its POSIX
  relative name, a NUL and the sha256 of its bytes. Adapter versions are
  pinned by it.
* ``files_digest(named)``: the older scheme that environment packages were
  published under (``sha256:`` over ``file:<name>\\0<bytes>\\0`` for each
  ``(name, path)`` pair, in the order given). It stays because published
  digests are stored and verified against it; new code uses
  ``folder_digest``.

``replace_dir(staged, dest)`` moves a complete folder into place: an existing
``dest`` is renamed aside, the new one renamed in, the old one deleted, so a
reader sees the old folder or the new one (with at most a moment where
neither exists), never half of one. ``staged`` must be on ``dest``'s
filesystem (stage it next to ``dest``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from teachloop.core.errors import InvalidInput

_CHUNK = 1 << 20


def bytes_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.digest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    return "sha256:" + _sha256(Path(path)).hex()


def folder_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a folder's files (see the module docstring); ``InvalidInput`` for no or an empty folder."""
    root = Path(path)
    if not root.is_dir():
        raise InvalidInput(f"not a folder: {path}", param="path")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InvalidInput(f"the folder {path} is empty", param="path")
    outer = hashlib.sha256()
    for file in files:
        outer.update(file.relative_to(root).as_posix().encode() + b"\0" + _sha256(file))
    return "sha256:" + outer.hexdigest()


def files_digest(named: Iterable[tuple[str, Path]]) -> str:
    """``sha256:<hex>`` over ``file:<name>\\0<bytes>\\0`` of each (name, path), in the order given."""
    h = hashlib.sha256()
    for name, path in named:
        h.update(f"file:{name}\0".encode())
        h.update(Path(path).read_bytes())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def replace_dir(staged: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Move the complete folder ``staged`` to ``dest``, replacing what is there (see the module docstring)."""
    staged, dest = Path(staged), Path(dest)
    if not staged.is_dir():
        raise InvalidInput(f"not a folder: {staged}", param="staged")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        os.replace(staged, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex}")
    os.replace(dest, old)
    os.replace(staged, dest)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["bytes_digest", "file_digest", "files_digest", "folder_digest", "replace_dir"]

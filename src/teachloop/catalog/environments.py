"""Publishing environment packages, and yanking versions (layer L2+, ``catalog``).

One path for every publisher: ``teachloop env publish`` (a package folder) and
``POST /api/envs`` (an uploaded ``.tar.gz`` or ``.zip`` of one, unpacked by
``unpack_package``) both call ``publish_package``, and both yanks call
``yank_version``.

``publish_package(database, blobs, org_id, folder)``:

1. ``folder`` must be a package folder (``pyproject.toml``; ``InvalidInput``, param ``package``).
2. Every publish-time check runs (``envs.check_environment``, the fresh
   offline process included). Any failing check refuses the package with
   ``ChecksFailed`` (a 400 naming each failing check and what it found);
   nothing is uploaded or stored.
3. The manifest is built and the package archived reproducibly (``archive``:
   the files ``package_hash`` covers, fixed times and owners), so the same
   files give the same digest and the same archive bytes wherever they are
   published from.
4. In one write session: the same ``name@version`` with other content is
   ``Conflict`` before anything is uploaded (no orphan blob); otherwise the
   archive is stored under its content key and the version row written with
   the check report (``EnvironmentVersion.checks``). Publishing the same
   content again returns the existing version, ``created`` False, and changes
   nothing.

Environment names are organisation-scoped: a name another organisation uses
is simply free here, and nothing about it is read or revealed. Publishing runs
the package's code (its checks load it) on the machine that publishes: for
the API, the server -- where training and evaluation would load the
published version anyway. Knows nothing of HTTP or the CLI.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from teachloop.core.errors import Conflict, InvalidInput
from teachloop.envs import CheckReport, build_manifest, check_environment
from teachloop.envs.manifest import package_files
from teachloop.envs.registry import load_package
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.repos.environments import EnvironmentRegistry
from teachloop.store.schema.environments import EnvironmentVersion

#: The most files, and bytes once unpacked, an uploaded package archive may hold.
MAX_ARCHIVE_FILES = 10_000
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
#: Each failing check's message is cut to this many characters in the refusal.
_MESSAGE_CHARS = 300


class ChecksFailed(InvalidInput):
    """A package failed publish-time checks (HTTP 400): the message names each; ``report`` holds every outcome."""

    def __init__(self, message: str, *, param: str | None = "package", report: CheckReport | None = None) -> None:
        super().__init__(message, param=param)
        self.report = report

    @classmethod
    def of(cls, report: CheckReport) -> ChecksFailed:
        """The refusal of ``report`` (which has at least one failing check)."""
        names = ", ".join(r.name for r in report.failed)
        found = "; ".join(f"{r.name}: {r.message[:_MESSAGE_CHARS]}" for r in report.failed)
        return cls(f"refusing to publish: check failed ({names}): {found}", report=report)


@dataclass(frozen=True)
class Published:
    """The outcome of ``publish_package``.

    Attributes:
        version: the stored version (the existing one when ``created`` is False).
        created: whether this call stored it (False: the same content was already published).
        report: the checks just run (all passed).
    """

    version: EnvironmentVersion
    created: bool
    report: CheckReport


def archive(root: Path) -> bytes:
    """A reproducible .tar.gz of a package folder (the files ``package_hash`` covers; fixed times and owners)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w",
                                                                           format=tarfile.PAX_FORMAT) as tar:
        for path in package_files(root):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def require_package(folder: Path, *, param: str = "package") -> Path:
    """``folder`` if it is a package folder (has ``pyproject.toml``); ``InvalidInput`` otherwise."""
    if not (folder / "pyproject.toml").is_file():
        raise InvalidInput(f"{folder} is not a package folder (no pyproject.toml)", param=param)
    return folder


async def check_package(folder: Path, *, offline: bool = True) -> CheckReport:
    """Every publish-time check of the package folder; ``ChecksFailed`` naming each failing one.

    ``offline=False`` skips the fresh-process check (tests only; publishing never does).
    """
    report = await check_environment(str(require_package(folder)), offline=offline)
    if not report.ok:
        raise ChecksFailed.of(report)
    return report


async def publish_package(
    database: Database, blobs: BlobStore, org_id: str, folder: Path, *, actor: str = "system", offline: bool = True,
) -> Published:
    """Check, archive and store ``folder`` as an immutable version of the organisation (module docstring)."""
    report = await check_package(folder, offline=offline)
    return await asyncio.to_thread(_store, database, blobs, org_id, folder, report, actor)


def _store(database: Database, blobs: BlobStore, org_id: str, folder: Path, report: CheckReport,
           actor: str) -> Published:
    manifest = build_manifest(folder, load_package(folder))
    data = archive(folder)
    with database.session() as session:
        registry = EnvironmentRegistry(session)
        existing = next((r for r in registry.versions(org_id, manifest.name) if r.version == manifest.version), None)
        if existing is not None and existing.digest != manifest.content_hash:
            # refused before uploading, so a refused publish leaves no orphan blob
            raise Conflict(f"{manifest.name}@{manifest.version} is already published with different content "
                           f"({existing.digest[:19]}…, this package is {manifest.content_hash[:19]}…); published "
                           "versions are immutable: bump the version", param="version")
        blob_key = existing.blob_key if existing is not None else blobs.put_content(data)
        row, created = registry.publish(
            org_id, name=manifest.name, version=manifest.version, digest=manifest.content_hash,
            manifest=manifest.model_dump(mode="json"), blob_key=blob_key, checks=report.to_dict(), actor=actor)
        return Published(row, created, report)


def yank_version(database: Database, org_id: str, ref: str, *, reason: str | None = None,
                 actor: str = "system") -> EnvironmentVersion:
    """Yank the organisation's ``NAME@VERSION``: training and evaluation refuse it from now on (idempotent).

    ``InvalidInput`` unless ``ref`` names an exact version; another organisation's is ``NotFound`` like a missing one.
    """
    with database.session() as session:
        return EnvironmentRegistry(session).yank(org_id, ref, reason=reason, actor=actor)


def stored_checks(row: EnvironmentVersion) -> dict[str, Any] | None:
    """The check report stored with a published version (``CheckReport.to_dict()``), or None from before it was."""
    return dict(row.checks) if row.checks else None


# -- uploads ------------------------------------------------------------------------------------------


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or not path.parts:
        raise InvalidInput(f"the archive holds an unsafe path {name!r}", param="package")
    return path


def _gunzip(data: bytes) -> bytes:
    """``data`` decompressed, never past ``MAX_UNPACKED_BYTES`` (a small upload cannot make the server inflate more)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_UNPACKED_BYTES + 1)
    except zlib.error as err:
        raise InvalidInput(f"not a readable .tar.gz archive: {err}", param="package") from None
    if len(out) > MAX_UNPACKED_BYTES:
        raise InvalidInput(f"the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes; at most that is accepted",
                           param="package")
    if not inflater.eof or inflater.unused_data:
        raise InvalidInput("not a readable .tar.gz archive: truncated, or more than one gzip stream", param="package")
    return out


def _unpack_tar(data: bytes, dest: Path) -> None:
    raw = _gunzip(data)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = tar.getmembers()
            _bound(len(members), sum(m.size for m in members if m.isfile()))
            for m in members:
                _safe_name(m.name)
                if not (m.isfile() or m.isdir()):
                    raise InvalidInput(f"the archive holds {m.name!r}, which is not a file or folder (links and "
                                       "devices are refused)", param="package")
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise InvalidInput(f"not a readable .tar.gz archive: {err}", param="package") from None


def _unpack_zip(data: bytes, dest: Path) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            _bound(len(infos), sum(i.file_size for i in infos))
            for info in infos:
                rel = _safe_name(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise InvalidInput(f"the archive holds the link {info.filename!r}; links are refused",
                                       param="package")
                target = dest.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as out:
                    written = 0
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > info.file_size:  # a header that lies about the size
                            raise InvalidInput(f"{info.filename!r} is larger than the archive says", param="package")
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        raise InvalidInput(f"not a readable .zip archive: {err}", param="package") from None


def _bound(files: int, size: int) -> None:
    if files > MAX_ARCHIVE_FILES:
        raise InvalidInput(f"the archive holds {files} entries; at most {MAX_ARCHIVE_FILES} are accepted",
                           param="package")
    if size > MAX_UNPACKED_BYTES:
        raise InvalidInput(f"the archive unpacks to {size} bytes; at most {MAX_UNPACKED_BYTES} are accepted",
                           param="package")


def unpack_package(data: bytes, dest: Path, *, filename: str = "") -> Path:
    """Unpack an uploaded package archive into the empty folder ``dest``; the package folder inside it.

    ``data`` is a ``.tar.gz`` (what ``archive`` and ``teachloop env publish --remote`` send) or a ``.zip``
    of the package folder -- its files at the top, or in one top folder. Wheels are refused (a package is
    published from its source folder, as ``teachloop env publish`` does). Unsafe paths, links, more than
    ``MAX_ARCHIVE_FILES`` entries or ``MAX_UNPACKED_BYTES`` unpacked are ``InvalidInput`` (param ``package``).
    """
    if filename.lower().endswith(".whl"):
        raise InvalidInput("a wheel is not accepted: upload a .tar.gz or .zip of the package folder (the source "
                           "folder `teachloop env publish` takes)", param="package")
    dest.mkdir(parents=True, exist_ok=True)
    if data[:2] == b"\x1f\x8b":
        _unpack_tar(data, dest)
    elif data[:4] == b"PK\x03\x04":
        _unpack_zip(data, dest)
    else:
        raise InvalidInput("the package must be a .tar.gz or .zip of the package folder", param="package")
    if (dest / "pyproject.toml").is_file():
        return dest
    top = [p for p in dest.iterdir() if not p.name.startswith(".")]
    if len(top) == 1 and top[0].is_dir() and (top[0] / "pyproject.toml").is_file():
        return top[0]
    raise InvalidInput("the archive holds no pyproject.toml at its top or in its one top folder; archive the "
                       "package folder", param="package")


__all__ = [
    "MAX_ARCHIVE_FILES",
    "MAX_UNPACKED_BYTES",
    "ChecksFailed",
    "Published",
    "archive",
    "check_package",
    "publish_package",
    "require_package",
    "stored_checks",
    "unpack_package",
    "yank_version",
]

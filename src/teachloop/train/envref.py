"""Resolving an environment reference to an instance pinned by digest.

Training runs and evaluations never run "latest": ``resolve_env`` turns a
reference into the environment *and* the digest that identifies its exact
content, before any compute is spent.

* ``NAME@VERSION`` / ``NAME@sha256:...``: a version published in the
  organisation's registry; its archive is fetched from the blob store,
  verified against the digest, and loaded. A yanked version is refused unless
  ``allow_yanked``.
* anything else (built-in or installed name, folder, file, ``rg:...``,
  ``module:attr``): loaded locally; the digest covers its package files, or
  its code and constructor arguments.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from teachloop.core.errors import ConfigurationError, InvalidInput
from teachloop.core.rl import content_hash
from teachloop.envs import Environment, load
from teachloop.envs.manifest import package_hash
from teachloop.envs.registry import load_package
from teachloop.store.blobs import BlobStore
from teachloop.store.repos.environments import EnvironmentRegistry


@dataclass(frozen=True)
class ResolvedEnv:
    """An environment with the identity of what was loaded.

    Attributes:
        env: the instance.
        ref: the reference as resolved (``name@version`` for published ones).
        name: the environment's name.
        version: the published version, or None for a local environment.
        digest: ``sha256:`` content digest.
    """

    env: Environment
    ref: str
    name: str
    version: str | None
    digest: str


def is_hub_ref(ref: str) -> bool:
    """Whether ``ref`` names a published version (``name@...``) rather than something local."""
    return "@" in ref and not ref.startswith(("rg:", "vf:")) and not Path(ref.partition("?")[0]).exists()


def local_digest(ref: str, env: Environment, kwargs: dict[str, Any] | None = None) -> str:
    """The content digest of a local environment: its package files, grader files, or its code and config."""
    base = Path(ref.partition("?")[0])
    if base.is_dir():
        return package_hash(base)
    if base.is_file():
        files = [base, *(p for p in (base.with_suffix(".jsonl"),) if p.is_file())]
        return "sha256:" + hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
    source = inspect.getsourcefile(type(env)) or ""
    code = Path(source).read_bytes() if source and Path(source).is_file() else b""
    return content_hash({
        "ref": ref, "kwargs": kwargs or {}, "class": f"{type(env).__module__}.{type(env).__qualname__}",
        "version": type(env).version, "code": hashlib.sha256(code).hexdigest(),
    })


def fetch_package(blobs: BlobStore, blob_key: str, digest: str, cache: Path) -> Path:
    """The package folder of a published archive, extracted once into ``cache`` and verified."""
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / digest.removeprefix("sha256:")
    if dest.is_dir() and package_hash(dest) == digest:
        return dest
    data = blobs.get_bytes(blob_key)
    tmp = Path(tempfile.mkdtemp(prefix=".env-", dir=cache))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        if package_hash(tmp) != digest:
            raise ConfigurationError(f"the archive {blob_key} does not match its digest {digest}")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_env(
    ref: str,
    *,
    session: Session | None = None,
    blobs: BlobStore | None = None,
    org_id: str | None = None,
    cache: Path | None = None,
    allow_yanked: bool = False,
    **kwargs: Any,
) -> ResolvedEnv:
    """Load ``ref`` pinned by digest (published refs need ``session``, ``blobs``, ``org_id``, ``cache``)."""
    if not is_hub_ref(ref):
        env = load(ref, **kwargs)
        return ResolvedEnv(env, ref, env.name, None, local_digest(ref, env, kwargs))
    if session is None or blobs is None or org_id is None or cache is None:
        raise ConfigurationError(f"resolving the published environment {ref!r} needs the database and blob store")
    row = EnvironmentRegistry(session).resolve(org_id, ref)
    if row.yanked and not allow_yanked:
        raise InvalidInput(
            f"environment {row.ref} is yanked ({row.yank_reason or 'no reason given'}); pick another version",
            param="env",
        )
    folder = fetch_package(blobs, row.blob_key, row.digest, cache)
    return ResolvedEnv(load_package(folder, **kwargs), row.ref, row.name, row.version, row.digest)


__all__ = ["ResolvedEnv", "fetch_package", "is_hub_ref", "local_digest", "resolve_env"]

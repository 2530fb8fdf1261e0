"""Environment references: resolving one to an instance pinned by digest (layer L2+, ``catalog``).

Training runs and evaluations never run "latest": ``resolve_env`` turns a
reference into the environment *and* the digest that identifies its exact
content, before any compute is spent.

* ``NAME@VERSION`` / ``NAME@sha256:...``: a version published in the
  caller's organisation's registry (the registry has no public versions); its
  archive is fetched from the blob store, verified against the digest, and
  loaded.
* ``OWNER/NAME@VERSION``: a version another organisation published and the
  caller bought on the marketplace. Resolving it checks (read-only) that an
  active entitlement covers ``run`` (``catalog.usage.require_entitled``: never
  bought answers like a name that does not exist; refunded is ``Forbidden``
  saying so); ``ResolvedEnv.bought`` then holds the version's id, and the run
  that uses it meters one use with ``meter_env_run`` in its write session
  (a usage-priced offer is billed from that meter). A yanked version is refused -- even when named exactly -- unless
  ``allow_yanked`` (inspection only: ``env info``/``env check``).
* anything else (built-in or installed name, folder, file, ``rg:...``,
  ``module:attr``): loaded locally by ``envs.registry.load``.

**Trust.** ``trusted=False`` is for references that come from the API or a
stored config: only names, ``rg:``, ``vf:`` and published versions resolve;
paths and ``module:attr`` are refused before anything is imported (see
``envs.registry``). ``trusted=None`` takes the ambient level (trusted, except
inside ``envs.registry.untrusted_references()``).

**Digests** of local environments (``local_digest``) cover what decides tasks
and rewards, plus the constructor arguments: a folder's files
(``package_hash``, unchanged when there are no arguments), a ``.py`` file's
bytes, a grader JSON and the items file it resolved to; for a built-in,
teachloop's version and the built-in's module with the shared grader code;
for an installed package, its distribution's name, version and files and the
target module's files; for ``rg:``/``vf:``, the library's version (and a vf
taskset's module files).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import io
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

import teachloop
from teachloop.catalog.usage import meter_use, require_entitled
from teachloop.core.errors import ConfigurationError, InvalidInput, NotFound
from teachloop.core.files import files_digest, replace_dir
from teachloop.core.rl import content_hash
from teachloop.envs import Environment, load
from teachloop.envs.manifest import package_hash
from teachloop.envs.registry import entry_point, load_package, references_trusted, split_query
from teachloop.store.blobs import BlobStore
from teachloop.store.repos.environments import EnvironmentRegistry
from teachloop.store.repos.tenancy import Tenancy
from teachloop.store.schema.environments import EnvironmentVersion

_ENVS_DIR = Path(inspect.getfile(Environment)).parent
#: Shared code that decides a built-in's tasks and rewards, besides its own module.
_SHARED = ("base.py", "extract.py", "tools.py", "graders")


@dataclass(frozen=True)
class ResolvedEnv:
    """An environment with the identity of what was loaded.

    Attributes:
        env: the instance.
        ref: the reference as resolved (``name@version`` for published ones).
        name: the environment's name.
        version: the published version, or None for a local environment.
        digest: ``sha256:`` content digest.
        bought: the environment version's id when it belongs to another organisation and is used
            under a marketplace entitlement (``OWNER/NAME@VERSION``); None otherwise.
    """

    env: Environment
    ref: str
    name: str
    version: str | None
    digest: str
    bought: str | None = None


def is_hub_ref(ref: str, *, trusted: bool = True) -> bool:
    """Whether ``ref`` names a published version (``name@...``) rather than something local.

    A trusted reference that is an existing path stays local; an untrusted one never names a path.
    """
    if "@" not in ref or ref.startswith(("rg:", "vf:")):
        return False
    return not trusted or not Path(ref.partition("?")[0]).expanduser().exists()


def _files_hash(paths: list[Path]) -> str:
    """Hex digest of source files, each named by its last three path parts (bytecode skipped)."""
    kept = (p for p in sorted(set(paths))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))
    return files_digest(("/".join(p.parts[-3:]), p) for p in kept).removeprefix("sha256:")


def _module_files(module_name: str) -> list[Path]:
    """The source files of the top-level package (or module) ``module_name`` belongs to, if imported."""
    module = sys.modules.get(module_name.split(".")[0])
    file = getattr(module, "__file__", None)
    if not file:
        return []
    path = Path(file)
    return sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]


def _stable(value: Any) -> Any:
    """Constructor arguments as stable JSON: objects (a judge completer) by type and model, never by address."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    facts = {k: str(getattr(value, k)) for k in ("model", "url") if isinstance(getattr(value, k, None), str)}
    return {"type": f"{type(value).__module__}.{type(value).__qualname__}", **facts}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _local_path(base: str, trusted: bool) -> Path | None:
    """The path a trusted reference names (None for rg:/vf: and for untrusted references, which are never paths)."""
    return Path(base).expanduser() if trusted and not base.startswith(("rg:", "vf:")) else None


def _content(base: str, env: Environment, trusted: bool) -> dict[str, Any]:
    """What identifies the code and data behind a local reference (see the module docstring)."""
    cls = type(env)
    if base.startswith("rg:"):
        return {"kind": "reasoning-gym", "library": _version("reasoning-gym"), "teachloop": teachloop.__version__}
    if base.startswith("vf:"):
        taskset = getattr(env, "taskset", None)
        module = type(taskset).__module__ if taskset is not None else ""
        return {"kind": "verifiers", "library": _version("verifiers"), "teachloop": teachloop.__version__,
                "taskset": _files_hash(_module_files(module)) if module else None}
    path = _local_path(base, trusted)
    if path is not None and path.is_file() and path.suffix == ".json":
        items = getattr(env, "items_path", None)
        return {"kind": "grader-json", "teachloop": teachloop.__version__,
                "files": _files_hash([path, *([Path(items)] if items else [])]),
                "items_file": Path(items).name if items else None}
    if path is not None and path.is_file():
        return {"kind": "file", "files": _files_hash([path])}
    source = inspect.getsourcefile(cls)
    from teachloop.envs.builtin import BUILTINS

    if BUILTINS.get(base) is cls:
        shared = [p for name in _SHARED for p in ([_ENVS_DIR / name] if name.endswith(".py")
                                                    else sorted((_ENVS_DIR / name).rglob("*.py")))]
        return {"kind": "builtin", "teachloop": teachloop.__version__,
                "files": _files_hash([Path(source), *shared] if source else shared)}
    ep = entry_point(base)
    if ep is not None:
        dist = ep.dist
        dist_files = [Path(str(f.locate())) for f in (dist.files or [])] if dist is not None else []
        return {"kind": "package", "distribution": dist.name if dist else None,
                "version": dist.version if dist else None,
                "files": _files_hash(dist_files + _module_files(ep.module))}
    return {"kind": "module", "files": _files_hash([Path(source)] if source else [])}


def local_digest(ref: str, env: Environment, kwargs: dict[str, Any] | None = None, *, trusted: bool = True) -> str:
    """The content digest of a local environment (see the module docstring); ``trusted`` as it was loaded."""
    base, query = split_query(ref)
    args = _stable({**query, **(kwargs or {})})
    path = _local_path(base, trusted)
    if path is not None and path.is_dir():
        digest = package_hash(path)
        return digest if not args else content_hash({"package": digest, "args": args})
    name = None if path is not None and path.is_file() else base  # a file is its content, wherever it lies
    return content_hash({"ref": name, "args": args, "class": f"{type(env).__module__}.{type(env).__qualname__}",
                         "version": type(env).version, "content": _content(base, env, trusted)})


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
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_env(
    ref: str,
    *,
    trusted: bool | None = None,
    session: Session | None = None,
    blobs: BlobStore | None = None,
    org_id: str | None = None,
    cache: Path | None = None,
    allow_yanked: bool = False,
    **kwargs: Any,
) -> ResolvedEnv:
    """Load ``ref`` pinned by digest (published refs need ``session``, ``blobs``, ``org_id``, ``cache``).

    ``trusted=False`` refuses paths and ``module:attr`` (see the module docstring).
    """
    trust = references_trusted(trusted)
    if not is_hub_ref(ref, trusted=trust):
        env = load(ref, trusted=trust, **kwargs)
        return ResolvedEnv(env, ref, env.name, None, local_digest(ref, env, kwargs, trusted=trust))
    if session is None or blobs is None or org_id is None or cache is None:
        raise ConfigurationError(f"resolving the published environment {ref!r} needs the database and blob store")
    row, bought = _published(session, org_id, ref)
    if row.yanked and not allow_yanked:
        raise InvalidInput(
            f"environment {row.ref} is yanked ({row.yank_reason or 'no reason given'}); training and evaluation "
            "refuse yanked versions: pick another version",
            param="env",
        )
    folder = fetch_package(blobs, row.blob_key, row.digest, cache)
    shown = f"{ref.partition('/')[0]}/{row.ref}" if bought else row.ref
    return ResolvedEnv(load_package(folder, **kwargs), shown, row.name, row.version, row.digest,
                       row.id if bought else None)


def _published(session: Session, org_id: str, ref: str) -> tuple[EnvironmentVersion, bool]:
    """The published version ``ref`` names for ``org_id``, and whether it is another organisation's (bought)."""
    registry = EnvironmentRegistry(session)
    owner, slash, rest = ref.strip().partition("/")
    if not slash:
        return registry.resolve(org_id, ref), False
    unavailable = NotFound(f"environment {ref!r} is not available to this organisation: buy a listing of it on "
                           "the marketplace first", param="env")
    try:
        seller = Tenancy(session).find_org(owner)
    except NotFound:
        raise unavailable from None
    if seller.id == org_id:
        return registry.resolve(org_id, rest), False
    try:
        row = registry.resolve(seller.id, rest)
    except NotFound:
        raise unavailable from None
    require_entitled(session, org_id, "environment", row.id, "run", label=ref)
    return row, True


def meter_env_run(session: Session, org_id: str, resolved: ResolvedEnv, *, units: int = 1,
                  detail: dict[str, Any] | None = None) -> bool:
    """Meter one run of a bought environment (``resolved.bought``) in ``session``; False when not bought.

    ``Forbidden`` when the entitlement was revoked since the reference was resolved.
    """
    if resolved.bought is None:
        return False
    return meter_use(session, org_id, "environment", resolved.bought, "run", label=resolved.ref, units=units,
                     detail=detail)


__all__ = ["ResolvedEnv", "fetch_package", "is_hub_ref", "local_digest", "meter_env_run", "resolve_env"]

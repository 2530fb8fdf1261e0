"""Adapter versions on the serving engine: load versions, unload idle ones.

Versions are published by ``catalog.adapters.publish_adapter`` (the folder in
the blob store, content-keyed per organisation, then the ``AdapterVersion``
row) and identified by ``catalog.adapters.folder_digest``; this module only
puts published versions on the engine.

``AdapterPool`` puts versions on the engine under a name derived from the
digest (``tl-<16 hex>``; equal bytes share one engine adapter), counts the
requests using each, and unloads one only when no request holds it and it is
no longer wanted (``sync``, run by the serving maintenance thread; ``release``
never blocks). Loads of different versions run in parallel;
a version is loaded once however many requests ask for it at the same moment.
At most ``max_loaded`` adapters stay on the engine: loading another evicts the
least recently used idle one, or fails with ``ServiceUnavailable`` when all
are busy. This module knows nothing of deployments, HTTP or traces.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from teachloop.core.errors import InvalidInput, ModelError, ServiceUnavailable, TeachloopError
from teachloop.store.blobs import BlobStore

log = logging.getLogger(__name__)


class AdapterEngine(Protocol):
    """The engine's adapter methods the pool uses."""

    def load_adapter(self, name: str, path: Path) -> Any: ...

    def delete_adapter(self, name: str) -> None: ...

    def has_adapter(self, name: str) -> bool: ...


def engine_name(digest: str) -> str:
    """The engine adapter name of a version: ``tl-`` and the first 16 hex digits of its digest."""
    return "tl-" + digest.removeprefix("sha256:")[:16]


@dataclass
class _Entry:
    name: str
    digest: str
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)
    ready: threading.Event = field(default_factory=threading.Event)
    error: TeachloopError | None = None


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter on the engine and how many requests hold it."""

    name: str
    digest: str
    refs: int
    wanted: bool


class AdapterPool:
    """Adapter versions loaded on one engine, reference-counted (see the module docstring)."""

    def __init__(self, engine: AdapterEngine, blobs: BlobStore, *, max_loaded: int = 8) -> None:
        if max_loaded < 1:
            raise InvalidInput("max_loaded must be at least 1", param="max_loaded")
        self.engine = engine
        self.blobs = blobs
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._wanted: set[str] = set()
        #: set when an adapter nobody wants became idle (or a deployment changed): time to call ``sync``
        self.needs_sync = threading.Event()

    def acquire(self, digest: str, blob_key: str) -> str:
        """Make sure the version is on the engine and hold it; returns its engine name. Blocks while loading."""
        name = engine_name(digest)
        with self._lock:
            entry = self._entries.get(name)
            loader = entry is None
            if entry is None:
                self._make_room(exclude=name)
                entry = _Entry(name, digest)
                self._entries[name] = entry
            entry.refs += 1
        if loader:
            self._load(entry, blob_key)
        else:
            entry.ready.wait()
        if entry.error is not None:
            with self._lock:
                entry.refs -= 1
            raise entry.error
        entry.last_used = time.monotonic()
        return name

    def release(self, name: str) -> None:
        """Stop holding ``name`` (never blocks). An unwanted adapter nobody holds sets ``needs_sync``; ``sync`` unloads it."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return
            entry.refs = max(0, entry.refs - 1)
            entry.last_used = time.monotonic()
            if entry.refs == 0 and name not in self._wanted:
                self.needs_sync.set()

    def sync(self, wanted: dict[str, str]) -> None:
        """Keep exactly ``wanted`` (digest -> blob key) loaded, as far as capacity and busy requests allow.

        Unwanted idle adapters are unloaded; wanted ones are loaded (up to ``max_loaded``).
        """
        names = {engine_name(d): (d, k) for d, k in wanted.items()}
        self.needs_sync.clear()
        with self._lock:
            self._wanted = set(names)
            for entry in list(self._entries.values()):
                if entry.refs == 0 and entry.name not in self._wanted and entry.ready.is_set():
                    self._unload(entry)
            missing = [n for n in names if n not in self._entries][: max(0, self.max_loaded - len(self._entries))]
        for name in missing:
            digest, key = names[name]
            try:
                self.release(self.acquire(digest, key))
            except TeachloopError as err:
                log.warning("could not preload adapter %s: %s", digest, err)

    def loaded(self) -> list[LoadedAdapter]:
        """The adapters on the engine now."""
        with self._lock:
            return [
                LoadedAdapter(e.name, e.digest, e.refs, e.name in self._wanted)
                for e in self._entries.values()
                if e.ready.is_set() and e.error is None
            ]

    # ------------------------------------------------------------------ internals
    def _load(self, entry: _Entry, blob_key: str) -> None:
        try:
            if not self.engine.has_adapter(entry.name):
                with tempfile.TemporaryDirectory(prefix="teachloop-adapter-") as tmp:
                    try:
                        folder = self.blobs.get_dir(blob_key, Path(tmp) / "adapter")
                    except TeachloopError as err:
                        raise ModelError(f"adapter {entry.digest} cannot be fetched from the blob store: {err}") from None
                    self.engine.load_adapter(entry.name, folder)
        except TeachloopError as err:
            entry.error = err if isinstance(err, ModelError | ServiceUnavailable) else ModelError(
                f"adapter {entry.digest} cannot be loaded: {err}"
            )
        except Exception as err:  # a torch/PEFT failure: report it as this adapter's
            log.exception("loading adapter %s failed", entry.digest)
            entry.error = ModelError(f"adapter {entry.digest} cannot be loaded: {err}")
        finally:
            if entry.error is not None:
                with self._lock:
                    if self._entries.get(entry.name) is entry:
                        del self._entries[entry.name]
            entry.ready.set()

    def _make_room(self, exclude: str) -> None:
        """Evict idle adapters (least recently used first) until one more fits; called with the lock held."""
        while len(self._entries) >= self.max_loaded:
            idle = [e for e in self._entries.values() if e.refs == 0 and e.ready.is_set() and e.name != exclude]
            if not idle:
                raise ServiceUnavailable(
                    f"all {self.max_loaded} adapter slots are busy serving other requests; retry shortly"
                )
            self._unload(min(idle, key=lambda e: (e.name in self._wanted, e.last_used)))

    def _unload(self, entry: _Entry) -> None:
        """Remove ``entry`` from the engine; called with the lock held (waits for the current decode step)."""
        self._entries.pop(entry.name, None)
        try:
            if self.engine.has_adapter(entry.name):
                self.engine.delete_adapter(entry.name)
        except Exception:  # the engine keeps it; nothing references it any more
            log.exception("unloading adapter %s failed", entry.name)


__all__ = ["AdapterEngine", "AdapterPool", "LoadedAdapter", "engine_name"]

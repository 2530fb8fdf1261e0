"""The runtime loader: one way to open the store and blob store, and one cache of loaded models.

``open_store(settings)`` connects to the configured database (which must be
migrated) and blob store; ``AppDeps.from_settings``, the worker and the CLI
open them here. ``ModelCache`` hands out the engine and renderer of a base
model by name, loading each through ``engine.factory.load_model`` (which
honours ``TEACHLOOP_ENGINE=fake``) at most once per process; the engine the
server already serves is reused for its own base model, so ``teachloop up``'s
worker trains and evaluates on the serving engine instead of loading a copy.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from teachloop.core.settings import Settings
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database

if TYPE_CHECKING:
    from teachloop.engine.base import Engine
    from teachloop.render import Renderer


def open_store(settings: Settings) -> tuple[Database, BlobStore]:
    """The configured database (``require_migrated``) and blob store; the caller closes the database."""
    database = Database.connect(settings.database_url)
    try:
        database.require_migrated()
        return database, BlobStore(settings.blob_url)
    except BaseException:
        database.close()
        raise


class ModelCache:
    """Loaded base models of this process, by name (thread-safe; one load per name)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._models: dict[str, tuple[Engine, Renderer]] = {}

    def add(self, name: str, engine: Engine, renderer: Renderer) -> None:
        """Reuse an engine loaded elsewhere (the serving engine) for model ``name``."""
        with self._lock:
            self._models.setdefault(name, (engine, renderer))

    def get(self, name: str | None = None) -> tuple[Engine, Renderer]:
        """The engine and renderer of ``name`` (default: the configured model), loading it on first use."""
        name = name or self.settings.model
        with self._lock:
            if name not in self._models:
                from teachloop.engine.factory import load_model

                loaded = load_model(self.settings, name, pull=False)
                self._models[name] = (loaded.engine, loaded.renderer)
            return self._models[name]


__all__ = ["ModelCache", "open_store"]

"""``AppDeps``: everything the HTTP app needs, built once and passed in.

The app never reaches for globals or environment variables: ``create_app(deps)``
gets one of these (tests build it on an in-memory database). Later layers add
optional fields here (the engine, the deployment registry, ...) rather than new
constructor arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from teachloop.core.settings import Settings
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.queue import JobQueue

if TYPE_CHECKING:  # the engine and serving runtime are built by the CLI (torch stays unimported here)
    from teachloop.engine.base import Engine
    from teachloop.serve.service import Serving


@dataclass
class AppDeps:
    """The app's dependencies.

    Attributes:
        settings: the resolved settings.
        database: the system of record (migrated).
        blobs: where adapters and dataset snapshots live.
        engine: the loaded engine, when this process has one (shared by serving and training).
        serving: the serving runtime (``serve.Serving``); None gives one without an engine
            (deployments, traces and feedback work; chat completions answer 503).
        queue: the job queue over ``database`` (derived, not passed).
    """

    settings: Settings
    database: Database
    blobs: BlobStore
    engine: Engine | None = None
    serving: Serving | None = None
    queue: JobQueue = field(init=False)

    def __post_init__(self) -> None:
        self.queue = JobQueue(self.database)

    @classmethod
    def from_settings(cls, settings: Settings) -> AppDeps:
        """Connect to the configured database (which must be migrated) and blob store (``runtime.open_store``)."""
        from teachloop.app.runtime import open_store

        database, blobs = open_store(settings)
        return cls(settings=settings, database=database, blobs=blobs)

    def close(self) -> None:
        """Stop serving (if any), then release the database connections."""
        if self.serving is not None:
            self.serving.close()
        self.database.close()


__all__ = ["AppDeps"]

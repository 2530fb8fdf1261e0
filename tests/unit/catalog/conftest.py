"""Catalog fixtures: the loop's migrated SQLite store with one organisation and a deployment (``store``)."""

from __future__ import annotations

from tests.unit.loop.conftest import Store, add_trace, store

__all__ = ["Store", "add_trace", "store"]

"""Recording dataset versions: the canonical JSONL blob first, then the immutable ``Dataset`` row.

``record_snapshot`` is the one way a dataset version comes to exist, whoever
makes it (the loop's curated snapshots, ``catalog.imports``, and later the
expert workforce's label batches): it encodes the rows canonically
(``store.repos.datasets.encode_snapshot``), stores the bytes in the blob store
under their content key, then records the next version of ``name`` with every
row's lineage (source, trace, expert, environment, score, licence). The row is
the commit point: a failure after the blob write leaves an unreferenced,
content-keyed blob and no version. Refusals (bad name, mixed origins, labels
without an expert) are the repository's ``InvalidInput``. Knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.repos.datasets import Datasets, NewRow, encode_snapshot
from teachloop.store.schema.datasets import Dataset


def record_snapshot(database: Database, blobs: BlobStore, org_id: str, *, name: str, kind: str,
                    rows: Sequence[NewRow], source: dict[str, Any] | None = None, origin: str = "loop",
                    actor: str = "system") -> tuple[Dataset, bool]:
    """Record ``rows`` as the next version of dataset ``name``; returns (dataset, created).

    Rows whose canonical encoding equals an existing version of ``name`` are that version (created False).
    """
    data, _ = encode_snapshot(kind, rows)
    key = blobs.put_content(data)
    with database.session() as s:
        return Datasets(s).create(org_id, name=name, kind=kind, rows=rows, blob_key=key, source=source,
                                  actor=actor, origin=origin)


__all__ = ["record_snapshot"]

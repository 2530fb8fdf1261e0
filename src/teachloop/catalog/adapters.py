"""Publishing adapter versions: a PEFT folder into the blob store, then the ``AdapterVersion`` row.

``folder_digest(path)`` (``core.files``) is the content digest of an adapter
folder: every publisher records the same digest for the same bytes, so
``teachloop deploy push`` and the loop agree, and equal folders share one blob
and one engine adapter. ``adapter_key(org_id, digest)`` is where the folder
lies in the blob store (content-keyed per organisation).

``publish_adapter`` checks the folder is a PEFT adapter (``adapter_config.json``),
stores it under its key unless it is already there, then records the next
version of adapter ``name`` -- the row is the commit point, so a version never
points at a half-written folder, and publishing the same digest again returns
the existing version (``created`` False). It runs inside the caller's session
and never commits. ``publish_run_adapter`` does the same for the final adapter
of a completed training run (``--run RUN_ID``: no need to find the run's folder
in the blob store). Knows nothing of engines, deployments' traffic or HTTP.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.core.files import folder_digest
from teachloop.store.blobs import BlobStore
from teachloop.store.repos.deployments import AdapterVersions
from teachloop.store.schema.deployments import AdapterVersion
from teachloop.store.schema.runs import TrainingRun


def adapter_key(org_id: str, digest: str) -> str:
    """The blob key of the adapter folder with ``digest`` in organisation ``org_id``."""
    return f"orgs/{org_id}/adapters/{digest.removeprefix('sha256:')}"


def publish_adapter(
    session: Session,
    blobs: BlobStore,
    org_id: str,
    *,
    name: str,
    folder: Path,
    base_model: str,
    source_run_id: str | None = None,
    info: dict[str, Any] | None = None,
    actor: str = "system",
) -> tuple[AdapterVersion, bool]:
    """Store the PEFT folder ``folder`` as the next version of adapter ``name``; returns (version, created)."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise InvalidInput(f"{folder} is not a PEFT adapter folder (no adapter_config.json)", param="path")
    digest = folder_digest(folder)
    key = adapter_key(org_id, digest)
    if not blobs.exists(key):
        blobs.put_dir(key, folder)
    return AdapterVersions(session).publish(
        org_id, name=name, digest=digest, blob_key=key, base_model=base_model, source_run_id=source_run_id,
        info=info, actor=actor,
    )


def publish_run_adapter(
    session: Session, blobs: BlobStore, org_id: str, run_id: str, *, name: str, actor: str = "system",
) -> tuple[AdapterVersion, bool]:
    """Publish the final adapter of run ``run_id`` as the next version of adapter ``name``; (version, created).

    ``NotFound`` for a missing run or another organisation's; ``InvalidInput`` (param ``run``) while the
    run has no final adapter (it is not completed).
    """
    run = session.scalars(select(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.org_id == org_id)).first()
    if run is None:
        raise NotFound(f"run {run_id!r} not found", param="run")
    if not run.final_adapter_key:
        raise InvalidInput(f"run {run_id} is {run.status} and has no final adapter yet; deploy it once it has "
                           "completed", param="run")
    with tempfile.TemporaryDirectory(prefix="teachloop-run-adapter-") as tmp:
        folder = Path(tmp) / "adapter"
        blobs.get_dir(run.final_adapter_key, folder)
        return publish_adapter(session, blobs, org_id, name=name, folder=folder, base_model=run.base_model,
                               source_run_id=run.id, info={"run": run.id, "run_name": run.name, "step": run.step},
                               actor=actor)


__all__ = ["adapter_key", "folder_digest", "publish_adapter", "publish_run_adapter"]

"""Serving tables: adapter versions, deployments and the history of deployment changes.

- ``AdapterVersion``: one immutable LoRA adapter (a PEFT folder in the blob store,
  keyed by its content ``digest``), numbered ``version`` 1, 2, ... within
  ``(org_id, name)``, trained on ``base_model``; ``source_run_id`` names the
  training run that made it, when one did. Rows never change once written.
- ``Deployment``: the name clients pass as ``model``, mapped to ``base_model`` plus
  an optional adapter version (none: the base model alone) and an optional
  canary (a second adapter version served to ``canary_percent`` % of users).
  ``revision`` counts changes, starting at 1.
- ``DeploymentChange``: one row per revision with the full state it set, so a
  rollback restores an earlier state exactly (append-only).
- ``UpstreamEndpoint``: an OpenAI-compatible server an arm can send requests to
  instead of a local adapter (issue 17): base URL, model, timeouts, retries and
  the API key *encrypted* (``key_ciphertext``, Fernet; the plain key is never
  stored). Immutable like adapter versions, so a rollback restores the exact
  upstream an earlier revision used. A deployment's primary arm is an upstream
  when ``upstream_id`` is set (then ``adapter_version_id`` is None), its canary
  when ``canary_upstream_id`` is; ``shadow_percent`` % of requests are also sent,
  unseen by the caller, to the shadow arm (``shadow_version_id`` or
  ``shadow_upstream_id``); ``prices`` maps model ids to ``core.upstream.ModelPrice``.

This module knows nothing of engines, blobs or HTTP.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, Integer, String, Text, UniqueConstraint, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, Timestamps, id_column, ref_column, utc_now

DEPLOYMENT_ACTIONS = ("create", "update", "rollback")


class AdapterVersion(OrgOwned, Base):
    """One immutable adapter version: a PEFT folder in the blob store, by digest."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("org_id", "name", "version"),
        Index("ix_adapter_versions_org_digest", "org_id", "digest"),
    )

    id: Mapped[str] = id_column("av")
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(71))
    blob_key: Mapped[str] = mapped_column(String(300))
    base_model: Mapped[str] = mapped_column(String(300))
    source_run_id: Mapped[str | None] = ref_column("training_runs.id", nullable=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"


class Deployment(OrgOwned, Timestamps, Base):
    """A served model name: base model + adapter version (+ canary)."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[str] = id_column("dep")
    name: Mapped[str] = mapped_column(String(100))
    base_model: Mapped[str] = mapped_column(String(300))
    adapter_version_id: Mapped[str | None] = ref_column("adapter_versions.id", nullable=True)
    canary_version_id: Mapped[str | None] = ref_column("adapter_versions.id", nullable=True)
    canary_percent: Mapped[int] = mapped_column(Integer, default=0)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    upstream_id: Mapped[str | None] = ref_column("upstream_endpoints.id", nullable=True)
    canary_upstream_id: Mapped[str | None] = ref_column("upstream_endpoints.id", nullable=True)
    shadow_version_id: Mapped[str | None] = ref_column("adapter_versions.id", nullable=True)
    shadow_upstream_id: Mapped[str | None] = ref_column("upstream_endpoints.id", nullable=True)
    shadow_percent: Mapped[int] = mapped_column(Integer, default=0)
    prices: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class UpstreamEndpoint(OrgOwned, Base):
    """An upstream OpenAI-compatible endpoint with its encrypted key (immutable)."""

    __tablename__ = "upstream_endpoints"

    id: Mapped[str] = id_column("ups")
    base_url: Mapped[str] = mapped_column(String(2000))
    model: Mapped[str] = mapped_column(String(300))
    key_ciphertext: Mapped[str] = mapped_column(Text)
    timeout_s: Mapped[float] = mapped_column(Float)
    connect_timeout_s: Mapped[float] = mapped_column(Float)
    max_retries: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class DeploymentChange(OrgOwned, Base):
    """The state a deployment was set to at one revision (append-only)."""

    __tablename__ = "deployment_changes"
    __table_args__ = (UniqueConstraint("deployment_id", "revision"),)

    id: Mapped[str] = id_column("dch")
    deployment_id: Mapped[str] = ref_column("deployments.id")
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(20))
    state: Mapped[dict[str, Any]] = mapped_column(JSONType)
    restored_from: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(default=utc_now)


def _refuse(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    raise PermissionError(f"{type(target).__name__} rows are immutable; refusing to change {target.id}")


for _immutable in (AdapterVersion, DeploymentChange, UpstreamEndpoint):
    event.listen(_immutable, "before_update", _refuse)
    event.listen(_immutable, "before_delete", _refuse)


__all__ = ["DEPLOYMENT_ACTIONS", "AdapterVersion", "Deployment", "DeploymentChange", "UpstreamEndpoint"]

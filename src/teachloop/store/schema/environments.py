"""Environment hub tables: immutable published environment versions, and evaluation results.

An ``EnvironmentVersion`` is one published version of an environment package,
owned by the publishing organisation: ``(org_id, name, version)`` is unique,
``digest`` is the content hash of the package files (``envs.manifest.package_hash``),
``blob_key`` the content key of the package archive in the blob store, and
``manifest`` the JSON of ``envs.manifest.Manifest``, and ``checks`` the
publish-time check report (``envs.check.CheckReport.to_dict()``; null for
versions published before it was recorded). Rows never change except
for yanking (the ORM refuses any other update, and every delete).

An ``EnvironmentEval`` is one ``teachloop env eval`` result, pinned to the
digest of the environment that was run. This module knows nothing of how
packages are checked, archived or loaded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, Integer, String, UniqueConstraint, event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, id_column, utc_now

_MUTABLE = frozenset({"yanked", "yanked_at", "yank_reason"})


class EnvironmentVersion(OrgOwned, Base):
    """One immutable published version of an environment package."""

    __tablename__ = "environment_versions"
    __table_args__ = (
        UniqueConstraint("org_id", "name", "version"),
        Index("ix_environment_versions_org_name", "org_id", "name"),
    )

    id: Mapped[str] = id_column("envv")
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(71), index=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType)
    blob_key: Mapped[str] = mapped_column(String(200))
    checks: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    published_by: Mapped[str] = mapped_column(String(200))
    yanked: Mapped[bool] = mapped_column(default=False)
    yanked_at: Mapped[datetime | None]
    yank_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"


class EnvironmentEval(OrgOwned, Base):
    """One stored evaluation of an environment (pinned by digest) against a model."""

    __tablename__ = "environment_evals"
    __table_args__ = (Index("ix_environment_evals_org_env", "org_id", "env_name"),)

    id: Mapped[str] = id_column("enve")
    env_name: Mapped[str] = mapped_column(String(200))
    env_version: Mapped[str | None] = mapped_column(String(64))
    env_digest: Mapped[str] = mapped_column(String(71))
    model: Mapped[str] = mapped_column(String(300))
    n_tasks: Mapped[int] = mapped_column(Integer)
    n_episodes: Mapped[int] = mapped_column(Integer)
    mean: Mapped[float] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    report: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


def _refuse_update(mapper: Mapper[Any], connection: Connection, target: EnvironmentVersion) -> None:
    state = inspect(target)
    changed = {a.key for a in state.attrs if a.history.has_changes()}
    if changed - _MUTABLE:
        raise PermissionError(
            f"environment version {target.ref} is immutable; refusing to change {sorted(changed - _MUTABLE)}"
        )


def _refuse_delete(mapper: Mapper[Any], connection: Connection, target: EnvironmentVersion) -> None:
    raise PermissionError(f"environment version {target.ref} is immutable; yank it instead of deleting it")


event.listen(EnvironmentVersion, "before_update", _refuse_update)
event.listen(EnvironmentVersion, "before_delete", _refuse_delete)


__all__ = ["EnvironmentEval", "EnvironmentVersion"]

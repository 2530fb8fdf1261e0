"""The environment registry: publish, resolve, list and yank environment versions; store evaluations.

``EnvironmentRegistry(session)`` works inside a caller-owned session and
never commits. Every read takes the ``org_id`` and filters by it: another
organisation's environment is ``NotFound`` exactly like a missing one.

Immutability: ``publish`` of a ``name@version`` that exists with the same
digest returns the existing row (idempotent); with another digest it raises
``Conflict`` and changes nothing. Resolution always ends at one row, hence one
digest: ``name@version``, ``name@sha256:...`` (a digest or a unique prefix of
at least 12 hex digits), or a bare ``name`` -- the highest non-yanked semver
at the time of the call, which the caller records by digest. A yanked
version resolves only when named exactly. This module knows nothing of
package contents, checks or blobs beyond their keys.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.environments import EnvironmentEval, EnvironmentVersion

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


def semver_key(version: str) -> tuple[int, int, int, int, tuple[Any, ...]]:
    """A sort key for semver strings: releases after their pre-releases."""
    m = _SEMVER.match(version)
    if not m:
        raise InvalidInput(f"version {version!r} is not semver (MAJOR.MINOR.PATCH)", param="version")
    pre = m.group(4)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return int(m[1]), int(m[2]), int(m[3]), 0 if pre else 1, parts


def split_ref(ref: str) -> tuple[str, str | None]:
    """``name[@version|@sha256:...]`` -> (name, version-or-digest or None)."""
    name, _, pin = ref.strip().partition("@")
    if not _NAME.match(name):
        raise InvalidInput(f"not an environment name: {name!r}", param="name")
    return name, pin or None


class EnvironmentRegistry:
    """Published environment versions and stored evaluations, within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)

    def publish(
        self, org_id: str, *, name: str, version: str, digest: str, manifest: dict[str, Any], blob_key: str,
        checks: dict[str, Any] | None = None, actor: str = "system",
    ) -> tuple[EnvironmentVersion, bool]:
        """Store a new immutable version; returns (row, created). ``Conflict`` if the version exists with other content.

        ``checks`` is the publish-time check report, stored with the version (an existing one keeps its own).
        """
        split_ref(name)
        semver_key(version)
        if not _DIGEST.match(digest):
            raise InvalidInput(f"digest must be sha256:<64 hex>, got {digest!r}", param="digest")
        existing = self._find(org_id, name, version)
        if existing is not None:
            if existing.digest == digest:
                return existing, False
            raise Conflict(
                f"{name}@{version} is already published with different content ({existing.digest[:19]}…, this "
                f"package is {digest[:19]}…); published versions are immutable: bump the version",
                param="version",
            )
        row = EnvironmentVersion(org_id=org_id, name=name, version=version, digest=digest, manifest=manifest,
                                 blob_key=blob_key, checks=checks, published_by=actor)
        self.session.add(row)
        self.session.flush()
        self.audit.record(org_id, actor, "env.publish", row.id, {"ref": row.ref, "digest": digest})
        return row, True

    def _find(self, org_id: str, name: str, version: str) -> EnvironmentVersion | None:
        return self.session.scalar(select(EnvironmentVersion).where(
            EnvironmentVersion.org_id == org_id, EnvironmentVersion.name == name, EnvironmentVersion.version == version))

    def versions(self, org_id: str, name: str | None = None) -> list[EnvironmentVersion]:
        """The organisation's versions (of ``name``), by name then newest semver first."""
        query = select(EnvironmentVersion).where(EnvironmentVersion.org_id == org_id)
        if name is not None:
            query = query.where(EnvironmentVersion.name == name)
        rows = list(self.session.scalars(query))
        rows.sort(key=lambda r: semver_key(r.version), reverse=True)
        rows.sort(key=lambda r: r.name)
        return rows

    def resolve(self, org_id: str, ref: str) -> EnvironmentVersion:
        """The one version ``ref`` names (see the module docstring); ``NotFound`` otherwise."""
        name, pin = split_ref(ref)
        rows = self.versions(org_id, name)
        if not rows:
            raise NotFound(f"no published environment {name!r} in this organisation", param="name")
        if pin is None:
            live = [r for r in rows if not r.yanked]
            if not live:
                raise NotFound(f"every version of {name!r} is yanked; name one exactly ({rows[0].ref})", param="name")
            return live[0]
        if pin.startswith("sha256:"):
            hits = [r for r in rows if r.digest.startswith(pin)]
            if len(pin) < 19 or len(hits) != 1:
                raise NotFound(f"no single version of {name!r} has digest {pin!r}", param="version")
            return hits[0]
        for r in rows:
            if r.version == pin:
                return r
        raise NotFound(f"{name}@{pin} is not published; versions: {', '.join(r.version for r in rows[:10])}",
                       param="version")

    def yank(self, org_id: str, ref: str, *, reason: str | None = None, actor: str = "system") -> EnvironmentVersion:
        """Mark ``name@version`` yanked (it stays resolvable by exact version, never by bare name)."""
        _, pin = split_ref(ref)
        if pin is None or pin.startswith("sha256:"):
            raise InvalidInput(f"yank needs NAME@VERSION, got {ref!r}", param="ref")
        row = self.resolve(org_id, ref)
        if not row.yanked:
            row.yanked, row.yanked_at, row.yank_reason = True, utc_now(), reason[:500] if reason else None
            self.session.flush()
            self.audit.record(org_id, actor, "env.yank", row.id, {"ref": row.ref, "reason": reason})
        return row

    def record_eval(
        self, org_id: str, *, env_name: str, env_version: str | None, env_digest: str, model: str,
        report: dict[str, Any], actor: str = "system",
    ) -> EnvironmentEval:
        """Store one evaluation report (an ``envs.eval.EvalReport`` as JSON)."""
        row = EnvironmentEval(
            org_id=org_id, env_name=env_name[:200], env_version=env_version, env_digest=env_digest, model=model[:300],
            n_tasks=int(report["n_tasks"]), n_episodes=int(report["n_episodes"]), mean=float(report["mean"]),
            ci_low=report.get("ci_low"), ci_high=report.get("ci_high"), report=report, created_by=actor,
        )
        self.session.add(row)
        self.session.flush()
        return row

    def evals(self, org_id: str, env_name: str | None = None, *, limit: int = 50) -> list[EnvironmentEval]:
        """The organisation's stored evaluations (of ``env_name``), newest first."""
        query = select(EnvironmentEval).where(EnvironmentEval.org_id == org_id)
        if env_name is not None:
            query = query.where(EnvironmentEval.env_name == env_name)
        query = query.order_by(EnvironmentEval.created_at.desc(), EnvironmentEval.id.desc()).limit(limit)
        return list(self.session.scalars(query))


__all__ = ["EnvironmentRegistry", "semver_key", "split_ref"]

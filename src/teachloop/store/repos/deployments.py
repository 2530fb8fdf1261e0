"""The deployment registry: adapter versions, deployments, their history and rollback.

``AdapterVersions(session)`` and ``Deployments(session)`` work inside a
caller-owned session and never commit. Every tenant read takes the ``org_id``:
another organisation's adapter or deployment is ``NotFound`` exactly like a
missing one.

Adapter versions are immutable. ``publish`` numbers them 1, 2, ... per
``(org, name)``; publishing content whose digest that name already has returns
the existing version (idempotent). A reference is ``name@N``, a bare ``name``
(its newest version at the time of the call) or an ``av_...`` id.

A deployment's state is ``DeploymentState`` (base model, adapter version,
canary version, canary percent). Every change writes a ``DeploymentChange`` row
with the whole new state and bumps ``revision``; a change that sets the state
it already has writes nothing. ``rollback`` walks back through the effective
history: each rollback restores the state in force before the one now in force
(so two rollbacks after updates A -> B -> C give B, then A), or an explicit
``to_revision``. ``states_at`` reads the state at past revisions back from the
change rows. This module knows nothing of engines, blobs or HTTP; it stores
blob keys the caller wrote.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Row, bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.core.ids import is_id
from teachloop.store.repos.audit import AuditLog
from teachloop.store.schema.deployments import AdapterVersion, Deployment, DeploymentChange, UpstreamEndpoint
from teachloop.store.schema.runs import TrainingRun

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_RULE = "1-100 characters of letters, digits, '.', '_', ':' and '-', starting with a letter or digit"


def check_name(name: str, param: str = "name") -> str:
    """``name`` if it is a valid deployment or adapter name; ``InvalidInput`` otherwise."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(f"invalid name {name!r}: use {_NAME_RULE}", param=param)
    return name


@dataclass(frozen=True)
class DeploymentState:
    """What a deployment serves.

    Attributes:
        base_model: the base model id the adapters were trained on.
        adapter_version_id: the adapter version served (None: the base model alone).
        canary_version_id: a second adapter version served to ``canary_percent`` % of users.
        canary_percent: 0-100; 0 when there is no canary.
        upstream_id: the upstream endpoint the primary arm sends requests to (then no adapter version).
        canary_upstream_id: an upstream endpoint as the canary arm (instead of ``canary_version_id``).
        shadow_version_id / shadow_upstream_id: the shadow arm (one of them), sent ``shadow_percent`` % of
            requests in the background; the caller only ever sees the primary's (or canary's) answer.
        prices: model id -> ``core.upstream.ModelPrice`` fields, the cost of each arm's tokens.
    """

    base_model: str
    adapter_version_id: str | None = None
    canary_version_id: str | None = None
    canary_percent: int = 0
    upstream_id: str | None = None
    canary_upstream_id: str | None = None
    shadow_version_id: str | None = None
    shadow_upstream_id: str | None = None
    shadow_percent: int = 0
    prices: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def to_json(self) -> dict[str, Any]:
        """The state as stored in ``DeploymentChange.state``."""
        return asdict(self)

    @classmethod
    def of(cls, row: Deployment) -> DeploymentState:
        """The current state of ``row``."""
        return cls(row.base_model, row.adapter_version_id, row.canary_version_id, row.canary_percent,
                   row.upstream_id, row.canary_upstream_id, row.shadow_version_id, row.shadow_upstream_id,
                   row.shadow_percent or 0, dict(row.prices or {}))


class AdapterVersions:
    """Immutable adapter versions within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)

    def publish(
        self,
        org_id: str,
        *,
        name: str,
        digest: str,
        blob_key: str,
        base_model: str,
        source_run_id: str | None = None,
        info: dict[str, Any] | None = None,
        actor: str = "system",
    ) -> tuple[AdapterVersion, bool]:
        """Record a new version of adapter ``name`` (returns (row, created)); same digest -> the existing row.

        Write the folder to the blob store *before* calling this: the row is the commit point.
        """
        check_name(name)
        if not _DIGEST_RE.match(digest):
            raise InvalidInput(f"digest must be sha256:<64 hex>, got {digest!r}", param="digest")
        if not base_model:
            raise InvalidInput("an adapter version needs its base model", param="base_model")
        if source_run_id is not None:
            run = self.session.get(TrainingRun, source_run_id)
            if run is None or run.org_id != org_id:
                raise NotFound(f"training run {source_run_id!r} not found", param="source_run_id")
        existing = self.session.scalar(
            select(AdapterVersion).where(
                AdapterVersion.org_id == org_id, AdapterVersion.name == name, AdapterVersion.digest == digest
            )
        )
        if existing is not None:
            if existing.base_model != base_model:
                raise Conflict(
                    f"{existing.ref} has this content for base model {existing.base_model!r}, not {base_model!r}",
                    param="base_model",
                )
            return existing, False
        latest = self.session.scalar(
            select(func.max(AdapterVersion.version)).where(
                AdapterVersion.org_id == org_id, AdapterVersion.name == name
            )
        )
        row = AdapterVersion(
            org_id=org_id, name=name, version=int(latest or 0) + 1, digest=digest, blob_key=blob_key,
            base_model=base_model, source_run_id=source_run_id, info=dict(info or {}), created_by=actor,
        )
        self.session.add(row)
        self.session.flush()
        self.audit.record(org_id, actor, "adapter.publish", row.id, {"ref": row.ref, "digest": digest})
        return row, True

    def get(self, org_id: str, version_id: str) -> AdapterVersion:
        """The version with this id in the organisation; ``NotFound`` otherwise."""
        row = self.session.get(AdapterVersion, version_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"adapter version {version_id!r} not found", param="adapter")
        return row

    def resolve(self, org_id: str, ref: str) -> AdapterVersion:
        """The version ``ref`` names: ``av_...``, ``name@N`` or ``name`` (newest); ``NotFound`` otherwise."""
        ref = (ref or "").strip()
        if is_id(ref, "av"):
            return self.get(org_id, ref)
        name, _, pin = ref.partition("@")
        check_name(name, "adapter")
        query = select(AdapterVersion).where(AdapterVersion.org_id == org_id, AdapterVersion.name == name)
        if pin:
            if not pin.isdigit():
                raise InvalidInput(f"adapter version must be a number: {ref!r} (use NAME@N)", param="adapter")
            row = self.session.scalar(query.where(AdapterVersion.version == int(pin)))
        else:
            row = self.session.scalar(query.order_by(AdapterVersion.version.desc()).limit(1))
        if row is None:
            raise NotFound(f"adapter {ref!r} not found", param="adapter")
        return row

    def list(self, org_id: str, name: str | None = None, *, limit: int = 200) -> list[AdapterVersion]:
        """The organisation's versions (of ``name``), by name, newest version first."""
        query = select(AdapterVersion).where(AdapterVersion.org_id == org_id)
        if name is not None:
            query = query.where(AdapterVersion.name == name)
        query = query.order_by(AdapterVersion.name, AdapterVersion.version.desc()).limit(limit)
        return list(self.session.scalars(query))

    def by_ids(self, org_id: str, ids: set[str]) -> dict[str, AdapterVersion]:
        """The organisation's versions among ``ids``, by id."""
        if not ids:
            return {}
        rows = self.session.scalars(
            select(AdapterVersion).where(AdapterVersion.org_id == org_id, AdapterVersion.id.in_(ids))
        )
        return {r.id: r for r in rows}


#: A deployment by organisation and name, as Core columns (``Deployments.find_row``).
_FIND_ROW = select(*Deployment.__table__.columns).where(Deployment.org_id == bindparam("org_id"),
                                                         Deployment.name == bindparam("name"))


def find_deployment_row(conn: Connection, org_id: str, name: str) -> Row[Any] | None:
    """``Deployments.find_row`` on a Core connection (``Database.connection``: no ORM session per request)."""
    return conn.execute(_FIND_ROW, {"org_id": org_id, "name": name}).first()


class Deployments:
    """Deployments and their change history within a caller-owned session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audit = AuditLog(session)
        self.adapters = AdapterVersions(session)

    # -- reads ------------------------------------------------------------------------------------

    def get(self, org_id: str, name: str) -> Deployment:
        """The organisation's deployment called ``name``; ``NotFound`` otherwise."""
        row = self.find(org_id, name)
        if row is None:
            raise NotFound(f"deployment {name!r} not found", param="model")
        return row

    def find(self, org_id: str, name: str) -> Deployment | None:
        """The organisation's deployment called ``name``, or None."""
        return self.session.scalar(select(Deployment).where(Deployment.org_id == org_id, Deployment.name == name))

    def find_row(self, org_id: str, name: str) -> Row[Any] | None:
        """``find`` as a read-only Core row (the ``Deployment`` columns as attributes, no ORM object): what the
        serving path reads for every request."""
        return find_deployment_row(self.session.connection(), org_id, name)

    def list(self, org_id: str) -> list[Deployment]:
        """The organisation's deployments, by name."""
        return list(self.session.scalars(select(Deployment).where(Deployment.org_id == org_id).order_by(Deployment.name)))

    def history(self, org_id: str, name: str) -> builtins.list[DeploymentChange]:
        """Every change of deployment ``name``, newest first."""
        row = self.get(org_id, name)
        return list(
            self.session.scalars(
                select(DeploymentChange)
                .where(DeploymentChange.deployment_id == row.id)
                .order_by(DeploymentChange.revision.desc())
            )
        )

    def states_at(self, org_id: str, deployment_id: str, revisions: set[int]) -> dict[int, DeploymentState]:
        """The deployment's state at each of ``revisions``, from its append-only change rows (one query); a
        revision without a row is left out. How a record that kept only a revision (a loop iteration's
        ``revisions.before``) learns what was served then -- an upstream primary included."""
        if not revisions:
            return {}
        changes = self.session.scalars(select(DeploymentChange).where(
            DeploymentChange.org_id == org_id, DeploymentChange.deployment_id == deployment_id,
            DeploymentChange.revision.in_(revisions)))
        return {c.revision: DeploymentState(**c.state) for c in changes}

    def upstreams(self, org_id: str, ids: set[str]) -> dict[str, UpstreamEndpoint]:
        """The organisation's upstream endpoints among ``ids``, by id (their keys stay encrypted)."""
        if not ids:
            return {}
        rows = self.session.scalars(
            select(UpstreamEndpoint).where(UpstreamEndpoint.org_id == org_id, UpstreamEndpoint.id.in_(ids)))
        return {r.id: r for r in rows}

    def served_versions(self, base_model: str) -> builtins.list[AdapterVersion]:
        """Every adapter version some deployment of ``base_model`` serves, in any organisation (system use)."""
        ids: set[str] = set()
        for primary, canary in self.session.execute(
            select(Deployment.adapter_version_id, Deployment.canary_version_id).where(
                Deployment.base_model == base_model
            )
        ):
            ids.update(i for i in (primary, canary) if i)
        for (shadow,) in self.session.execute(
            select(Deployment.shadow_version_id).where(Deployment.base_model == base_model)
        ):
            ids.update(i for i in (shadow,) if i)
        if not ids:
            return []
        return list(self.session.scalars(select(AdapterVersion).where(AdapterVersion.id.in_(ids))))

    # -- writes -----------------------------------------------------------------------------------

    def create(self, org_id: str, name: str, state: DeploymentState, *, actor: str = "system") -> Deployment:
        """A new deployment at revision 1; ``Conflict`` if the name is taken."""
        check_name(name)
        self._check_state(org_id, state)
        if self.find(org_id, name) is not None:
            raise Conflict(f"deployment {name!r} already exists; use update", param="name")
        row = Deployment(
            org_id=org_id, name=name, base_model=state.base_model, adapter_version_id=state.adapter_version_id,
            canary_version_id=state.canary_version_id, canary_percent=state.canary_percent, revision=1,
            upstream_id=state.upstream_id, canary_upstream_id=state.canary_upstream_id,
            shadow_version_id=state.shadow_version_id, shadow_upstream_id=state.shadow_upstream_id,
            shadow_percent=state.shadow_percent, prices=dict(state.prices),
        )
        self.session.add(row)
        self.session.flush()
        self._record(row, "create", None, actor)
        return row

    def update(self, org_id: str, name: str, state: DeploymentState, *, actor: str = "system") -> tuple[Deployment, bool]:
        """Set the state of deployment ``name``; returns (row, changed). Setting the current state writes nothing."""
        row = self._locked(org_id, name)
        if state.base_model != row.base_model:
            raise InvalidInput(
                f"deployment {name!r} serves base model {row.base_model!r}; create another deployment for "
                f"{state.base_model!r}",
                param="base_model",
            )
        self._check_state(org_id, state)
        if state == DeploymentState.of(row):
            return row, False
        self._apply(row, state)
        self._record(row, "update", None, actor)
        return row, True

    def rollback(
        self, org_id: str, name: str, *, to_revision: int | None = None, actor: str = "system"
    ) -> Deployment:
        """Restore an earlier state (see the module docstring) as a new revision; ``Conflict`` if there is none."""
        row = self._locked(org_id, name)
        changes = {c.revision: c for c in self.history(org_id, name)}
        if to_revision is None:
            target = self._origin(changes, row.revision) - 1
            if target < 1:
                raise Conflict(f"deployment {name!r} has no earlier state to roll back to", param="name")
        else:
            if to_revision not in changes:
                raise NotFound(
                    f"deployment {name!r} has no revision {to_revision} (revisions 1-{row.revision})",
                    param="to_revision",
                )
            target = to_revision
        state = DeploymentState(**changes[target].state)
        if state.adapter_version_id:
            self.adapters.get(org_id, state.adapter_version_id)
        self._apply(row, state)
        self._record(row, "rollback", target, actor)
        return row

    # -- internals --------------------------------------------------------------------------------

    def _locked(self, org_id: str, name: str) -> Deployment:
        row = self.session.scalar(
            select(Deployment).where(Deployment.org_id == org_id, Deployment.name == name).with_for_update()
        )
        if row is None:
            raise NotFound(f"deployment {name!r} not found", param="name")
        return row

    @staticmethod
    def _origin(changes: dict[int, DeploymentChange], revision: int) -> int:
        """The revision whose state ``revision`` carries (following rollbacks to what they restored)."""
        seen = set()
        while revision in changes and changes[revision].restored_from is not None and revision not in seen:
            seen.add(revision)
            revision = int(changes[revision].restored_from or 0)
        return revision

    def _check_state(self, org_id: str, state: DeploymentState) -> None:
        if not state.base_model or len(state.base_model) > 300:
            raise InvalidInput("base_model must be 1-300 characters", param="base_model")
        if not 0 <= state.canary_percent <= 100:
            raise InvalidInput(f"canary_percent must be 0-100, got {state.canary_percent}", param="canary_percent")
        if state.canary_version_id is None and state.canary_upstream_id is None and state.canary_percent:
            raise InvalidInput("canary_percent needs a canary adapter version", param="canary_percent")
        if state.upstream_id is not None and state.adapter_version_id is not None:
            raise InvalidInput("the primary arm is an adapter or an upstream, not both", param="upstream")
        if state.canary_upstream_id is not None and state.canary_version_id is not None:
            raise InvalidInput("the canary is an adapter or an upstream, not both", param="canary.upstream")
        if state.shadow_upstream_id is not None and state.shadow_version_id is not None:
            raise InvalidInput("the shadow is an adapter or an upstream, not both", param="shadow.upstream")
        if not 0 <= state.shadow_percent <= 100:
            raise InvalidInput(f"shadow percent must be 0-100, got {state.shadow_percent}", param="shadow.percent")
        if state.shadow_version_id is None and state.shadow_upstream_id is None and state.shadow_percent:
            raise InvalidInput("shadow percent needs a shadow arm", param="shadow.percent")
        for param, upstream_id in (("upstream", state.upstream_id), ("canary.upstream", state.canary_upstream_id),
                                   ("shadow.upstream", state.shadow_upstream_id)):
            if upstream_id is not None:
                upstream = self.session.get(UpstreamEndpoint, upstream_id)
                if upstream is None or upstream.org_id != org_id:
                    raise NotFound(f"upstream {upstream_id!r} not found", param=param)
        for param, version_id in (("adapter", state.adapter_version_id), ("canary", state.canary_version_id),
                                  ("shadow.adapter", state.shadow_version_id)):
            if version_id is None:
                continue
            version = self.adapters.get(org_id, version_id)
            if version.base_model != state.base_model:
                raise InvalidInput(
                    f"adapter {version.ref} was trained on {version.base_model!r}, not {state.base_model!r}",
                    param=param,
                )

    @staticmethod
    def _apply(row: Deployment, state: DeploymentState) -> None:
        row.adapter_version_id = state.adapter_version_id
        row.canary_version_id = state.canary_version_id
        row.canary_percent = state.canary_percent
        row.upstream_id = state.upstream_id
        row.canary_upstream_id = state.canary_upstream_id
        row.shadow_version_id = state.shadow_version_id
        row.shadow_upstream_id = state.shadow_upstream_id
        row.shadow_percent = state.shadow_percent
        row.prices = dict(state.prices)
        row.revision += 1

    def _record(self, row: Deployment, action: str, restored_from: int | None, actor: str) -> None:
        state = DeploymentState.of(row).to_json()
        self.session.add(
            DeploymentChange(
                org_id=row.org_id, deployment_id=row.id, revision=row.revision, action=action, state=state,
                restored_from=restored_from, actor=actor,
            )
        )
        self.session.flush()
        detail = {"name": row.name, "revision": row.revision, **state}
        if restored_from is not None:
            detail["restored_from"] = restored_from
        self.audit.record(row.org_id, actor, f"deployment.{action}", row.id, detail)


__all__ = ["NAME_RE", "AdapterVersions", "DeploymentState", "Deployments", "check_name", "find_deployment_row"]

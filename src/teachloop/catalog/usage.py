"""Usage of another organisation's published resources: checked and metered at every use.

Contract. ``train``, ``loop`` and ``market`` sit on one layer and ``train``/``loop`` may not
import ``market``, yet every training use of a bought dataset and every run of a bought
environment must check an active entitlement and be metered (issue 13). This module is the
seam: a ``UsageGate`` protocol that ``market.entitlements.MarketUsageGate`` implements and
that the process wiring (``app``, ``cli`` -- layers that may import ``market``) installs with
``install_usage_gate``. Below it, callers only ever talk to this module:

- ``meter_use(session, org_id, kind, resource_id, action, ...)`` asks the installed gate. With
  no gate installed it does nothing and returns False (the behaviour before the marketplace: a
  grant alone lets an organisation use a dataset). The gate answers False too for a resource
  the organisation did not get through the marketplace (its own, or a grant made by hand);
  True when it checked an active entitlement and metered the use (usage-priced offers are
  billed from that meter); and raises ``Forbidden`` (403) naming the resource and why when
  the entitlement is revoked (refunded) or does not cover ``action`` -- the refusal is logged.
- ``require_entitled(session, org_id, kind, resource_id, action, label=...)`` -- read-only -- the
  check before a bought resource is *loaded* (an environment of another organisation, named
  ``OWNER/NAME@VERSION``): ``NotFound`` when no entitlement was ever held (worded like a name
  that does not exist, so nothing of the seller leaks), ``Forbidden`` naming why when it was
  revoked. The use itself is metered later with ``meter_use``, in the write session of the run.
- ``explain_unusable(session, org_id, ref, action)`` -- read-only -- says why a dataset
  reference ``OWNER/NAME[@N]`` that no longer resolves for ``org_id`` (its grant was revoked)
  is refused, when the gate knows (e.g. "the entitlement was revoked (refunded)"); None
  otherwise, so the caller keeps its own "not found".

The gate writes in the caller's session (one transaction with the use it meters); a caller
meters once per use -- one loop iteration, one training run, one environment run -- never per
step or per row. Knows nothing of HTTP.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.orm import Session

from teachloop.core.errors import Forbidden, InvalidInput, NotFound
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.tenancy import Tenancy


class UsageGate(Protocol):
    """Checks and meters one use of a resource another organisation published (``market`` implements it)."""

    def check_and_meter(self, session: Session, org_id: str, kind: str, resource_id: str, action: str, *,
                        units: int = 1, detail: dict[str, Any] | None = None) -> bool:
        """True: an active entitlement covers the use and it was metered; False: not a marketplace
        resource of ``org_id`` (nothing to meter). ``Forbidden`` naming why when refused (logged)."""
        ...

    def refusal(self, session: Session, org_id: str, kind: str, resource_id: str, action: str) -> str | None:
        """Why ``action`` on ``resource_id`` would be refused (read-only); None when allowed or not bought."""
        ...

    def entitled(self, session: Session, org_id: str, kind: str, resource_id: str, action: str) -> bool:
        """Whether an active entitlement of ``org_id`` covers ``action`` on ``resource_id`` (read-only)."""
        ...


_gate: UsageGate | None = None


def install_usage_gate(gate: UsageGate | None) -> UsageGate | None:
    """Install the process's gate (None removes it); returns the one it replaces."""
    global _gate
    previous, _gate = _gate, gate
    return previous


def usage_gate() -> UsageGate | None:
    """The installed gate, or None."""
    return _gate


def meter_use(session: Session, org_id: str, kind: str, resource_id: str, action: str, *, label: str,
              units: int = 1, detail: dict[str, Any] | None = None) -> bool:
    """Check and meter one use through the installed gate (see the module docstring).

    ``label`` (e.g. ``seller/data@1``) names the resource in a refusal: ``Forbidden`` reads
    ``"dataset 'seller/data@1': train of ... refused: the entitlement was revoked (refunded) ..."``.
    """
    gate = _gate
    if gate is None:
        return False
    try:
        return gate.check_and_meter(session, org_id, kind, resource_id, action, units=units, detail=detail)
    except Forbidden as err:
        raise Forbidden(f"{kind} {label!r}: {err.message}", param=err.param or kind) from None


def require_entitled(session: Session, org_id: str, kind: str, resource_id: str, action: str, *,
                     label: str) -> None:
    """Refuse loading another organisation's resource unless an active entitlement covers ``action``.

    ``NotFound`` (no gate, or never bought: the same answer as a name that does not exist);
    ``Forbidden`` naming why when the entitlement was revoked or does not cover ``action``.
    """
    gate = _gate
    if gate is not None and gate.entitled(session, org_id, kind, resource_id, action):
        return
    why = gate.refusal(session, org_id, kind, resource_id, action) if gate is not None else None
    if why is not None:
        raise Forbidden(f"{kind} {label!r}: {why}", param=kind)
    raise NotFound(f"{kind} {label!r} is not available to this organisation: buy a listing of it on the "
                   "marketplace first", param="env" if kind == "environment" else kind)


def explain_unusable(session: Session, org_id: str, ref: str, action: str = "train") -> str | None:
    """Why the installed gate refuses ``org_id`` the dataset ``ref`` (``OWNER/NAME[@N]``), or None."""
    gate = _gate
    owner, slash, rest = (ref or "").strip().partition("/")
    if gate is None or not slash:
        return None
    try:
        owner_id = Tenancy(session).find_org(owner).id
        if owner_id == org_id:
            return None
        dataset = Datasets(session).resolve(owner_id, rest)
    except (NotFound, InvalidInput):
        return None
    why = gate.refusal(session, org_id, "dataset", dataset.id, action)
    return None if why is None else f"dataset {ref!r}: {why}"


__all__ = ["UsageGate", "explain_unusable", "install_usage_gate", "meter_use", "require_entitled", "usage_gate"]

"""First-run setup shared by ``teachloop admin init`` and ``teachloop up``.

``bootstrap(session, org_name, email)`` makes sure an organisation exists with
an owner and, when it creates the organisation, an API key for that owner. It
is idempotent: with an organisation already present and no new name asked
for, it creates nothing and says which organisation is there.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from teachloop.core.tenancy import Role
from teachloop.store.repos.keys import ApiKeys, CreatedKey
from teachloop.store.repos.tenancy import Tenancy
from teachloop.store.schema.tenancy import Organisation, User

DEFAULT_ORG = "default"
DEFAULT_EMAIL = "owner@localhost"


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What ``bootstrap`` found or made.

    Attributes:
        org: the organisation asked for (or the first one, when none was named).
        owner: its owner.
        created: whether the organisation was created by this call.
        key: the owner's new API key (with its secret) when ``created``; else None.
    """

    org: Organisation
    owner: User
    created: bool
    key: CreatedKey | None


def bootstrap(
    session: Session, org_name: str | None = None, email: str | None = None, *, actor: str = "cli"
) -> Bootstrap:
    """Ensure an organisation with an owner exists; create it and a first key if it does not.

    ``org_name=None`` means "the first organisation, or ``default`` when there is
    none"; a name that does not exist yet creates that organisation.
    """
    tenancy = Tenancy(session)
    if org_name is None:
        orgs = tenancy.list_orgs()
        if orgs:
            return Bootstrap(orgs[0], tenancy.first_owner(orgs[0].id), False, None)
        org_name = DEFAULT_ORG
    else:
        try:
            org = tenancy.find_org(org_name)
        except LookupError:
            pass
        else:
            return Bootstrap(org, tenancy.first_owner(org.id), False, None)
    org = tenancy.create_org(org_name, actor=actor)
    owner, _ = tenancy.ensure_user(email or DEFAULT_EMAIL)
    tenancy.add_member(org.id, owner.id, Role.OWNER, actor=actor)
    key = ApiKeys(session).create_key(org.id, owner.id, Role.OWNER, "first key", actor=actor)
    return Bootstrap(org, owner, True, key)


__all__ = ["DEFAULT_EMAIL", "DEFAULT_ORG", "Bootstrap", "bootstrap"]

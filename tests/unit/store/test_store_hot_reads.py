"""The request path's reads: ``Database.run_read``, the one-statement key check, ``Deployments.find_row``.

Each runs on SQLite and on PostgreSQL (the ``db`` fixture). The key check is compared
with what the ORM rows say for every state a key can be in (a differential test over
random states), and ``find_row`` with ``find`` column by column.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teachloop.core.errors import InvalidInput, Unauthorized
from teachloop.core.tenancy import Role
from teachloop.store import ApiKeys, Database, Tenancy
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema import ApiKey, Deployment, Membership


def test_run_read_is_inline_on_sqlite_and_in_a_worker_on_postgres(db: Database) -> None:
    caller = threading.get_ident()

    async def main() -> tuple[int, int]:
        return await db.run_read(lambda a, b: (threading.get_ident(), a + b), 40, b=2)

    ran_in, value = asyncio.run(main())
    assert value == 42
    assert db.reads_inline is (db.dialect == "sqlite")
    assert (ran_in == caller) is db.reads_inline


def test_run_read_raises_what_the_read_raises(db: Database) -> None:
    def refuse() -> None:
        raise InvalidInput("no", param="x")

    with pytest.raises(InvalidInput, match="no"):
        asyncio.run(db.run_read(refuse))


_STATES = st.sampled_from(["ok", "revoked", "member_left", "wrong_secret", "operator"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(states=st.lists(_STATES, min_size=1, max_size=4))
def test_the_key_check_agrees_with_the_rows_for_any_key_states(
    db: Database, tenant: Membership, states: list[str]
) -> None:
    """Whatever state each key is in, ``authenticate`` answers what the ORM rows say, key by key."""
    made: list[tuple[str, str, str]] = []  # (state, secret, key id)
    with db.session() as s:
        tenancy = Tenancy(s)
        for i, state in enumerate(states):
            if state == "operator":
                created = ApiKeys(s).create_operator_key(tenant.org_id, f"op{i}-{len(made)}")
            else:
                user = tenancy.create_user(f"u{i}-{uuid.uuid4().hex}@acme.test")  # unique across examples
                tenancy.add_member(tenant.org_id, user.id, Role.MEMBER)
                created = ApiKeys(s).create_key(tenant.org_id, user.id, Role.MEMBER, f"k{i}-{len(made)}")
            made.append((state, created.secret, created.key.id))
    with db.session() as s:
        for state, _, key_id in made:
            if state == "revoked":
                ApiKeys(s).revoke(tenant.org_id, key_id)
            elif state == "member_left":
                row = s.get(ApiKey, key_id)
                assert row is not None and row.user_id is not None
                s.query(Membership).filter_by(org_id=tenant.org_id, user_id=row.user_id).delete()
    for state, secret, key_id in made:
        plaintext = secret[:-1] + ("a" if secret[-1] != "a" else "b") if state == "wrong_secret" else secret
        with db.session(write=False) as s:
            row = s.get(ApiKey, key_id)
            assert row is not None
            member = row.user_id is None or s.query(Membership).filter_by(
                org_id=row.org_id, user_id=row.user_id).first() is not None
            expected_ok = state in ("ok", "operator") and row.revoked_at is None and member
            if expected_ok:
                principal = ApiKeys(s).authenticate(plaintext, touch=False)
                assert (principal.key_id, principal.org_id, principal.user_id, principal.role) == (
                    row.id, row.org_id, row.user_id, row.role_enum)
            else:
                with pytest.raises(Unauthorized):
                    ApiKeys(s).authenticate(plaintext, touch=False)


def test_a_key_check_reads_staleness_without_a_second_read(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        created = ApiKeys(s).create_key(tenant.org_id, tenant.user_id, Role.OWNER, "ci")
    with db.session(write=False) as s:
        keys = ApiKeys(s)
        keys.authenticate(created.secret, touch=False)
        assert keys.is_stale(created.key.id)  # never used
    with db.session() as s:
        ApiKeys(s).touch(created.key.id)
    with db.session(write=False) as s:
        keys = ApiKeys(s)
        keys.authenticate(created.secret, touch=False)
        assert not keys.is_stale(created.key.id)
    with db.session() as s:  # a minute ago: due again, and ``is_stale`` without ``authenticate`` reads the row
        row = s.get(ApiKey, created.key.id)
        assert row is not None and row.last_used_at is not None
        row.last_used_at -= timedelta(minutes=2)
    with db.session(write=False) as s:
        assert ApiKeys(s).is_stale(created.key.id)


def test_find_row_has_the_columns_find_has(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        s.add(Deployment(org_id=tenant.org_id, name="support", base_model="m", canary_percent=5, revision=3,
                         shadow_percent=7, prices={"m": {"prompt_per_1m": 15, "completion_per_1m": 60}}))
    with db.session(write=False) as s:
        deployments = Deployments(s)
        orm, row = deployments.find(tenant.org_id, "support"), deployments.find_row(tenant.org_id, "support")
        assert orm is not None and row is not None
        for column in Deployment.__table__.columns:
            assert getattr(row, column.name) == getattr(orm, column.key), column.name
        assert deployments.find_row(tenant.org_id, "nope") is None
        assert deployments.find_row("org_other", "support") is None

"""Organisations, users, memberships, API keys, the audit log and bootstrap."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from teachloop.core.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from teachloop.core.tenancy import Principal, Role
from teachloop.store import ApiKeys, AuditLog, Database, Tenancy, bootstrap
from teachloop.store.repos.keys import KEY_RE
from teachloop.store.schema import ApiKey, AuditEvent, Base, Membership


def test_org_user_membership_round_trip(db: Database) -> None:
    with db.session() as s:
        tenancy = Tenancy(s)
        org = tenancy.create_org("  Acme Labs ")
        user = tenancy.create_user("Ada@Example.COM", "Ada")
        tenancy.add_member(org.id, user.id, "admin")
    with db.session(write=False) as s:
        tenancy = Tenancy(s)
        assert tenancy.find_org("Acme Labs").id == org.id
        assert tenancy.find_org(org.id).name == "Acme Labs"
        [(membership, member)] = tenancy.list_members(org.id)
        assert (member.email, membership.role_enum) == ("ada@example.com", Role.ADMIN)
        [summary] = tenancy.summarise_orgs()
        assert (summary.members, summary.active_keys) == (1, 0)


@pytest.mark.parametrize(
    ("call", "error", "param"),
    [
        (lambda t, ten: t.create_org("acme"), Conflict, "name"),
        (lambda t, ten: t.create_org(""), InvalidInput, "name"),
        (lambda t, ten: t.create_user("owner@acme.test"), Conflict, "email"),
        (lambda t, ten: t.create_user("not-an-email"), InvalidInput, "email"),
        (lambda t, ten: t.add_member(ten.org_id, ten.user_id, "admin"), Conflict, "user_id"),
        (lambda t, ten: t.add_member(ten.org_id, ten.user_id, "emperor"), InvalidInput, "role"),
        (lambda t, ten: t.add_member("org_missing", ten.user_id, "admin"), NotFound, "org_id"),
    ],
)
def test_bad_tenancy_writes_are_refused_and_change_nothing(
    db: Database, tenant: Membership, call: object, error: type[Exception], param: str
) -> None:
    with pytest.raises(error) as info, db.session() as s:
        call(Tenancy(s), tenant)  # type: ignore[operator]
    assert info.value.param == param  # type: ignore[attr-defined]
    with db.session(write=False) as s:
        assert len(Tenancy(s).list_orgs()) == 1
        assert len(Tenancy(s).list_members(tenant.org_id)) == 1


def test_key_is_shown_once_and_hashed_at_rest(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        created = ApiKeys(s).create_key(tenant.org_id, tenant.user_id, Role.OWNER, "ci")
    assert KEY_RE.match(created.secret)
    assert len(created.secret) >= 32 + 12
    assert created.secret not in repr(created)
    secret_part = created.secret.rsplit("_", 1)[1]
    with db.session(write=False) as s:
        for table in Base.metadata.sorted_tables:  # the secret is nowhere in the database
            for row in s.execute(select(table)).all():
                dumped = repr(tuple(row))
                assert secret_part not in dumped, table.name
        [listed] = ApiKeys(s).list(tenant.org_id)
        assert listed.id == created.key.id
        assert listed.display == f"tl_{listed.prefix}_…"


def test_authenticate_returns_the_principal(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        created = ApiKeys(s).create_key(tenant.org_id, tenant.user_id, "admin", "ops")
    with db.session() as s:
        principal = ApiKeys(s).authenticate(f"  {created.secret} ")
    assert principal == Principal(tenant.org_id, tenant.user_id, created.key.id, Role.ADMIN)
    with db.session(write=False) as s:
        assert ApiKeys(s).get(tenant.org_id, created.key.id).last_used_at is not None


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("Bearer nope", "malformed API key"),
        ("tl_aaaaaaaaaaaa_" + "a" * 52, "unknown API key"),
    ],
)
def test_bad_keys_are_unauthorized_with_the_reason(db: Database, secret: str | None, message: str) -> None:
    with pytest.raises(Unauthorized, match=message), db.session() as s:
        ApiKeys(s).authenticate(secret)


def test_wrong_secret_with_a_known_prefix_is_unknown(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        created = ApiKeys(s).create_key(tenant.org_id, tenant.user_id, "owner", "k")
    forged = created.secret[:-4] + ("aaaa" if not created.secret.endswith("aaaa") else "bbbb")
    with pytest.raises(Unauthorized, match="unknown API key"), db.session() as s:
        ApiKeys(s).authenticate(forged)


def test_revoked_key_is_refused(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        created = ApiKeys(s).create_key(tenant.org_id, tenant.user_id, "owner", "k")
    with db.session() as s:
        first = ApiKeys(s).revoke(tenant.org_id, created.key.id, actor=tenant.user_id).revoked_at
        again = ApiKeys(s).revoke(tenant.org_id, created.key.id).revoked_at
    assert first is not None and first == again
    with pytest.raises(Unauthorized) as info, db.session() as s:
        ApiKeys(s).authenticate(created.secret)
    assert str(info.value) == "API key revoked; create one with `teachloop admin keys create`"
    with db.session(write=False) as s:
        assert ApiKeys(s).list(tenant.org_id, include_revoked=False) == []
        actions = [e.action for e in AuditLog(s).list(tenant.org_id)]
    assert actions.count("api_key.revoke") == 1


def test_key_of_removed_member_is_refused(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        tenancy = Tenancy(s)
        user = tenancy.create_user("temp@acme.test")
        tenancy.add_member(tenant.org_id, user.id, "member")
        created = ApiKeys(s).create_key(tenant.org_id, user.id, "member", "k")
    with db.session() as s:
        s.delete(s.scalars(select(Membership).where(Membership.user_id == user.id)).one())
    with pytest.raises(Unauthorized, match="no longer in its organisation"), db.session() as s:
        ApiKeys(s).authenticate(created.secret)


def test_another_orgs_key_is_not_found(db: Database, tenant: Membership, other_tenant: Membership) -> None:
    with db.session() as s:
        theirs = ApiKeys(s).create_key(other_tenant.org_id, other_tenant.user_id, "owner", "theirs").key.id
    with db.session() as s:
        keys = ApiKeys(s)
        principal = keys.authenticate(keys.create_key(tenant.org_id, tenant.user_id, "owner", "mine").secret)
    calls: list[Callable[[ApiKeys], object]] = [
        lambda k: k.get(principal.org_id, theirs),
        lambda k: k.revoke(principal.org_id, theirs),
    ]
    for call in calls:
        with pytest.raises(NotFound) as info, db.session() as s:
            call(ApiKeys(s))
        assert str(info.value) == f"API key {theirs!r} not found"
    with pytest.raises(NotFound) as missing, db.session() as s:
        ApiKeys(s).get(principal.org_id, "key_missing")
    assert type(missing.value) is NotFound
    with db.session(write=False) as s:
        assert [k.name for k in ApiKeys(s).list(principal.org_id)] == ["mine"]
        assert ApiKeys(s).get(other_tenant.org_id, theirs).revoked_at is None


@pytest.mark.parametrize(
    ("member_role", "key_role", "allowed"),
    [
        ("member", "viewer", True),
        ("member", "owner", False),
        ("expert", "expert", True),
        ("viewer", "expert", False),
    ],
)
def test_a_key_cannot_exceed_its_users_role(
    db: Database, tenant: Membership, member_role: str, key_role: str, allowed: bool
) -> None:
    with db.session() as s:
        user = Tenancy(s).create_user(f"{member_role}@acme.test")
        Tenancy(s).add_member(tenant.org_id, user.id, member_role)
    if allowed:
        with db.session() as s:
            ApiKeys(s).create_key(tenant.org_id, user.id, key_role, "k")
        return
    with pytest.raises(InvalidInput, match="cannot create") as info, db.session() as s:
        ApiKeys(s).create_key(tenant.org_id, user.id, key_role, "k")
    assert info.value.param == "role"


def test_key_for_a_non_member_is_not_found(
    db: Database, tenant: Membership, other_tenant: Membership
) -> None:
    with pytest.raises(NotFound), db.session() as s:
        ApiKeys(s).create_key(tenant.org_id, other_tenant.user_id, "member", "k")
    with db.session(write=False) as s:
        assert ApiKeys(s).list(tenant.org_id) == []


def test_last_used_is_refreshed_at_most_once_a_minute(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        created = ApiKeys(s).create_key(tenant.org_id, None, "viewer", "service")
    with db.session() as s:
        ApiKeys(s).authenticate(created.secret)
        first = ApiKeys(s).get(tenant.org_id, created.key.id).last_used_at
        ApiKeys(s).authenticate(created.secret)
        assert ApiKeys(s).get(tenant.org_id, created.key.id).last_used_at == first
        key = ApiKeys(s).get(tenant.org_id, created.key.id)
        assert first is not None
        key.last_used_at = first - timedelta(minutes=2)
    with db.session() as s:
        ApiKeys(s).authenticate(created.secret)
        assert ApiKeys(s).get(tenant.org_id, created.key.id).last_used_at > first  # type: ignore[operator]


def test_audit_log_is_append_only_and_scoped(
    db: Database, tenant: Membership, other_tenant: Membership
) -> None:
    with db.session() as s:
        AuditLog(s).record(tenant.org_id, "usr_x", "thing.do", "thing_1", {"n": 1})
    with db.session(write=False) as s:
        events = AuditLog(s).list(tenant.org_id)
        assert events[0].action == "thing.do"
        assert all(e.org_id == tenant.org_id for e in events)
        assert all(e.org_id == other_tenant.org_id for e in AuditLog(s).list(other_tenant.org_id))
    with pytest.raises(PermissionError, match="append-only"), db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "thing.do")).one()
        event.action = "thing.undo"
    with pytest.raises(PermissionError, match="append-only"), db.session() as s:
        s.delete(s.scalars(select(AuditEvent).where(AuditEvent.action == "thing.do")).one())
    with db.session(write=False) as s:
        assert s.scalar(text("SELECT action FROM audit_events WHERE target = 'thing_1'")) == "thing.do"


def test_bootstrap_is_idempotent(db: Database) -> None:
    with db.session() as s:
        first = bootstrap(s, None, "boss@example.com")
    assert first.created and first.key is not None and first.org.name == "default"
    with db.session() as s:
        principal = ApiKeys(s).authenticate(first.key.secret)
        assert principal.role == Role.OWNER
        again = bootstrap(s)
        named_again = bootstrap(s, "default")
    assert not again.created and again.key is None and again.org.id == first.org.id
    assert not named_again.created and named_again.owner.email == "boss@example.com"
    with db.session() as s:
        second = bootstrap(s, "research", "BOSS@example.com")
    assert second.created and second.owner.id == first.owner.id  # the same e-mail is the same user
    with db.session(write=False) as s:
        assert [o.name for o in Tenancy(s).list_orgs()] == ["default", "research"]
        assert len(s.scalars(select(ApiKey)).all()) == 2


def test_set_role_revokes_the_keys_the_new_role_could_not_create(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        tenancy, keys = Tenancy(s), ApiKeys(s)
        user = tenancy.create_user("ada@acme.test")
        tenancy.add_member(tenant.org_id, user.id, "admin")
        admin_key = keys.create_key(tenant.org_id, user.id, "admin", "a").key.id
        member_key = keys.create_key(tenant.org_id, user.id, "member", "m").key.id
        viewer_key = keys.create_key(tenant.org_id, user.id, "viewer", "v").key.id
    with db.session() as s:
        change = Tenancy(s).set_role(tenant.org_id, user.id, "member", by=Role.OWNER, actor="key_x")
        assert (change.before, change.after) == (Role.ADMIN, Role.MEMBER)
        assert [k.id for k in change.revoked_keys] == [admin_key]
    with db.session(write=False) as s:
        assert Tenancy(s).get_membership(tenant.org_id, user.id).role_enum is Role.MEMBER
        live = {k.id for k in ApiKeys(s).list(tenant.org_id, include_revoked=False)}
        assert admin_key not in live and {member_key, viewer_key} <= live
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.org_id == tenant.org_id))]
        assert "member.role" in actions and "api_key.revoke" in actions


def test_remove_member_revokes_every_key_and_the_membership(db: Database, tenant: Membership) -> None:
    with db.session() as s:
        user = Tenancy(s).create_user("bob@acme.test")
        Tenancy(s).add_member(tenant.org_id, user.id, "viewer")
        created = ApiKeys(s).create_key(tenant.org_id, user.id, "viewer", "k")
    with db.session() as s:
        change = Tenancy(s).remove_member(tenant.org_id, user.id)
        assert change.after is None and [k.id for k in change.revoked_keys] == [created.key.id]
    with db.session(write=False) as s:
        assert [u.email for _, u in Tenancy(s).list_members(tenant.org_id)] == ["owner@acme.test"]
        assert ApiKeys(s).get(tenant.org_id, created.key.id).revoked_at is not None


@pytest.mark.parametrize(
    ("call", "error", "param"),
    [
        (lambda t, org, owner, member: t.set_role(org, owner, "admin"), Conflict, "role"),  # the last owner
        (lambda t, org, owner, member: t.remove_member(org, owner), Conflict, "role"),
        (lambda t, org, owner, member: t.set_role(org, member, "member"), InvalidInput, "role"),  # no change
        (lambda t, org, owner, member: t.set_role(org, member, "operator"), InvalidInput, "role"),
        (lambda t, org, owner, member: t.set_role(org, member, "chief"), InvalidInput, "role"),
        (lambda t, org, owner, member: t.set_role(org, member, "owner", by=Role.ADMIN), Forbidden, "role"),
        (lambda t, org, owner, member: t.remove_member(org, owner, by=Role.ADMIN), Forbidden, "role"),
        (lambda t, org, owner, member: t.remove_member(org, "usr_missing"), NotFound, "user_id"),
    ],
)
def test_refused_membership_changes_change_nothing(
    db: Database, tenant: Membership, other_tenant: Membership, call: Callable[..., object], error: type[Exception],
    param: str,
) -> None:
    with db.session() as s:
        user = Tenancy(s).create_user("carol@acme.test")
        Tenancy(s).add_member(tenant.org_id, user.id, "member")
        ApiKeys(s).create_key(tenant.org_id, tenant.user_id, "owner", "owner-key")
    with db.session(write=False) as s:
        before = sorted(repr((m.user_id, m.role)) for m, _ in Tenancy(s).list_members(tenant.org_id))
        keys_before = [(k.id, k.revoked_at) for k in ApiKeys(s).list(tenant.org_id)]
    with pytest.raises(error) as info, db.session() as s:
        call(Tenancy(s), tenant.org_id, tenant.user_id, user.id)
    assert getattr(info.value, "param", None) == param
    with db.session(write=False) as s:
        assert sorted(repr((m.user_id, m.role)) for m, _ in Tenancy(s).list_members(tenant.org_id)) == before
        assert [(k.id, k.revoked_at) for k in ApiKeys(s).list(tenant.org_id)] == keys_before


def test_another_orgs_member_is_not_found_for_role_changes(
    db: Database, tenant: Membership, other_tenant: Membership
) -> None:
    for call in (lambda t: t.set_role(tenant.org_id, other_tenant.user_id, "viewer"),
                 lambda t: t.remove_member(tenant.org_id, other_tenant.user_id)):
        with pytest.raises(NotFound) as info, db.session() as s:
            call(Tenancy(s))
        assert str(info.value) == f"user {other_tenant.user_id!r} not found in this organisation"
    with db.session(write=False) as s:
        assert Tenancy(s).get_membership(other_tenant.org_id, other_tenant.user_id).role_enum is Role.OWNER

"""The environment registry in the store: immutable versions, resolution to a digest, yanking, evals."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.store import Database, Tenancy
from teachloop.store.repos.environments import EnvironmentRegistry, semver_key
from teachloop.store.schema import AuditEvent, EnvironmentVersion

D1, D2, D3 = ("sha256:" + c * 64 for c in "abc")


@pytest.fixture
def db(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path / "hub.db"))
    yield database
    database.close()


@pytest.fixture
def orgs(db: Database) -> tuple[str, str]:
    with db.session() as s:
        t = Tenancy(s)
        return t.create_org("acme").id, t.create_org("globex").id


def publish(db: Database, org: str, version: str, digest: str, name: str = "wordle") -> tuple[EnvironmentVersion, bool]:
    with db.session() as s:
        return EnvironmentRegistry(s).publish(org, name=name, version=version, digest=digest,
                                              manifest={"name": name, "version": version}, blob_key=digest)


def test_publish_is_idempotent_for_the_same_content_and_refuses_other_content(db: Database, orgs: tuple[str, str]) -> None:
    acme, _ = orgs
    row, created = publish(db, acme, "1.0.0", D1)
    assert created and row.ref == "wordle@1.0.0"
    again, created = publish(db, acme, "1.0.0", D1)
    assert not created and again.id == row.id
    with pytest.raises(Conflict, match="immutable: bump the version"):
        publish(db, acme, "1.0.0", D2)
    with db.session(write=False) as s:
        assert len(EnvironmentRegistry(s).versions(acme)) == 1
        actions = [e.action for e in s.query(AuditEvent).filter_by(org_id=acme)]
    assert actions.count("env.publish") == 1


def test_bad_names_versions_and_digests_are_rejected(db: Database, orgs: tuple[str, str]) -> None:
    acme, _ = orgs
    for name, version, digest in [("Bad Name", "1.0.0", D1), ("ok", "1.0", D1), ("ok", "1.0.0", "md5:x")]:
        with pytest.raises(InvalidInput):
            publish(db, acme, version, digest, name=name)


def test_resolution_always_ends_at_one_digest(db: Database, orgs: tuple[str, str]) -> None:
    acme, globex = orgs
    publish(db, acme, "1.0.0", D1)
    publish(db, acme, "1.10.0-rc.1", D2)
    publish(db, acme, "1.2.0", D3)
    with db.session() as s:
        reg = EnvironmentRegistry(s)
        assert reg.resolve(acme, "wordle").version == "1.10.0-rc.1"  # semver order, not text order
        assert reg.resolve(acme, "wordle@1.0.0").digest == D1
        assert reg.resolve(acme, f"wordle@{D3[:19]}").version == "1.2.0"
        with pytest.raises(NotFound):
            reg.resolve(acme, "wordle@sha256:ab")  # too short to pin
        with pytest.raises(NotFound, match=re.escape("versions: 1.10.0-rc.1, 1.2.0, 1.0.0")):
            reg.resolve(acme, "wordle@9.9.9")
        with pytest.raises(NotFound):
            reg.resolve(globex, "wordle")  # another organisation's environment is invisible


def test_yanked_versions_resolve_only_by_exact_version(db: Database, orgs: tuple[str, str]) -> None:
    acme, _ = orgs
    publish(db, acme, "1.0.0", D1)
    publish(db, acme, "2.0.0", D2)
    with db.session() as s:
        reg = EnvironmentRegistry(s)
        row = reg.yank(acme, "wordle@2.0.0", reason="reward hack", actor="usr_x")
        assert row.yanked and row.yank_reason == "reward hack" and row.yanked_at is not None
        assert reg.resolve(acme, "wordle").version == "1.0.0"
        assert reg.resolve(acme, "wordle@2.0.0").yanked
        reg.yank(acme, "wordle@1.0.0")
        with pytest.raises(NotFound, match="every version"):
            reg.resolve(acme, "wordle")
        with pytest.raises(InvalidInput):
            reg.yank(acme, "wordle")


def test_versions_are_immutable_in_the_orm(db: Database, orgs: tuple[str, str]) -> None:
    acme, _ = orgs
    publish(db, acme, "1.0.0", D1)
    with pytest.raises(PermissionError, match="immutable"), db.session() as s:
        row = EnvironmentRegistry(s).resolve(acme, "wordle@1.0.0")
        row.digest = D2
        s.flush()
    with pytest.raises(PermissionError, match="yank it"), db.session() as s:
        s.delete(EnvironmentRegistry(s).resolve(acme, "wordle@1.0.0"))
        s.flush()
    with db.session(write=False) as s:
        assert EnvironmentRegistry(s).resolve(acme, "wordle@1.0.0").digest == D1


def test_eval_results_are_stored_per_organisation(db: Database, orgs: tuple[str, str]) -> None:
    acme, globex = orgs
    report = {"n_tasks": 4, "n_episodes": 8, "mean": 0.5, "ci_low": 0.2, "ci_high": 0.8, "failures": []}
    with db.session() as s:
        EnvironmentRegistry(s).record_eval(acme, env_name="wordle", env_version="1.0.0", env_digest=D1,
                                           model="m", report=report)
    with db.session(write=False) as s:
        reg = EnvironmentRegistry(s)
        [row] = reg.evals(acme, "wordle")
        assert (row.mean, row.ci_low, row.env_digest, row.report["n_episodes"]) == (0.5, 0.2, D1, 8)
        assert reg.evals(globex) == []


def test_semver_key_orders_prereleases_before_releases() -> None:
    versions = ["1.0.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "0.9.9", "1.0.0-alpha.beta"]
    assert sorted(versions, key=semver_key) == ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta",
                                               "1.0.0-beta", "1.0.0"]

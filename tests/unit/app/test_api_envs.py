"""Publishing, checks and yanking of environments over REST (``/api/envs``), in process.

A package is scaffolded by ``teachloop.envs.scaffold`` (what ``teachloop env new`` writes),
archived, and uploaded; every publish-time check runs on it for real (the fresh offline
process included). The store is a real SQLite file and blob folder.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from teachloop.app import AppDeps, create_app, job_handlers
from teachloop.catalog.environments import archive
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.envs import scaffold
from teachloop.envs.manifest import package_hash
from teachloop.store import ApiKeys, BlobStore, Database, JobStatus, Tenancy, Worker
from teachloop.store.schema import EnvironmentVersion
from tests.unit.app.conftest import auth, error_of


@dataclass(frozen=True)
class Org:
    id: str
    owner: str
    member: str
    viewer: str


def _org(database: Database, name: str) -> Org:
    with database.session() as s:
        tenancy = Tenancy(s)
        org = tenancy.create_org(name)
        user = tenancy.create_user(f"owner@{name}.test")
        tenancy.add_member(org.id, user.id, Role.OWNER)
        keys = ApiKeys(s)
        return Org(org.id, *(keys.create_key(org.id, user.id, role, role.value).secret
                             for role in (Role.OWNER, Role.MEMBER, Role.VIEWER)))


@pytest.fixture
def deps(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[AppDeps]:
    url = migrated_sqlite(tmp_path / "t.db")
    database = Database(url)
    settings = Settings(home=tmp_path / "home", model_cache=tmp_path / "models", database_url=url,
                        blob_url=str(tmp_path / "blobs"), engine="fake", max_body_bytes=1024 * 1024)
    d = AppDeps(settings, database, BlobStore(settings.blob_url))
    yield d
    d.close()


@pytest.fixture
def orgs(deps: AppDeps) -> tuple[Org, Org]:
    return _org(deps.database, "acme"), _org(deps.database, "globex")


@pytest.fixture
def app(deps: AppDeps) -> FastAPI:
    return create_app(deps)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return scaffold("word-rev", tmp_path / "src-pkg" / "word-rev")


def _break(root: Path) -> None:
    """Make the package's tasks depend on the global random state: the ``deterministic`` check fails."""
    env_py = root / "src" / root.name.replace("-", "_") / "env.py"
    env_py.write_text(env_py.read_text().replace("rng.choice(WORDS)", "random.choice(WORDS)"))


def _zip(root: Path, top: str = "word-rev") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, f"{top}/{path.relative_to(root).as_posix()}")
    return buf.getvalue()


def _tar(entries: dict[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


def _publish(client: TestClient, key: str, data: bytes, filename: str = "word-rev.tar.gz") -> Any:
    return client.post("/api/envs", files={"package": (filename, data, "application/gzip")}, headers=auth(key))


def _stored(deps: AppDeps) -> tuple[int, list[str]]:
    """(version rows, blob files): what a refused publish must leave as it was."""
    with deps.database.session(write=False) as s:
        rows = int(s.scalar(select(func.count()).select_from(EnvironmentVersion)) or 0)
    root = Path(deps.settings.blob_url)
    return rows, sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---------------------------------------------------------------------------------------------- publish


def test_publish_stores_the_version_with_its_checks_and_is_idempotent(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org], package: Path
) -> None:
    acme, _ = orgs
    r = _publish(client, acme.member, archive(package))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] is True and body["version"]["ref"] == "word-rev@0.1.0"
    assert body["version"]["digest"] == package_hash(package)  # the same digest as a local publish records
    assert body["checks"]["ok"] is True
    outcomes = {c["name"]: c["status"] for c in body["checks"]["results"]}
    assert outcomes["imports_offline"] == "pass" and outcomes["deterministic"] == "pass", outcomes

    stored = client.get("/api/envs/word-rev@0.1.0/checks", headers=auth(acme.viewer))
    assert stored.status_code == 200 and stored.json()["target"] == "word-rev@0.1.0"
    assert {c["name"]: c["status"] for c in stored.json()["results"]} == outcomes
    info = client.get("/api/envs/word-rev@0.1.0", headers=auth(acme.viewer)).json()
    assert info["checks"]["ok"] is True and info["manifest"]["license"] == "Apache-2.0"
    assert client.get("/api/envs/word-rev/checks", headers=auth(acme.viewer)).json()["target"] == "word-rev@0.1.0"

    before = _stored(deps)
    again = _publish(client, acme.member, _zip(package), filename="word-rev.zip")  # same files, as a zip
    assert again.status_code == 200 and again.json()["created"] is False, again.text
    assert again.json()["version"]["digest"] == body["version"]["digest"]
    assert _stored(deps) == before


def test_a_package_that_fails_a_check_is_400_naming_it_and_stores_nothing(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org], package: Path
) -> None:
    acme, _ = orgs
    _break(package)
    before = _stored(deps)
    err = error_of(_publish(client, acme.member, archive(package)), 400)
    assert err["param"] == "package"
    assert err["message"].startswith("refusing to publish: check failed (deterministic): deterministic: "), err
    assert _stored(deps) == before
    error_of(client.get("/api/envs/word-rev/versions", headers=auth(acme.viewer)), 404)


def test_other_content_under_a_published_version_is_409_and_uploads_nothing(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org], package: Path
) -> None:
    acme, _ = orgs
    assert _publish(client, acme.member, archive(package)).status_code == 201
    (package / "README.md").write_text("changed\n")
    before = _stored(deps)
    err = error_of(_publish(client, acme.member, archive(package)), 409)
    assert err["param"] == "version" and "immutable: bump the version" in err["message"]
    assert _stored(deps) == before


@pytest.mark.parametrize(
    ("data", "filename", "message"),
    [
        (b"just some bytes", "x.tar.gz", "must be a .tar.gz or .zip"),
        (b"PK\x03\x04 a wheel", "word_rev-0.1.0-py3-none-any.whl", "a wheel is not accepted"),
        (_tar({"../evil/pyproject.toml": b"[project]\n"}), "x.tar.gz", "unsafe path"),
        (_tar({"pyproject.toml": b"[project]\n"}, link="src/link"), "x.tar.gz", "links and devices are refused"),
        (_tar({"a/pyproject.toml": b"", "b/README.md": b""}), "x.tar.gz", "holds no pyproject.toml"),
        (b"\x1f\x8b\x08\x00 not really gzip", "x.tar.gz", "not a readable .tar.gz"),
    ],
    ids=["not-an-archive", "wheel", "traversal", "symlink", "no-pyproject", "corrupt-gzip"],
)
def test_bad_uploads_are_400_on_package_and_store_nothing(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org], data: bytes, filename: str, message: str
) -> None:
    before = _stored(deps)
    err = error_of(_publish(client, orgs[0].member, data, filename), 400)
    assert err["param"] == "package" and message in err["message"], err
    assert _stored(deps) == before


def test_an_archive_that_inflates_past_the_bound_is_refused_before_it_is_unpacked(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip

    import teachloop.catalog.environments as environments

    monkeypatch.setattr(environments, "MAX_UNPACKED_BYTES", 1024 * 1024)
    bomb = gzip.compress(b"\0" * (4 * 1024 * 1024))  # a few KB on the wire
    assert len(bomb) < deps.settings.max_body_bytes
    err = error_of(_publish(client, orgs[0].member, bomb), 400)
    assert err["param"] == "package" and "unpacks to more than 1048576 bytes" in err["message"], err
    many = _zip_entries(environments.MAX_ARCHIVE_FILES + 1)
    err = error_of(_publish(client, orgs[0].member, many, "many.zip"), 400)
    assert "at most 10000 are accepted" in err["message"], err
    assert _stored(deps) == (0, [])


def _zip_entries(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"f{i}", b"")
    return buf.getvalue()


def test_a_missing_file_is_400_and_an_oversized_body_is_413(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]
) -> None:
    acme, _ = orgs
    missing = error_of(client.post("/api/envs", data={"other": "x"}, headers=auth(acme.member)), 400)
    assert missing["param"] == "package", missing
    big = _publish(client, acme.member, b"\x1f\x8b" + b"0" * (deps.settings.max_body_bytes + 1))
    assert error_of(big, 413)["code"] == "request_too_large"
    assert _stored(deps) == (0, [])


def test_viewers_cannot_publish_or_yank(client: TestClient, orgs: tuple[Org, Org], package: Path) -> None:
    acme, _ = orgs
    error_of(_publish(client, acme.viewer, archive(package)), 403)
    assert _publish(client, acme.member, archive(package)).status_code == 201
    error_of(client.post("/api/envs/word-rev@0.1.0/yank", json={}, headers=auth(acme.viewer)), 403)


# ---------------------------------------------------------------------------------------------- organisations


def test_names_are_per_organisation_and_another_orgs_version_is_missing(
    client: TestClient, orgs: tuple[Org, Org], package: Path
) -> None:
    acme, globex = orgs
    assert _publish(client, acme.member, archive(package)).status_code == 201
    # the same name (and content) in another organisation is simply its own version
    theirs = _publish(client, globex.member, archive(package))
    assert theirs.status_code == 201 and theirs.json()["created"] is True, theirs.text
    assert theirs.json()["version"]["digest"] == package_hash(package)
    # yanking globex's copy leaves acme's live
    assert client.post("/api/envs/word-rev@0.1.0/yank", json={"reason": "gx"},
                       headers=auth(globex.member)).json()["yanked"] is True
    assert client.get("/api/envs/word-rev@0.1.0", headers=auth(acme.viewer)).json()["yanked"] is False
    # a version only globex has is answered to acme exactly like one nobody has
    (package / "pyproject.toml").write_text((package / "pyproject.toml").read_text().replace(
        'version = "0.1.0"', 'version = "0.2.0"'))
    assert _publish(client, globex.member, archive(package)).status_code == 201
    for method, path in (("GET", "/api/envs/{}/checks"), ("POST", "/api/envs/{}/yank")):
        a = client.request(method, path.format("word-rev@0.2.0"), headers=auth(acme.member), json={})
        b = client.request(method, path.format("word-rev@0.3.0"), headers=auth(acme.member), json={})
        assert a.status_code == b.status_code == 404
        assert a.json()["error"]["message"].replace("0.2.0", "X") == b.json()["error"]["message"].replace("0.3.0", "X")


# ---------------------------------------------------------------------------------------------- yank, checks


def test_yank_over_rest_is_refused_by_evaluation_and_keeps_its_checks(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org], package: Path
) -> None:
    acme, _ = orgs
    assert _publish(client, acme.member, archive(package)).status_code == 201
    r = client.post("/api/envs/word-rev@0.1.0/yank", json={"reason": "typo in a task"}, headers=auth(acme.member))
    assert r.status_code == 200 and r.json()["yanked"] is True and r.json()["yank_reason"] == "typo in a task"
    assert client.post("/api/envs/word-rev@0.1.0/yank", json={}, headers=auth(acme.member)).json()["yanked"]
    queued = client.post("/api/evals", json={"env": "word-rev@0.1.0", "n": 2}, headers=auth(acme.member))
    assert queued.status_code == 201, queued.text
    done = Worker(deps.queue, job_handlers(deps), worker_id="w").run_once()
    assert done is not None and done.status == JobStatus.FAILED
    shown = client.get(f"/api/evals/{queued.json()['id']}", headers=auth(acme.viewer)).json()
    assert shown["status"] == "failed" and "is yanked" in shown["error"], shown
    assert client.get("/api/envs/word-rev@0.1.0/checks", headers=auth(acme.viewer)).json()["ok"] is True
    assert error_of(client.post("/api/envs/word-rev/yank", json={}, headers=auth(acme.member)), 400)["param"] == "ref"


def test_checks_of_a_version_published_before_they_were_stored_are_404(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]
) -> None:
    from teachloop.store.repos.environments import EnvironmentRegistry

    acme, _ = orgs
    with deps.database.session() as s:
        EnvironmentRegistry(s).publish(acme.id, name="old", version="1.0.0", digest="sha256:" + "1" * 64,
                                       manifest={"name": "old"}, blob_key="k")
    err = error_of(client.get("/api/envs/old@1.0.0/checks", headers=auth(acme.viewer)), 404)
    assert "published before check results were stored" in err["message"]
    assert client.get("/api/envs/old@1.0.0", headers=auth(acme.viewer)).json()["checks"] is None

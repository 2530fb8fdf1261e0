"""Deploying a completed run from its console page: a name, a confirmation page, one POST.

The POST is ``serve.deployments.create_deployment`` with ``run`` (what ``POST /api/deployments``
and ``teachloop deploy create NAME --run RUN_ID`` call): the run's final adapter is published as
adapter ``NAME`` and the new deployment serves it -- checked in the store and by a chat request
that gets the adapter's reply. A viewer is refused (403), another organisation's run is the same
404 as a missing one, a POST without the CSRF token is 403; none of them creates anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from teachloop.store import BlobStore, Database
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema.deployments import AdapterVersion, Deployment
from teachloop.store.schema.runs import TrainingRun
from tests.unit.serve.fakes import adapter_folder
from tests.web.conftest import World, csrf_of, post_form, sign_in


def _give_final_adapter(database: Database, blobs: BlobStore, tmp_path: Path, run_id: str) -> None:
    key = f"runs/{run_id}/final"
    blobs.put_dir(key, adapter_folder(tmp_path / "final", "from the run: "))
    with database.session() as s:
        run = s.get(TrainingRun, run_id)
        assert run is not None
        run.final_adapter_key = key


def _counts(database: Database) -> tuple[int, int]:
    with database.session(write=False) as s:
        return (int(s.scalar(select(func.count()).select_from(Deployment)) or 0),
                int(s.scalar(select(func.count()).select_from(AdapterVersion)) or 0))


def test_member_deploys_a_completed_run_in_one_step(client: Any, world: World, database: Database, blobs: BlobStore,
                                                    tmp_path: Path) -> None:
    run = world.acme_pages.run
    sign_in(client, world.acme.member)
    assert 'action="/runs/' + run + '/deploy"' not in client.get(f"/runs/{run}").text  # no final adapter: no form
    assert client.get(f"/runs/{run}/deploy", params={"name": "calc"}).status_code == 400
    _give_final_adapter(database, blobs, tmp_path, run)
    page = client.get(f"/runs/{run}").text
    assert 'action="/runs/' + run + '/deploy"' in page and 'id="deploy-name"' in page

    before = _counts(database)
    assert client.get(f"/runs/{run}/deploy", params={"name": "support"}).status_code == 409  # taken
    assert client.get(f"/runs/{run}/deploy", params={"name": " "}).status_code == 400
    confirm = client.get(f"/runs/{run}/deploy", params={"name": "calc"})
    assert confirm.status_code == 200 and "Confirm: deploy as calc" in confirm.text
    assert _counts(database) == before  # the confirmation changes nothing
    no_csrf = client.post(f"/runs/{run}/deploy", data={"name": "calc"})
    assert no_csrf.status_code == 403 and _counts(database) == before

    done = client.post(f"/runs/{run}/deploy", data={"name": "calc", "csrf_token": csrf_of(confirm.text)})
    assert done.status_code == 303 and done.headers["location"] == "/deployments/calc?done=created-1", done.text
    with database.session(write=False) as s:
        dep = Deployments(s).get(world.acme.id, "calc")
        version = s.get(AdapterVersion, dep.adapter_version_id)
        assert version is not None and version.source_run_id == run and version.name == "calc"
        assert dep.revision == 1 and dep.canary_version_id is None
    assert "calc@1" in client.get("/deployments/calc?done=created-1").text
    reply = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {world.acme.key}"},
                        json={"model": "calc", "messages": [{"role": "user", "content": "hello"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].startswith("from the run: "), reply.json()
    # a second deploy under the same name is refused, nothing more published
    after = _counts(database)
    assert post_form(client, f"/runs/{run}", f"/runs/{run}/deploy", {"name": "calc"}).status_code == 409
    assert _counts(database) == after


def test_viewer_is_refused_and_another_orgs_run_is_not_found(client: Any, app: Any, world: World,
                                                             database: Database, blobs: BlobStore,
                                                             tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    run, theirs = world.acme_pages.run, world.globex_pages.run
    _give_final_adapter(database, blobs, tmp_path, run)
    _give_final_adapter(database, blobs, tmp_path, theirs)
    before = _counts(database)
    sign_in(client, world.acme.viewer)
    assert 'id="deploy-name"' not in client.get(f"/runs/{run}").text
    assert client.get(f"/runs/{run}/deploy", params={"name": "calc"}).status_code == 403
    assert post_form(client, f"/runs/{run}", f"/runs/{run}/deploy", {"name": "calc"}).status_code == 403
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as member:
        sign_in(member, world.acme.member)
        missing = member.get("/runs/run_nothing/deploy", params={"name": "calc"})
        other = member.get(f"/runs/{theirs}/deploy", params={"name": "calc"})
        assert missing.status_code == other.status_code == 404
        assert other.text.replace(theirs, "run_nothing") == missing.text  # the same page as a missing run
        assert post_form(member, f"/runs/{run}", f"/runs/{theirs}/deploy", {"name": "calc"}).status_code == 404
    assert _counts(database) == before

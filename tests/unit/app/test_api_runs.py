"""The runs, environments, evaluations and models REST API, in process, with ``TEACHLOOP_ENGINE=fake``.

The worker is the real ``store.Worker`` with the app's ``job_handlers``; the
engine comes from the runtime loader (``engine.factory.load_model``), which
with ``engine="fake"`` builds a ``FakeEngine`` sized to the tiny model's
tokenizer -- so these tests run the whole create -> queue -> train -> deploy
path in seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from teachloop.app import AppDeps, create_app, job_handlers
from teachloop.core.ids import new_id
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.store import ApiKeys, BlobStore, Database, JobStatus, Tenancy, Worker
from teachloop.store.schema import JobRow, TrainingRun
from tests._tiny import tiny_llama
from tests.unit.app.conftest import auth, error_of


@dataclass(frozen=True)
class Org:
    id: str
    owner: str
    viewer: str


def _org(database: Database, name: str) -> Org:
    with database.session() as s:
        tenancy = Tenancy(s)
        org = tenancy.create_org(name)
        user = tenancy.create_user(f"owner@{name}.test")
        tenancy.add_member(org.id, user.id, Role.OWNER)
        keys = ApiKeys(s)
        return Org(org.id, keys.create_key(org.id, user.id, Role.OWNER, "owner").secret,
                   keys.create_key(org.id, user.id, Role.VIEWER, "viewer").secret)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("models"))


@pytest.fixture
def deps(tmp_path: Path, migrated_sqlite: Callable[[Path], str], tiny_model: Path) -> Iterator[AppDeps]:
    url = migrated_sqlite(tmp_path / "t.db")
    database = Database(url)
    settings = Settings(home=tmp_path, model_cache=tmp_path / "models", database_url=url,
                        blob_url=str(tmp_path / "blobs"), engine="fake", model=str(tiny_model))
    d = AppDeps(settings, database, BlobStore(settings.blob_url))
    yield d
    d.close()


@pytest.fixture
def orgs(deps: AppDeps) -> tuple[Org, Org]:
    return _org(deps.database, "acme"), _org(deps.database, "globex")


@pytest.fixture
def app(deps: AppDeps) -> FastAPI:
    return create_app(deps)


def grpo(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"name": "arith", "algorithm": "grpo", "steps": 2, "checkpoint_every": 1,
                           "rl": {"env": "arithmetic", "prompts_per_step": 2, "group_size": 2, "max_tokens": 8},
                           "eval": {"tasks": 2}}
    cfg.update(over)
    return cfg


def _count(deps: AppDeps, table: Any) -> int:
    with deps.database.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def _work(deps: AppDeps) -> Any:
    return Worker(deps.queue, job_handlers(deps), worker_id="w").run_once()


# ---------------------------------------------------------------------------------------------- create, read


def test_create_queues_a_run_and_its_job(client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]) -> None:
    acme, _ = orgs
    r = client.post("/api/runs", json={"config": grpo()}, headers=auth(acme.owner))
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "queued" and run["step"] == 0 and run["total_steps"] == 2
    assert run["config"]["optim"]["lr"] == 1e-4  # defaults filled in
    jobs = deps.queue.list(acme.id, kind="train")
    assert [j.payload for j in jobs] == [{"run_id": run["id"]}]
    assert client.get(f"/api/runs/{run['id']}", headers=auth(acme.viewer)).json()["id"] == run["id"]
    listed = client.get("/api/runs", headers=auth(acme.viewer)).json()["data"]
    assert [x["id"] for x in listed] == [run["id"]]


@pytest.mark.parametrize(("config", "param"), [
    (grpo(optim={"lr": -1}), "optim.lr"),
    (grpo(rl={"env": "arithmetic", "group_sise": 4}), "rl.group_sise"),
    (grpo(steps="many"), "steps"),
    ({"algorithm": "sft", "data": {"train": "/etc/passwd"}}, "data.train"),
    (grpo(model="/srv/models/secret"), "model"),
])
def test_a_bad_config_is_422_naming_the_field_and_queues_nothing(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org], config: dict[str, Any], param: str
) -> None:
    r = client.post("/api/runs", json={"config": config}, headers=auth(orgs[0].owner))
    err = error_of(r, 422)
    assert err["param"] == param and param in err["message"], err
    assert _count(deps, JobRow) == 0 and _count(deps, TrainingRun) == 0


def test_viewers_cannot_create_and_other_orgs_runs_are_missing(client: TestClient, orgs: tuple[Org, Org]) -> None:
    acme, globex = orgs
    error_of(client.post("/api/runs", json={"config": grpo()}, headers=auth(acme.viewer)), 403)
    theirs = client.post("/api/runs", json={"config": grpo()}, headers=auth(globex.owner)).json()["id"]
    missing = new_id("run")
    for suffix, method in (("", "GET"), ("/metrics", "GET"), ("/checkpoints", "GET"), ("/cancel", "POST"),
                           ("/resume", "POST")):
        a = client.request(method, f"/api/runs/{theirs}{suffix}", headers=auth(acme.owner))
        b = client.request(method, f"/api/runs/{missing}{suffix}", headers=auth(acme.owner))
        assert a.status_code == b.status_code == 404, (suffix, a.text)
        assert a.text.replace(theirs, "X") == b.text.replace(missing, "X")
    assert client.get("/api/runs", headers=auth(acme.owner)).json()["data"] == []
    assert client.get(f"/api/runs/{theirs}", headers=auth(globex.viewer)).json()["status"] == "queued"


def test_idempotency_key_returns_the_same_run_and_refuses_another_body(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]
) -> None:
    acme, globex = orgs
    headers = {**auth(acme.owner), "Idempotency-Key": "k-1"}
    first = client.post("/api/runs", json={"config": grpo()}, headers=headers)
    again = client.post("/api/runs", json={"config": grpo()}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    err = error_of(client.post("/api/runs", json={"config": grpo(steps=3)}, headers=headers), 409)
    assert err["param"] == "Idempotency-Key"
    # keys are per organisation: globex's k-1 is its own
    other = client.post("/api/runs", json={"config": grpo()}, headers={**auth(globex.owner), "Idempotency-Key": "k-1"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert _count(deps, JobRow) == 2 and _count(deps, TrainingRun) == 2


def test_cancel_a_queued_run(client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]) -> None:
    acme, _ = orgs
    run = client.post("/api/runs", json={"config": grpo()}, headers=auth(acme.owner)).json()
    r = client.post(f"/api/runs/{run['id']}/cancel", headers=auth(acme.owner))
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert [j.status for j in deps.queue.list(acme.id, kind="train")] == [JobStatus.CANCELLED]
    error_of(client.post(f"/api/runs/{run['id']}/cancel", headers=auth(acme.owner)), 409)
    assert _work(deps) is None  # nothing left to run


# ---------------------------------------------------------------------------------------------- on the worker


def test_the_worker_trains_a_run_and_deploy_serves_its_adapter(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]
) -> None:
    acme, globex = orgs
    run_id = client.post("/api/runs", json={"config": grpo()}, headers=auth(acme.owner)).json()["id"]
    done = _work(deps)
    assert done is not None and done.status == JobStatus.SUCCEEDED, done
    assert done.result == {"run_id": run_id, "status": "completed", "step": 2}
    run = client.get(f"/api/runs/{run_id}", headers=auth(acme.viewer)).json()
    assert run["status"] == "completed" and run["has_adapter"] and run["inputs"]["env"]["name"] == "arithmetic"
    metrics = client.get(f"/api/runs/{run_id}/metrics", headers=auth(acme.viewer)).json()["data"]
    assert [(m["step"], m["phase"]) for m in metrics if m["phase"] == "train"] == [(1, "train"), (2, "train")]
    assert {m["step"] for m in metrics if m["phase"] == "eval"} == {0, 2}
    ckpts = client.get(f"/api/runs/{run_id}/checkpoints", headers=auth(acme.viewer)).json()["data"]
    assert [c["step"] for c in ckpts] == [1, 2]
    error_of(client.post(f"/api/runs/{run_id}/resume", headers=auth(acme.owner)), 409)

    # another organisation cannot deploy it; a run id that names nothing reads the same
    for who in (globex.owner,):
        err = error_of(client.post("/api/deployments", json={"name": "arith", "run": run_id}, headers=auth(who)), 404)
        assert err["param"] == "run"
    r = client.post("/api/deployments", json={"name": "arith", "run": run_id}, headers=auth(acme.owner))
    assert r.status_code == 201, r.text
    adapter = r.json()["adapter"]
    assert adapter["name"] == "arith" and adapter["version"] == 1 and adapter["source_run_id"] == run_id
    assert r.json()["base_model"] == deps.settings.model


def test_a_running_run_stops_at_a_step_boundary_and_resumes(
    client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]
) -> None:
    acme, _ = orgs
    cfg = grpo(steps=100_000, checkpoint_every=1, eval={"tasks": 0})
    run_id = client.post("/api/runs", json={"config": cfg}, headers=auth(acme.owner)).json()["id"]
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(_work(deps)))
    worker.start()
    deadline = time.monotonic() + 60
    while client.get(f"/api/runs/{run_id}", headers=auth(acme.viewer)).json()["step"] < 2:
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    r = client.post(f"/api/runs/{run_id}/cancel", headers=auth(acme.owner))
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled"), r.text
    worker.join(60)
    assert not worker.is_alive()
    run = client.get(f"/api/runs/{run_id}", headers=auth(acme.viewer)).json()
    assert run["status"] == "cancelled" and 2 <= run["step"] < 100_000 and run["last_checkpoint_step"] >= 1
    assert outcome[0].result["status"] == "cancelled"
    r = client.post(f"/api/runs/{run_id}/resume", headers=auth(acme.owner))
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    newest, first = deps.queue.list(acme.id, kind="train")
    assert newest.status == JobStatus.QUEUED and newest.payload == first.payload == {"run_id": run_id}


# ---------------------------------------------------------------------------------------------- envs, evals, models


def test_envs_list_info_and_bad_references(client: TestClient, orgs: tuple[Org, Org]) -> None:
    acme, _ = orgs
    envs = client.get("/api/envs", headers=auth(acme.viewer)).json()
    assert "arithmetic" in {e["name"] for e in envs["installed"]} and envs["published"] == []
    info = client.get("/api/envs/arithmetic", headers=auth(acme.viewer)).json()
    assert info["name"] == "arithmetic" and info["digest"].startswith("sha256:") and info["version"] is None
    assert info["description"]["name"] == "arithmetic"
    error_of(client.get("/api/envs/nosuchenv", headers=auth(acme.viewer)), 404)
    error_of(client.get("/api/envs/nosuchenv@1.0.0", headers=auth(acme.viewer)), 404)
    error_of(client.get("/api/envs/os:system", headers=auth(acme.viewer)), 400)
    error_of(client.get("/api/envs/arithmetic/versions", headers=auth(acme.viewer)), 404)


def test_an_evaluation_runs_on_the_worker(client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]) -> None:
    acme, globex = orgs
    for body, status, param in (({"env": "/tmp/env.py"}, 400, "env"), ({"env": "arithmetic", "adapter": "nobot"}, 404,
                                "adapter"), ({"env": "arithmetic", "run": new_id("run")}, 404, "run"),
                                ({"env": "arithmetic", "n": 0}, 400, "n")):
        assert error_of(client.post("/api/evals", json=body, headers=auth(acme.owner)), status)["param"] == param
    assert _count(deps, JobRow) == 0
    r = client.post("/api/evals", json={"env": "arithmetic", "n": 3}, headers=auth(acme.owner))
    assert r.status_code == 201 and r.json()["status"] == "queued", r.text
    eval_id = r.json()["id"]
    done = _work(deps)
    assert done is not None and done.status == JobStatus.SUCCEEDED, done
    shown = client.get(f"/api/evals/{eval_id}", headers=auth(acme.viewer)).json()
    assert shown["status"] == "succeeded" and shown["result"]["n_tasks"] == 3
    assert 0.0 <= shown["result"]["mean"] <= 1.0
    assert [e["id"] for e in client.get("/api/evals", headers=auth(acme.viewer)).json()["data"]] == [eval_id]
    stored = client.get("/api/envs/arithmetic/evals", headers=auth(acme.viewer)).json()["data"]
    assert [s["id"] for s in stored] == [shown["result"]["id"]]
    a = client.get(f"/api/evals/{eval_id}", headers=auth(globex.owner))
    b = client.get(f"/api/evals/{new_id('job')}", headers=auth(globex.owner))
    assert a.status_code == b.status_code == 404
    assert client.get("/api/evals", headers=auth(globex.owner)).json()["data"] == []


def test_models_lists_the_cache(client: TestClient, deps: AppDeps, orgs: tuple[Org, Org]) -> None:
    r = client.get("/api/models", headers=auth(orgs[0].viewer))
    assert r.status_code == 200 and r.json()["default"] == deps.settings.model, r.text


def test_every_new_route_documents_a_response_model(client: TestClient, orgs: tuple[Org, Org]) -> None:
    doc = client.get("/api/openapi.json", headers=auth(orgs[0].viewer)).json()
    for path, ops in doc["paths"].items():
        if not path.startswith(("/api/runs", "/api/envs", "/api/evals", "/api/models")):
            continue
        for method, op in ops.items():
            ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
            schema = ok["content"]["application/json"]["schema"]
            assert "$ref" in schema, (method, path, schema)


@pytest.mark.postgres
def test_concurrent_retries_with_one_new_key_make_one_run_on_postgres(
    postgres_url: str, tmp_path: Path, tiny_model: Path, open_database: Callable[[str], Database]
) -> None:
    """Eight requests race with the same new Idempotency-Key: one run, one job, and all eight get it."""
    from teachloop.train.jobs import submit_run

    database = open_database(postgres_url)  # emptied after: its queued job must not reach the next test
    org = _org(database, f"race-{new_id('x')[-6:]}")
    blobs = BlobStore(str(tmp_path / "blobs"))
    barrier = threading.Barrier(8)
    results: list[str] = []
    errors: list[BaseException] = []

    def submit() -> None:
        barrier.wait()
        try:
            run, _ = submit_run(database, blobs, org.id, grpo(), idempotency_key="same-key",
                                default_model=str(tiny_model))
            results.append(run.id)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 8 and len(set(results)) == 1
    with database.session(write=False) as s:
        runs = s.scalar(select(func.count()).select_from(TrainingRun).where(TrainingRun.org_id == org.id))
        jobs = s.scalar(select(func.count()).select_from(JobRow).where(JobRow.org_id == org.id))
    assert (runs, jobs) == (1, 1)

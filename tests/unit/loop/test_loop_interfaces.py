"""The loop's interfaces: REST (/api/loops, /api/datasets), the worker's ``loop`` job, and the CLI
(``teachloop loop``, ``teachloop data``); bad input gets a precise error and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from teachloop.app import AppDeps, create_app, job_handlers
from teachloop.cli.main import app as cli
from teachloop.core.loop import Revisions
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.loop import LoopRunner, enqueue_tick
from teachloop.loop.jobs import loop_handler
from teachloop.render import Renderer
from teachloop.store import ApiKeys, JobStatus, Worker
from teachloop.store.repos.loops import Loops
from tests.unit.loop.conftest import DEPLOYMENT, Store, arithmetic_traffic, deps_for, grpo_config
from tests.unit.loop.fakes import OracleEngine
from tests.unit.serve.upstream_server import KEY, FakeUpstream


@pytest.fixture
def keys(store: Store) -> dict[str, str]:
    with store.db.session() as s:
        repo = ApiKeys(s)
        return {"member": repo.create_key(store.org_id, None, Role.MEMBER, "m").secret,
                "viewer": repo.create_key(store.org_id, None, Role.VIEWER, "v").secret}


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Any:
    settings = Settings(home=tmp_path, model_cache=tmp_path / "models", database_url="sqlite://",
                        blob_url=str(tmp_path / "blobs"))
    with TestClient(create_app(AppDeps(settings, store.db, store.blobs))) as c:
        yield c


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    """A local OpenAI-compatible upstream (model ``teacher``), with a Fernet key to store its API key under."""
    monkeypatch.setenv("TEACHLOOP_UPSTREAM_KEY", Fernet.generate_key().decode())
    with FakeUpstream() as up:
        yield up


def _iterations_on(db: Any, org_id: str, revision: int) -> tuple[int, int]:
    """Two iterations as the runner starts them on an upstream primary (no adapter version): one recording the
    revision in force, one without (an older row) whose gate record names the teacher; their numbers."""
    with db.session() as s:
        loops = Loops(s)
        loop = loops.list(org_id)[0]
        started = loops.start_iteration(org_id, loop.id, "interval", baseline_version_id=None,
                                        revisions=Revisions(before=revision))
        gated = loops.start_iteration(org_id, loop.id, "interval")
        for it in (started, gated):
            loops.update_iteration(org_id, it.id, gate={"passed": False, "reason": "not better",
                                                        "baseline": "upstream:teacher", "suites": []})
        return started.number, gated.number


def test_rest_put_refuses_bad_configs_with_the_field_and_stores_good_ones(client: Any, keys: dict[str, str],
                                                                        store: Store) -> None:
    url = f"/api/loops/{DEPLOYMENT}"
    bad = client.put(url, json=grpo_config(trigger={"every": 0}), headers=_h(keys["member"]))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "trigger.every"
    missing_env = grpo_config(sources=[{"kind": "grader", "env": "nowhere"}])
    r = client.put(url, json=missing_env, headers=_h(keys["member"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "sources.0.env"
    r = client.put("/api/loops/ghost", json=grpo_config(deployment="ghost"), headers=_h(keys["member"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "deployment"
    r = client.put(url, json=grpo_config(deployment="other"), headers=_h(keys["member"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "deployment"
    assert client.put(url, json=grpo_config(), headers=_h(keys["viewer"])).status_code == 403
    assert client.get("/api/loops", headers=_h(keys["viewer"])).json() == {"data": []}
    body = {k: v for k, v in grpo_config().items() if k != "deployment"}
    ok = client.put(url, json=body, headers=_h(keys["member"]))
    assert ok.status_code == 200 and ok.json()["created"] and ok.json()["phase"] == "idle"
    st = client.get(url, headers=_h(keys["viewer"])).json()
    assert st["serving"]["adapter"] == "base" and st["latest_iteration"] is None
    assert client.get(f"{url}/iterations", headers=_h(keys["viewer"])).json() == {"data": []}
    assert client.post(f"{url}/pause", headers=_h(keys["member"])).json()["enabled"] is False
    assert client.post(f"{url}/resume", headers=_h(keys["member"])).json()["enabled"] is True
    tick = client.post(f"{url}/tick", headers=_h(keys["member"]))
    assert tick.status_code == 202 and tick.json()["job_id"].startswith("job_")
    assert client.get("/api/loops/ghost", headers=_h(keys["viewer"])).status_code == 404
    assert client.get("/api/loops", headers={}).status_code == 401


def test_rest_datasets_and_iterations_after_an_iteration(client: Any, keys: dict[str, str], store: Store,
                                                          renderer: Renderer) -> None:
    client.put(f"/api/loops/{DEPLOYMENT}", json=grpo_config(gate={"max_tokens": 16}), headers=_h(keys["member"]))
    arithmetic_traffic(store, 20)
    import asyncio

    asyncio.run(LoopRunner(deps_for(store, OracleEngine(renderer), renderer), DEPLOYMENT).tick())
    [it] = client.get(f"/api/loops/{DEPLOYMENT}/iterations", headers=_h(keys["viewer"])).json()["data"]
    assert it["number"] == 1 and it["dataset"]["ref"] == "calc-loop@1" and it["gate"]["test"]["method"]
    [ds] = client.get("/api/datasets", headers=_h(keys["viewer"])).json()["data"]
    assert ds["digest"] == it["dataset"]["digest"] and ds["kind"] == "prompts"
    one = client.get("/api/datasets/calc-loop@1", headers=_h(keys["viewer"])).json()
    assert one["id"] == ds["id"] and one["source"]["iteration"] == 1
    rows = client.get("/api/datasets/calc-loop/rows?limit=2", headers=_h(keys["viewer"])).json()
    assert rows["total"] == ds["rows"] and len(rows["data"]) == 2
    lineage = rows["data"][0]["lineage"]
    assert lineage["source_kind"] == "grader" and lineage["source_trace_id"].startswith("tr_")
    assert lineage["env_ref"] == "arithmetic" and lineage["env_digest"].startswith("sha256:")
    assert client.get("/api/datasets/calc-loop@7", headers=_h(keys["viewer"])).status_code == 404


def test_rest_names_an_upstream_primary_as_serving_and_as_the_baseline_of_iterations_that_started_on_it(
    client: Any, keys: dict[str, str], store: Store, upstream: FakeUpstream
) -> None:
    url = f"/api/loops/{DEPLOYMENT}"
    assert client.put(url, json=grpo_config(), headers=_h(keys["member"])).status_code == 200
    spec = {"base_url": upstream.base_url, "model": "teacher", "api_key": KEY}
    r = client.patch(f"/api/deployments/{DEPLOYMENT}", json={"upstream": spec}, headers=_h(keys["member"]))
    assert r.status_code == 200, r.text
    revision = r.json()["revision"]
    serving = client.get(url, headers=_h(keys["viewer"])).json()["serving"]
    assert serving["adapter"] == "upstream:teacher" and serving["adapter_version_id"] is None
    started, gated = _iterations_on(store.db, store.org_id, revision)
    # the deployment moves on (back to the base model): the iterations still name what they started from
    back = client.post(f"/api/deployments/{DEPLOYMENT}/rollback", json={}, headers=_h(keys["member"]))
    assert back.status_code == 200 and back.json()["upstream"] is None, back.text
    with store.db.session() as s:
        loops = Loops(s)
        on_base = loops.start_iteration(store.org_id, loops.list(store.org_id)[0].id, "interval",
                                        revisions=Revisions(before=back.json()["revision"])).number
    data = client.get(f"{url}/iterations", headers=_h(keys["viewer"])).json()["data"]
    assert {it["number"]: it["baseline"] for it in data} == {started: "upstream:teacher", gated: "upstream:teacher",
                                                             on_base: "base"}
    assert client.get(url, headers=_h(keys["viewer"])).json()["serving"]["adapter"] == "base"


def test_the_worker_runs_a_loop_job_and_queues_the_next_tick_once(store: Store, renderer: Renderer,
                                                                  tmp_path: Path) -> None:
    from teachloop.loop import configure_loop
    from teachloop.store import JobQueue

    configure_loop(store.db, store.blobs, store.org_id, grpo_config(trigger={"every": 1000}), cache=store.cache)
    arithmetic_traffic(store, 4)
    queue = JobQueue(store.db)
    engine = OracleEngine(renderer)
    handler = loop_handler(store.db, store.blobs, queue, store.cache, lambda: (engine, renderer, "tiny-base"))
    first = enqueue_tick(queue, store.org_id, DEPLOYMENT)
    done = Worker(queue, {"loop": handler}, worker_id="w").run_once()
    assert done is not None and done.id == first and done.status == JobStatus.SUCCEEDED
    assert done.result is not None and done.result["scored"] == 4 and done.result["next_job_id"]
    queued = queue.list(store.org_id, status="queued", kind="loop")
    assert [j.id for j in queued] == [done.result["next_job_id"]]
    enqueue_tick(queue, store.org_id, DEPLOYMENT)  # a second request while one is queued ...
    Worker(queue, {"loop": handler}, worker_id="w", ).run_once()
    assert len(queue.list(store.org_id, status="queued", kind="loop")) == 1  # ... does not start a second chain
    bad = queue.enqueue("loop", {}, store.org_id)
    failed = Worker(queue, {"loop": handler}, worker_id="w").run_once()
    assert failed is not None and failed.id == bad and failed.status == JobStatus.FAILED
    settings = Settings(home=tmp_path, model_cache=tmp_path / "m", database_url="sqlite://", blob_url=str(tmp_path))
    assert set(job_handlers(AppDeps(settings, store.db, store.blobs))) >= {"echo", "loop"}


runner = CliRunner()


def _run(*args: str, code: int = 0) -> str:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_cli_loop_and_data(teachloop_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           renderer: Renderer) -> None:
    monkeypatch.setenv("TEACHLOOP_MODEL", "tiny-base")
    _run("admin", "init")
    from teachloop.store import BlobStore, Database, Tenancy
    from teachloop.store.repos.deployments import Deployments, DeploymentState

    settings = Settings.from_env()
    db = Database(settings.database_url)
    with db.session() as s:
        org = Tenancy(s).list_orgs()[0]
        dep = Deployments(s).create(org.id, DEPLOYMENT, DeploymentState("tiny-base"))
    store = Store(db, BlobStore(settings.blob_url), org.id, dep.id, settings.home / "envs")
    cfg = tmp_path / "loop.toml"
    cfg.write_text('deployment = "calc"\n[[sources]]\nkind = "grader"\nenv = "arithmetic"\nenv_args = { level = 1 }\n'
                   'lookup_tasks = 2000\n[curation]\nholdout_frac = 0.2\npii = false\n[trigger]\nevery = 0\n'
                   '[algorithm]\nkind = "grpo"\n')
    out = _run("loop", "set", str(cfg), code=2)
    assert "trigger.every" in out and len(out.strip().splitlines()) == 1
    assert "has no loop" in _run("loop", "status", DEPLOYMENT, code=2)
    cfg.write_text(cfg.read_text().replace("every = 0", "every = 10\nmin_examples = 4") +
                   "train = { steps = 2, lora = { rank = 4 }, rl = { prompts_per_step = 2, group_size = 2, "
                   "max_tokens = 16 } }\n[gate]\nmax_tokens = 16\n")
    assert "created the loop of 'calc'" in _run("loop", "set", str(cfg))
    assert json.loads(_run("loop", "show", DEPLOYMENT))["trigger"]["every"] == 10
    arithmetic_traffic(store, 20)
    import asyncio

    asyncio.run(LoopRunner(deps_for(store, OracleEngine(renderer), renderer), DEPLOYMENT).tick())
    out = _run("loop", "status", DEPLOYMENT)
    assert "phase canary" in out and "calc@1" in out
    hist = [json.loads(line) for line in _run("loop", "history", DEPLOYMENT, "--json").splitlines()]
    assert hist[0]["status"] == "canary" and hist[0]["gate"]["passed"]
    assert hist[0]["dataset"]["ref"] == "calc-loop@1"
    assert "canary" in _run("loop", "history", DEPLOYMENT)
    assert "paused" in _run("loop", "pause", DEPLOYMENT)
    with db.session(write=False) as s:
        assert Loops(s).list(org.id)[0].enabled is False
    _run("loop", "resume", DEPLOYMENT)
    from teachloop.engine.models import add_model
    from tests._tiny import tiny_llama

    add_model(settings, "tiny-base", tiny_llama(tmp_path / "m"))  # the deployment's base model, in the cache
    arithmetic_traffic(store, 3, seed=5, arm="canary")
    out = _run("loop", "run", DEPLOYMENT, "--once")  # the foreground runner on the real (tiny) engine
    assert "tick: phase canary, graded 3" in out
    out = _run("loop", "run", DEPLOYMENT, "--background")
    assert "queued loop job" in out
    assert "calc-loop@1" in _run("data", "list")
    shown = json.loads(_run("data", "show", "calc-loop@1", "--json", "--rows", "2"))
    assert shown["dataset"]["ref"] == "calc-loop@1" and len(shown["rows"]) == 2
    assert "lineage" in _run("data", "show", "calc-loop")
    out_file = tmp_path / "prompts.jsonl"
    assert "wrote" in _run("data", "export", "calc-loop@1", str(out_file), "--lineage")
    first = json.loads(out_file.read_text().splitlines()[0])
    assert first["messages"][-1]["role"] == "user" and first["metadata"]["env_ref"] == "arithmetic"
    assert "DPO pairs need a pairs dataset" in _run("data", "export", "calc-loop@1", str(out_file), "--format", "dpo",
                                                     code=2)
    assert "not found" in _run("data", "show", "nope@1", code=2)
    db.close()


def test_cli_loop_status_and_history_name_an_upstream_primary(teachloop_home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               upstream: FakeUpstream) -> None:
    monkeypatch.setenv("TEACHLOOP_MODEL", "tiny-base")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    _run("admin", "init")
    _run("deploy", "create", DEPLOYMENT, "--upstream-url", upstream.base_url, "--upstream-model", "teacher")
    cfg = tmp_path / "loop.toml"
    cfg.write_text('deployment = "calc"\n[[sources]]\nkind = "grader"\nenv = "arithmetic"\n[trigger]\nevery = 10\n'
                   '[algorithm]\nkind = "grpo"\n')
    assert "created the loop of 'calc'" in _run("loop", "set", str(cfg))
    from teachloop.store import Database, Tenancy

    db = Database(Settings.from_env().database_url)
    with db.session(write=False) as s:
        org_id = Tenancy(s).list_orgs()[0].id
    started, gated = _iterations_on(db, org_id, 1)
    db.close()
    out = _run("loop", "status", DEPLOYMENT)
    assert "serving upstream:teacher (revision 1)" in out
    latest = json.loads(_run("loop", "status", DEPLOYMENT, "--json"))["latest_iteration"]
    assert latest["number"] == gated and latest["baseline"] == "upstream:teacher"
    hist = [json.loads(line) for line in _run("loop", "history", DEPLOYMENT, "--json").splitlines()]
    assert {it["number"]: it["baseline"] for it in hist} == {started: "upstream:teacher", gated: "upstream:teacher"}


def test_rest_import_and_grants(client: Any, keys: dict[str, str], store: Store) -> None:
    from teachloop.store import Tenancy

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    body = {"name": "owned", "license": "MIT", "rows": rows}
    assert client.post("/api/datasets", json=body, headers=_h(keys["viewer"])).status_code == 403
    bad = client.post("/api/datasets", json={**body, "rows": [*rows, {"messages": [], "x": 1}]},
                      headers=_h(keys["member"]))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rows" and "line 2" in bad.json()["error"]["message"]
    bad = client.post("/api/datasets", json={**body, "license": ""}, headers=_h(keys["member"]))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "license"
    assert client.get("/api/datasets", headers=_h(keys["viewer"])).json() == {"data": []}
    ok = client.post("/api/datasets", json=body, headers=_h(keys["member"]))
    assert ok.status_code == 201 and ok.json()["ref"] == "owned@1" and ok.json()["origin"] == "import"
    assert client.post("/api/datasets", json=body, headers=_h(keys["member"])).status_code == 200  # same rows
    labels = "\n".join(json.dumps({**r, "expert_id": "usr_1"}) for r in rows)
    lab = client.post("/api/datasets", json={"name": "gold", "license": "CC-BY-4.0", "kind": "labels", "jsonl": labels},
                      headers=_h(keys["member"]))
    assert lab.status_code == 201 and lab.json()["origin"] == "labels"
    row = client.get("/api/datasets/gold/rows", headers=_h(keys["viewer"])).json()["data"][0]
    assert row["lineage"]["expert_id"] == "usr_1" and row["lineage"]["source_kind"] == "expert"
    # grants: admins only; another organisation's dataset is invisible to this org's keys either way
    with store.db.session() as s:
        other = Tenancy(s).create_org("other").id
        admin = ApiKeys(s).create_key(store.org_id, None, Role.ADMIN, "a").secret
        other_key = ApiKeys(s).create_key(other, None, Role.ADMIN, "o").secret
    grant = {"org": other, "license": "LicenseRef-deal"}
    by_name = client.post("/api/datasets/owned/grants", json={**grant, "org": "other"}, headers=_h(admin))
    assert by_name.status_code == 400 and by_name.json()["error"]["param"] == "org"  # names would be an oracle
    assert client.post("/api/datasets/owned/grants", json=grant, headers=_h(keys["member"])).status_code == 403
    assert client.post("/api/datasets/ghost/grants", json=grant, headers=_h(admin)).status_code == 404
    bad = client.post("/api/datasets/owned/grants", json={**grant, "version": 0}, headers=_h(admin))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "version"
    made = client.post("/api/datasets/owned/grants", json=grant, headers=_h(admin))
    assert made.status_code == 201 and made.json()["grantee_org_id"] == other
    assert [g["id"] for g in client.get("/api/datasets/owned/grants", headers=_h(keys["viewer"])).json()["data"]] == [
        made.json()["id"]]
    assert client.get("/api/datasets/owned/grants", headers=_h(other_key)).json() == {"data": []}
    assert client.get("/api/datasets/owned", headers=_h(other_key)).status_code == 404
    gone = client.delete(f"/api/datasets/owned/grants/{made.json()['id']}", headers=_h(admin))
    assert gone.status_code == 200 and gone.json()["revoked_at"]
    assert client.delete(f"/api/datasets/owned/grants/{made.json()['id']}", headers=_h(other_key)).status_code == 404


def test_cli_data_import_and_grant(teachloop_home: Path, tmp_path: Path) -> None:
    _run("admin", "init")
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                               "expert_id": "usr_7"}) + "\n")
    out = _run("data", "import", str(src), "--name", "gold", "--license", "CC-BY-4.0", code=2)
    assert "line 1: expert_id" in out and len(out.strip().splitlines()) == 1
    assert "imported gold@1" in _run("data", "import", str(src), "--name", "gold", "--license", "CC-BY-4.0",
                                     "--kind", "labels")
    shown = json.loads(_run("data", "show", "gold", "--json"))
    assert shown["dataset"]["origin"] == "labels" and shown["rows"][0]["lineage"]["expert_id"] == "usr_7"
    assert "license" in _run("data", "import", str(src), "--name", "x", "--license", "no way", "--kind", "labels",
                             code=2)
    assert "cannot read" in _run("data", "import", str(tmp_path / "missing.jsonl"), "--name", "x", "--license", "MIT",
                                 code=2)
    from teachloop.core.settings import Settings
    from teachloop.store import Database, Tenancy

    db = Database(Settings.from_env().database_url)
    with db.session() as s:
        Tenancy(s).create_org("buyer")
    db.close()
    out = _run("data", "grant", "gold", "--to", "buyer", "--license", "LicenseRef-deal", "--org", "default")
    assert "buyer may use" in out and "LicenseRef-deal" in out
    [g] = [json.loads(x) for x in _run("data", "grants", "--json", "--org", "default").splitlines()]
    assert "revoked" in _run("data", "revoke", g["id"], "--org", "default")
    assert "not found" in _run("data", "grant", "ghost", "--to", "buyer", "--license", "MIT", "--org", "default",
                               code=2)


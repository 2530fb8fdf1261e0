"""A run created over REST is trained by the worker on a real (tiny) model, read back through
``teachloop.Client`` over HTTP, and deployed in one step with ``teachloop deploy create --run --remote``.

The server is the real app under uvicorn with the torch engine built by the runtime loader
(``engine.factory.load_model``); the worker is ``store.Worker`` with the app's ``job_handlers``,
sharing the serving engine as ``teachloop up`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from teachloop import Client
from teachloop.app import AppDeps, create_app, job_handlers
from teachloop.cli.demo import serve_in_thread
from teachloop.cli.main import app as cli
from teachloop.core.errors import InvalidConfig
from teachloop.core.settings import Settings
from teachloop.engine.factory import load_model
from teachloop.serve import Serving, ServingConfig
from teachloop.store import BlobStore, Database, JobStatus, Worker, bootstrap
from tests._tiny import tiny_llama

BASE = "tiny-llama"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    model = str(tiny_llama(tmp_path / "tiny", name=BASE))  # a model folder: the configured model's name is its path
    settings = Settings(home=tmp_path, model_cache=tmp_path / "models", database_url=f"sqlite:///{tmp_path / 't.db'}",
                        blob_url=str(tmp_path / "blobs"), model=model, device="cpu")
    database = Database(settings.database_url)
    database.migrate()
    with database.session() as s:
        first = bootstrap(s, "acme", "owner@acme.test")
        assert first.key is not None
        key = first.key.secret
    blobs = BlobStore(settings.blob_url)
    loaded = load_model(settings, pull=False)
    engine: Any = loaded.engine
    serving = Serving(database, blobs, engine=engine, renderer=loaded.renderer, base_model=model,
                      config=ServingConfig(max_rows=8, default_max_tokens=8, sync_interval_s=0.2))
    serving.start()
    deps = AppDeps(settings, database, blobs, engine=engine, serving=serving)
    try:
        with serve_in_thread(create_app(deps)) as url:
            yield {"url": url, "key": key, "deps": deps, "settings": settings}
    finally:
        deps.close()


def test_rest_run_on_the_worker_then_deploy_by_run_id(server: dict[str, Any]) -> None:
    url, key, deps = server["url"], server["key"], server["deps"]
    config = {"name": "tiny-arith", "algorithm": "grpo", "steps": 2, "checkpoint_every": 1,
              "rl": {"env": "arithmetic", "prompts_per_step": 2, "group_size": 2, "max_tokens": 8},
              "eval": {"tasks": 2}}
    with Client(url, api_key=key) as tl:
        with pytest.raises(InvalidConfig) as bad:
            tl.create_run({**config, "optim": {"lr": 0}})
        assert bad.value.param == "optim.lr"
        run = tl.create_run(config, idempotency_key="first-try")
        assert tl.create_run(config, idempotency_key="first-try").id == run.id  # a retry makes no second run
        assert run.status == "queued" and run.base_model == server["settings"].model

        done = Worker(deps.queue, job_handlers(deps), worker_id="w").run_once()
        assert done is not None and done.status == JobStatus.SUCCEEDED, done
        assert Worker(deps.queue, job_handlers(deps), worker_id="w").run_once() is None  # one job per run

        run = tl.wait_run(run.id, timeout_s=30)
        assert run.status == "completed" and run.step == 2 and run.has_adapter
        metrics = tl.run_metrics(run.id)
        train = [m for m in metrics.data if m.phase == "train"]
        assert [m.step for m in train] == [1, 2] and all("reward_mean" in m.values for m in train)
        assert [c.step for c in tl.run_checkpoints(run.id).data] == [1, 2]
        assert [r.id for r in tl.list_runs().data] == [run.id]

    result = CliRunner().invoke(cli, ["deploy", "create", "tiny-arith", "--run", run.id, "--remote", url],
                                env={"TEACHLOOP_API_KEY": key})
    assert result.exit_code == 0, result.output
    assert "tiny-arith@1" in result.output

    r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "tiny-arith", "messages": [{"role": "user", "content": "What is 2 + 3?"}],
                         "max_tokens": 4})
    assert r.status_code == 200, r.text
    trace = httpx.get(f"{url}/api/traces/{r.headers['x-teachloop-trace-id']}",
                      headers={"Authorization": f"Bearer {key}"}).json()
    deployed = httpx.get(f"{url}/api/deployments/tiny-arith", headers={"Authorization": f"Bearer {key}"}).json()
    assert deployed["adapter"]["source_run_id"] == run.id
    assert trace["adapter_version_id"] == deployed["adapter"]["id"]

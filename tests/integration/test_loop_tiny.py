"""One full loop on a real (tiny) model: traffic through the OpenAI API of the real app, online grading,
a GRPO iteration on the traffic prompts, the paired gate, the canary served by the running server.

The tiny random Llama learns "say digits" (the ``Digits`` toy environment of the training tests: reward =
share of digit characters) in a dozen GRPO steps, so a candidate can really beat the base model here.
The demo itself runs on the tiny model too (``run_demo`` with a small budget).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from teachloop.app import AppDeps, create_app
from teachloop.core.settings import Settings
from teachloop.loop import LoopRunner, TrainDeps, history
from teachloop.render import Renderer
from teachloop.serve import Serving, ServingConfig
from teachloop.store import BlobStore, Database, bootstrap
from teachloop.store.repos.deployments import Deployments
from teachloop.store.repos.traces import TraceFilter, Traces
from tests._tiny import tiny_llama

DIGITS = "digits"  # installed below as an entry point: a loop config (REST) may not name module:attr
BASE = "tiny-llama"


def install_digits(root: Path) -> None:
    """Register the ``Digits`` test environment as the installed environment ``digits`` (entry point)."""
    dist = root / "teachloop_test_digits-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: teachloop-test-digits\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[teachloop.environments]\ndigits = tests.unit.train.conftest:Digits\n")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from teachloop.engine.torch_engine import TorchEngine

    install_digits(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    model = tiny_llama(tmp_path / "models", name=BASE)
    settings = Settings(home=tmp_path, model_cache=tmp_path / "models", database_url=f"sqlite:///{tmp_path / 't.db'}",
                        blob_url=str(tmp_path / "blobs"))
    db = Database(settings.database_url)
    db.migrate()
    with db.session() as s:
        first = bootstrap(s, "acme", "owner@acme.test")
        assert first.key is not None
        key, org_id = first.key.secret, first.org.id
    blobs = BlobStore(settings.blob_url)
    engine = TorchEngine(model, device="cpu")
    renderer = Renderer.from_pretrained(model)
    serving = Serving(db, blobs, engine=engine, renderer=renderer, base_model=BASE,
                      config=ServingConfig(sync_interval_s=0.2, default_max_tokens=8))
    serving.start()
    deps = AppDeps(settings, db, blobs, engine=engine, serving=serving)
    with TestClient(create_app(deps)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield {"client": client, "db": db, "blobs": blobs, "engine": engine, "renderer": renderer, "org": org_id,
               "home": tmp_path}
    deps.close()


def _config() -> dict[str, Any]:
    digits = {"env": DIGITS}
    return {
        "sources": [{"kind": "grader", **digits, "lookup_tasks": 50, "min_score": 0.5}],
        "curation": {"holdout_frac": 0.3, "near_dup_threshold": None, "dedupe": False},  # pii: on, as shipped
        "trigger": {"every": 24, "min_examples": 8},
        "algorithm": {"kind": "grpo", "train": {
            "steps": 12, "seed": 1, "lora": {"rank": 8, "unembed": True}, "optim": {"lr": 3e-2},
            "rl": {"prompts_per_step": 4, "group_size": 6, "max_tokens": 8}}},
        # the documented gate and canary thresholds (max_regression 0.05; max_drop 0.05 at 95% for the canary's
        # sequential non-inferiority test): a candidate that is not really better fails here, and so does a canary
        # not shown within 0.05 of the primary on the traffic below
        "gate": {"max_tokens": 8, "confidence": 0.9, "bootstrap_samples": 2000,
                 "environments": [{**digits, "tasks": 21, "seed": 3}]},
        "promotion": {"canary_percent": 50, "canary_min_requests": 4, "min_samples": 4, "signals": ["grader"],
                      "watch_requests": 4},
    }


def _traffic(client: TestClient, n: int, *, offset: int = 0, users: Iterable[int] = range(8)) -> None:
    names = [f"u{u}" for u in users]
    for i in range(n):
        r = client.post("/v1/chat/completions", json={
            "model": "digits", "messages": [{"role": "user", "content": f"Say some numbers {(i + offset) % 7}"}],
            "max_tokens": 8, "temperature": 0, "user": names[i % len(names)]})
        assert r.status_code == 200, r.text


def test_one_full_iteration_trains_gates_and_canaries_through_the_running_server(world: dict[str, Any]) -> None:
    client, db, org = world["client"], world["db"], world["org"]
    assert client.post("/api/deployments", json={"name": "digits"}).status_code == 201
    bad = client.put("/api/loops/digits", json={**_config(), "trigger": {"every": 0}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "trigger.every"
    assert client.put("/api/loops/digits", json=_config()).status_code == 200
    _traffic(client, 28)
    runner = LoopRunner(TrainDeps(world["engine"], world["renderer"], db, world["blobs"], org, world["home"] / "envs",
                                  BASE), "digits")
    result = asyncio.run(runner.tick())
    assert result.scored == 28 and result.iteration == 1
    [it] = history(db, org, "digits")
    assert it["run"]["status"] == "completed" and it["dataset"]["digest"].startswith("sha256:")
    assert it["counts"]["train"] + it["counts"]["holdout"] == 28
    assert it["gate"]["test"]["method"].startswith("paired bootstrap")
    assert it["status"] == "canary", it["reason"]
    assert it["gate"]["test"]["lower_bound"] > 0  # better at 90% confidence ...
    assert all(s["mean_diff"] >= -0.05 for s in it["gate"]["suites"]), it["gate"]  # ... and no suite fell
    with db.session(write=False) as s:
        dep = Deployments(s).get(org, "digits")
    assert dep.canary_version_id is not None and dep.canary_percent == 50
    # the running server serves the canary to about half the users, without a restart; users are sticky
    # to an arm by a hash of the deployment id. The canary is judged at every tick (a sequential test): keep
    # adding users until it is decided -- promoted once shown non-inferior, within 96 requests
    for batch in range(12):
        _traffic(client, 8, offset=3 + 8 * batch, users=range(8 * batch, 8 * batch + 8))
        result = asyncio.run(runner.tick())
        [it] = history(db, org, "digits")
        if it["status"] != "canary":
            break
    with db.session(write=False) as s:  # newest first: the requests sent since the canary began
        arms = Counter(t.arm for t in Traces(s).list(org, TraceFilter(model="digits", limit=8 * (batch + 1))))
    assert it["status"] == "promoted" and result.phase == "watch", (it["reason"], arms)
    assert "shown non-inferior" in it["reason"] and "-max_drop -0.05" in it["reason"], it["reason"]
    canary = it["canary"]["canary"]  # online, the canary arm was shown not worse than the primary by 0.05
    assert canary["candidate"]["grader_mean"] >= canary["baseline"]["grader_mean"] - 0.05, canary
    assert min(arms["primary"], arms["canary"]) >= 4, arms
    with db.session(write=False) as s:
        dep = Deployments(s).get(org, "digits")
        version = Deployments(s).adapters.get(org, str(dep.adapter_version_id))
    assert dep.canary_version_id is None and version.ref == it["candidate"] == "digits@1"
    assert version.source_run_id == it["run"]["id"]


def test_the_demo_runs_on_the_tiny_model(tmp_path: Path) -> None:
    from teachloop.cli.demo import DemoOptions, run_demo

    model = tiny_llama(tmp_path / "models")
    result = run_demo(DemoOptions(iterations=1, requests=16, users=4, steps=2, prompts=4, gate_tasks=8, max_rounds=2,
                                  fresh_tasks=8, reference_minutes=0.05), tmp_path / "home", model_dir=model)
    rounds = result.rounds
    assert [r.number for r in rounds] == [0, 1] and all(r.requests == 16 for r in rounds)
    # both curves: the loop's online reward per round and the offline reference over the loop's wall clock
    assert [r.minutes for r in rounds] == sorted(r.minutes for r in rounds) and rounds[0].minutes > 0
    assert len(result.reference) == 7 and all(0.0 <= y <= 1.0 for _, y in result.reference)
    assert result.reference[-1][0] >= 0.05  # trained for the minutes asked (by default: as long as the loop ran)
    svg = (tmp_path / "home" / "demo.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "offline GRPO reference" in svg
    assert all("primary:base" in r.reward for r in rounds)
    db = Database(f"sqlite:///{tmp_path / 'home' / 'teachloop.db'}")
    with db.session(write=False) as s:
        org = bootstrap(s).org.id
    its = history(db, org, "calc")
    assert its and all(i["status"] in ("skipped", "rejected", "canary", "failed") for i in its)
    assert not any(i["status"] == "failed" for i in its), [i["reason"] for i in its]
    db.close()

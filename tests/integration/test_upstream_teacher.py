"""Distillation end to end on the CPU (issue 17): a second teachloop server is the upstream "teacher".

The teacher is a teachloop server over real HTTP (uvicorn, its own database and key; the echo engine answers
with the user's text). The product's teachloop serves a tiny random Llama locally and fronts the teacher with
an upstream deployment. The official ``openai`` client is the caller throughout. The loop distils the
teacher's traced answers into an SFT student, gates it, serves it on the canary beside the upstream arm,
promotes it, and the rollback puts the upstream back; the history shows teacher vs student per iteration.
A stopped teacher gives the caller the documented error and leaves a trace that says what happened.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from teachloop.app import AppDeps, create_app
from teachloop.core.settings import Settings
from teachloop.loop import LoopRunner, TrainDeps, history
from teachloop.render import Renderer
from teachloop.serve import Serving, ServingConfig
from teachloop.store import BlobStore, Database, bootstrap
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema.traces import Trace
from tests._tiny import tiny_llama, tiny_tokenizer
from tests.integration.test_loop_tiny import DIGITS, install_digits
from tests.unit.serve.fakes import EchoEngine

BASE = "tiny-llama"
TEACHER = "echo-teacher"


def _world(root: Path) -> tuple[Settings, Database, BlobStore, str, str]:
    settings = Settings(home=root, model_cache=root / "models", database_url=f"sqlite:///{root / 't.db'}",
                        blob_url=str(root / "blobs"))
    db = Database(settings.database_url)
    db.migrate()
    with db.session() as s:
        first = bootstrap(s, "acme", "owner@acme.test")
        assert first.key is not None
        return settings, db, BlobStore(settings.blob_url), first.key.secret, first.org.id


@contextmanager
def _served(app: Any) -> Iterator[str]:
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def teacher_server(root: Path) -> Iterator[tuple[str, str]]:
    """A teachloop server answering with the echo engine: (base URL, its API key)."""
    settings, db, blobs, key, _ = _world(root)
    tokenizer = tiny_tokenizer()
    serving = Serving(db, blobs, engine=EchoEngine(tokenizer), renderer=Renderer(tokenizer), base_model=TEACHER)
    serving.start()
    deps = AppDeps(settings, db, blobs, serving=serving)
    try:
        with _served(create_app(deps)) as url:
            yield url + "/v1", key
    finally:
        deps.close()


def _config() -> dict[str, Any]:
    return {
        "sources": [{"kind": "upstream"}],
        "curation": {"holdout_frac": 0.25, "pii": False, "near_dup_threshold": None, "dedupe": False},
        "trigger": {"every": 16, "min_examples": 8},
        "algorithm": {"kind": "sft", "warm_start": False, "train": {
            "steps": 6, "seed": 1, "lora": {"rank": 8, "unembed": True}, "optim": {"lr": 2e-2}}},
        # the holdout likelihood decides; the digits tasks are a guard suite whose baseline is the teacher itself
        "gate": {"metric": "likelihood", "confidence": 0.9, "bootstrap_samples": 1000, "max_regression": 5.0,
                 "max_tokens": 8, "environments": [{"env": DIGITS, "tasks": 4, "seed": 3}]},
        "promotion": {"canary_percent": 50, "canary_min_requests": 4, "min_samples": 4, "signals": ["feedback"],
                      "allow_blind_promotion": True, "watch_requests": 4},
    }


def test_a_student_is_distilled_from_a_teachloop_teacher_gated_canaried_promoted_and_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from teachloop.engine.torch_engine import TorchEngine

    monkeypatch.setenv("TEACHLOOP_UPSTREAM_KEY", Fernet.generate_key().decode())
    install_digits(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = tiny_llama(tmp_path / "models", name=BASE)
    settings, db, blobs, key, org = _world(tmp_path / "product")
    engine = TorchEngine(model, device="cpu")
    renderer = Renderer.from_pretrained(model)
    serving = Serving(db, blobs, engine=engine, renderer=renderer, base_model=BASE,
                      config=ServingConfig(sync_interval_s=0.2, default_max_tokens=8))
    serving.start()
    deps = AppDeps(settings, db, blobs, engine=engine, serving=serving)
    with teacher_server(tmp_path / "teacher") as (teacher_url, teacher_key), TestClient(create_app(deps)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        r = client.post("/api/deployments", json={
            "name": "support", "upstream": {"base_url": teacher_url, "model": TEACHER, "api_key": teacher_key},
            "prices": {TEACHER: {"prompt_per_1m": 150, "completion_per_1m": 600},
                       BASE: {"prompt_per_1m": 2, "completion_per_1m": 4}}})
        assert r.status_code == 201, r.text
        assert teacher_key not in r.text
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)

        def ask(i: int, user: str = "u") -> Any:
            return oai.chat.completions.create(model="support", max_tokens=8, temperature=0, user=user,
                                               messages=[{"role": "user", "content": f"Say {i % 9} please"}])

        for i in range(20):
            assert ask(i).choices[0].message.content == f"Say {i % 9} please"  # the teacher echoes
        streamed = oai.chat.completions.create(model="support", stream=True, max_tokens=8,
                                               messages=[{"role": "user", "content": "Say 1 please"}])
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Say 1 please"
        with db.session(write=False) as s:
            traces = list(s.scalars(select(Trace)))
        assert len(traces) == 21 and all(t.upstream_id and t.cost_micro and t.completion_tokens for t in traces)

        assert client.put("/api/loops/support", json=_config()).status_code == 200
        runner = LoopRunner(TrainDeps(engine, renderer, db, blobs, org, tmp_path / "envs", BASE), "support")
        asyncio.run(runner.tick())
        [it] = history(db, org, "support")
        assert it["run"]["status"] == "completed" and it["status"] == "canary", it["reason"]
        assert it["gate"]["baseline"] == f"upstream:{TEACHER}"  # the student was gated against the teacher
        assert [s["name"] for s in it["gate"]["suites"]] == ["holdout", DIGITS]
        assert it["arms"]["teacher"]["requests"] >= 21 and it["arms"]["teacher"]["cost_per_1k"] > 0
        with db.session(write=False) as s:
            dep = Deployments(s).get(org, "support")
        assert dep.upstream_id is not None and dep.canary_version_id is not None  # the student beside the teacher

        arms: Counter[str] = Counter()
        for u in range(40):
            out = ask(u, user=f"user{u}")
            arms[_trace_arm(db, out.id)] += 1
            if min(arms["primary"], arms["canary"]) >= 4:
                break
        assert min(arms["primary"], arms["canary"]) >= 4, arms
        asyncio.run(runner.tick())
        [it] = history(db, org, "support")
        assert it["status"] == "promoted", it["reason"]
        with db.session(write=False) as s:
            dep = Deployments(s).get(org, "support")
        assert dep.upstream_id is None and dep.adapter_version_id is not None  # the owned adapter serves everyone
        assert it["arms"]["student"]["requests"] >= 4 and it["arms"]["student"]["cost_per_1k"] is not None
        assert it["arms"]["cost_saved_per_1k"] > 0
        rest = client.get("/api/loops/support/iterations").json()["data"][0]["arms"]
        assert rest["student"]["requests"] == it["arms"]["student"]["requests"] and rest["teacher"]["score"] is None

        # made worse: roll back to the state before the canary (what the loop's watch does) -- the teacher again
        back = client.post("/api/deployments/support/rollback", json={"to_revision": it["revisions"]["before"]})
        assert back.status_code == 200 and back.json()["upstream"]["model"] == TEACHER
        assert back.json()["adapter"] is None and back.json()["canary"] is None
        assert ask(3).choices[0].message.content == "Say 3 please"

    # the teacher is gone: connection refused, relayed as a 502 with a trace that says so
    with pytest.raises(openai.APIStatusError) as caught, TestClient(create_app(deps)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0
                      ).chat.completions.create(model="support", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    with db.session(write=False) as s:
        failed = list(s.scalars(select(Trace).where(Trace.finish_reason == "error")))
    assert len(failed) == 1 and failed[0].error is not None and failed[0].error["what"] == "connection_refused"
    deps.close()


def _trace_arm(db: Database, completion_id: str) -> str:
    with db.session(write=False) as s:
        trace = s.get(Trace, completion_id.removeprefix("chatcmpl-"))
        assert trace is not None
        return str(trace.arm)

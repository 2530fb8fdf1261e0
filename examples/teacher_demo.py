"""From a hosted "teacher" to an owned student, on the CPU (issue 17): the upstream-deployment story end to end.

1. A **teacher**: a second teachloop server (uvicorn, its own database and key) serving the embedded
   default model -- it stands in for the hosted OpenAI-compatible model a product starts with.
2. The **product's** teachloop (the same default model loaded for the student) with a deployment ``calc``
   whose primary arm is an upstream in front of the teacher (its key stored encrypted), and per-model
   prices: the teacher at hosted-API prices, the base model at the cost of running it.
3. Traffic: one-digit arithmetic questions (the ``arithmetic`` environment, level 1) sent with the official
   ``openai`` client; every call is relayed, traced, priced.
4. The loop, source ``upstream``: SFT on the teacher's traced replies; the gate's paired test on the held-out
   replies' likelihood (student vs base model) decides, and held-out ``arithmetic`` tasks answered by the
   student and by the teacher itself guard against the student being worse than the teacher; then the
   student serves the canary beside the upstream arm and is promoted once both arms have served -- the owned
   adapter answers everyone.
5. Prints the student's gate score against the teacher's, the arms' cost per 1,000 requests and the cost
   saved per 1,000 requests (from the deployment's prices).

    TEACHLOOP_UPSTREAM_KEY=... python examples/teacher_demo.py [--requests 48] [--steps 12]

A few minutes on 2 CPU cores (the default model is pulled once into the usual model cache).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEPLOYMENT = "calc"
TEACHER = "hosted-teacher"  # the teacher server's deployment of the default model (the upstream's model id)
#: minor units (US cents) per 1M tokens: a hosted model's list price, and running the small model yourself
TEACHER_PRICE = {"prompt_per_1m": 150, "completion_per_1m": 600, "currency": "USD"}
OWNED_PRICE = {"prompt_per_1m": 2, "completion_per_1m": 4, "currency": "USD"}


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free local port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def teachloop_server(home: Path, name: str, model: Path, base: str) -> Iterator[tuple[str, str, Any]]:
    """A teachloop server of the default model in ``home``: (base URL, API key, its world)."""
    from teachloop.app import AppDeps, create_app
    from teachloop.core.settings import Settings
    from teachloop.engine.factory import load_model
    from teachloop.serve import Serving, ServingConfig
    from teachloop.store import BlobStore, Database, bootstrap

    settings = Settings.from_env({**os.environ, "TEACHLOOP_HOME": str(home)})
    database = Database(settings.database_url)
    database.migrate()
    with database.session() as s:
        first = bootstrap(s, name, f"owner@{name}.test")
        assert first.key is not None
        key, org_id = first.key.secret, first.org.id
    blobs = BlobStore(settings.blob_url)
    loaded = load_model(settings, str(model), device="cpu")
    serving = Serving(database, blobs, engine=loaded.engine, renderer=loaded.renderer, base_model=base,
                      config=ServingConfig(max_rows=16, default_max_tokens=16, sync_interval_s=0.5))
    serving.start()
    deps = AppDeps(settings, database, blobs, engine=loaded.engine, serving=serving)
    world = {"database": database, "blobs": blobs, "engine": loaded.engine, "renderer": loaded.renderer,
             "org_id": org_id, "home": home}
    try:
        with serve(create_app(deps)) as url:
            yield url, key, world
    finally:
        deps.close()


def loop_config(args: argparse.Namespace) -> dict[str, Any]:
    """SFT on the teacher's replies; gate and canary against the teacher."""
    env = {"env": "arithmetic", "env_args": {"level": 1}}
    return {
        "sources": [{"kind": "upstream"}],
        "curation": {"holdout_frac": 0.2, "pii": False},
        "trigger": {"every": args.requests, "min_examples": 16},
        "algorithm": {"kind": "sft", "warm_start": False, "train": {
            "steps": args.steps, "seed": 1, "lora": {"rank": 8}, "optim": {"lr": 1e-3}}},
        # the student must fit the teacher's held-out replies better than the base model does (likelihood
        # decides), and must not answer held-out arithmetic worse than the teacher (a guard suite whose baseline
        # is the teacher itself: a drop of more than max_regression fails the gate)
        "gate": {"metric": "likelihood", "test": "bootstrap", "confidence": 0.9, "max_regression": 0.1,
                 "max_tokens": 16, "environments": [{**env, "tasks": args.gate_tasks, "seed": 1_000_003}]},
        "promotion": {"canary_percent": 50, "canary_min_requests": 6, "min_samples": 6, "signals": ["feedback"],
                      "canary_max_samples": 6,
                      "allow_blind_promotion": True, "watch_requests": 6},
    }


def ask(oai: Any, tasks: list[Any], start: int = 0) -> list[str]:
    """Send each task's question (greedy, one ``user`` per question); the completion ids."""
    ids = []
    for i, task in enumerate(tasks):
        out = oai.chat.completions.create(model=DEPLOYMENT, messages=[m.to_openai() for m in task.prompt],
                                          max_tokens=16, temperature=0, user=f"user-{start + i}")
        ids.append(out.id)
    return ids


def main() -> None:
    import httpx
    import openai
    from cryptography.fernet import Fernet

    from teachloop.core.settings import DEFAULT_MODEL, Settings
    from teachloop.engine.models import ensure_default_model
    from teachloop.envs import Arithmetic
    from teachloop.loop import LoopRunner, TrainDeps, history

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="Questions sent through the teacher first.")
    parser.add_argument("--steps", type=int, default=12, help="SFT steps of the student.")
    parser.add_argument("--gate-tasks", type=int, default=24, help="Held-out arithmetic tasks of the gate.")
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("TEACHLOOP_UPSTREAM_KEY", Fernet.generate_key().decode())
    root = args.home or Path(tempfile.mkdtemp(prefix="tl-teacher-demo-"))
    model = ensure_default_model(Settings.from_env(), progress=True)
    t0 = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {text}", flush=True)

    with teachloop_server(root / "teacher", "teacher", model, DEFAULT_MODEL) as (teacher_url, teacher_key, _), \
            teachloop_server(root / "product", "product", model, DEFAULT_MODEL) as (url, key, world):
        say(f"teacher {teacher_url} serves {TEACHER!r} ({DEFAULT_MODEL}); the product's teachloop is {url}")
        r = httpx.post(f"{teacher_url}/api/deployments", json={"name": TEACHER}, timeout=60,
                       headers={"Authorization": f"Bearer {teacher_key}"})  # the "hosted" model's name
        r.raise_for_status()
        headers = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"{url}/api/deployments", headers=headers, timeout=60, json={
            "name": DEPLOYMENT, "upstream": {"base_url": teacher_url + "/v1", "model": TEACHER, "api_key": teacher_key},
            "prices": {TEACHER: TEACHER_PRICE, DEFAULT_MODEL: OWNED_PRICE}})
        r.raise_for_status()
        r = httpx.put(f"{url}/api/loops/{DEPLOYMENT}", headers=headers, timeout=60, json=loop_config(args))
        r.raise_for_status()
        oai = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=600)
        ask(oai, Arithmetic(level=1).take(args.requests, seed=7))
        say(f"{args.requests} questions answered by the teacher through the upstream arm, each traced and priced")

        runner = LoopRunner(TrainDeps(world["engine"], world["renderer"], world["database"], world["blobs"],
                                      world["org_id"], root / "envs", DEFAULT_MODEL), DEPLOYMENT)
        asyncio.run(runner.tick())
        [it] = history(world["database"], world["org_id"], DEPLOYMENT)
        say(f"iteration 1: {it['status']} ({it['reason']})")
        if it["status"] == "canary":
            extra = Arithmetic(level=1).take(24, seed=11)
            for i in range(0, len(extra), 6):
                ask(oai, extra[i:i + 6], start=1000 + i)
                asyncio.run(runner.tick())
                [it] = history(world["database"], world["org_id"], DEPLOYMENT)
                if it["status"] != "canary":
                    break
            say(f"canary judged: {it['status']} ({it['reason']})")
        report(it)


def report(it: dict[str, Any]) -> None:
    """The student against the teacher, and what the switch saves."""
    gate = it.get("gate") or {}
    print("\n== student vs teacher ==")
    print(f"gate: passed {gate.get('passed')}, baseline {gate.get('baseline')} -- {gate.get('reason')}")
    for suite in gate.get("suites") or []:
        against = "teacher" if suite["metric"] == "reward" else "base model"  # likelihood needs logprobs
        print(f"  {suite['name']} ({suite['metric']}, n {suite['n']}): student {_num(suite['candidate_mean'])}, "
              f"{against} {_num(suite['baseline_mean'])}, mean diff {_num(suite['mean_diff'])}")
    arms = it.get("arms") or {}
    for name in ("teacher", "student"):
        a = arms.get(name) or {}
        print(f"  {name:<8} requests {a.get('requests')}, cost per 1,000 requests {_num(a.get('cost_per_1k'))} "
              "US cents")
    print(f"cost saved per 1,000 requests: {_num(arms.get('cost_saved_per_1k'))} US cents; final status "
          f"{it['status']}")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()

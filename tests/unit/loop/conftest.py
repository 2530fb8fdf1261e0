"""Loop fixtures: a migrated SQLite store with one organisation and a deployment, traffic written as
serving writes it, the fake engine behind the tiny tokenizer's renderer, and loop configs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from teachloop.core.ids import new_id  # noqa: E402
from teachloop.engine.fake import FakeEngine  # noqa: E402
from teachloop.envs import Arithmetic  # noqa: E402
from teachloop.loop.training import TrainDeps  # noqa: E402
from teachloop.render import Renderer  # noqa: E402
from teachloop.store import BlobStore, Database, Tenancy  # noqa: E402
from teachloop.store.repos.deployments import Deployments, DeploymentState  # noqa: E402
from teachloop.store.repos.traces import Traces  # noqa: E402
from teachloop.store.schema.traces import Trace  # noqa: E402
from tests._tiny import tiny_tokenizer  # noqa: E402

BASE = "tiny-base"
DEPLOYMENT = "calc"
SYSTEM = "Solve the arithmetic problem. End with a line 'answer: <number>'."


@dataclass
class Store:
    db: Database
    blobs: BlobStore
    org_id: str
    deployment_id: str
    cache: Path


@pytest.fixture
def store(migrated_sqlite: Callable[[Path], str], tmp_path: Path) -> Iterator[Store]:
    db = Database(migrated_sqlite(tmp_path / "teachloop.db"))
    with db.session() as s:
        org_id = Tenancy(s).create_org("acme").id
        dep = Deployments(s).create(org_id, DEPLOYMENT, DeploymentState(BASE))
        dep_id = dep.id
    yield Store(db, BlobStore(tmp_path / "blobs"), org_id, dep_id, tmp_path / "envs")
    db.close()


@pytest.fixture(scope="session")
def renderer() -> Renderer:
    return Renderer(tiny_tokenizer())


@pytest.fixture
def fake_engine(renderer: Renderer) -> FakeEngine:
    return FakeEngine(vocab_size=len(renderer.tokenizer), eos_token_id=renderer.stop_token_ids()[0], seed=3)


def deps_for(store: Store, engine: Any, renderer: Renderer) -> TrainDeps:
    return TrainDeps(engine=engine, renderer=renderer, database=store.db, blobs=store.blobs, org_id=store.org_id,
                     env_cache=store.cache, base_model=BASE)


_CLOCK = [datetime(2026, 1, 1, tzinfo=UTC)]


def add_trace(store: Store, user: str, reply: str, *, system: str | None = SYSTEM, metadata: dict[str, Any] | None = None,
              arm: str = "primary", adapter_version_id: str | None = None, when: datetime | None = None,
              end_user: str | None = None) -> str:
    """A trace of the deployment, as the serving trace writer stores it; returns its id."""
    _CLOCK[0] += timedelta(seconds=1)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    row = Trace(id=new_id("tr"), org_id=store.org_id, key_id=None, model=DEPLOYMENT, deployment_id=store.deployment_id,
                deployment_revision=1, arm=arm, adapter_version_id=adapter_version_id, base_model=BASE,
                messages=messages, tools=None,
                choices=[{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop",
                          "completion_tokens": 3}],
                params={}, finish_reason="stop", prompt_tokens=5, completion_tokens=3, latency_ms=1.0, ttft_ms=None,
                stream=False, user=end_user, request_metadata=dict(metadata or {}),
                created_at=when or datetime.now(UTC))
    with store.db.session() as s:
        Traces(s).add_many([row])
    return row.id


def arithmetic_traffic(store: Store, n: int, *, correct_every: int = 2, seed: int = 0, **kw: Any) -> list[str]:
    """``n`` traces of one-digit arithmetic prompts; every ``correct_every``-th reply is right."""
    ids = []
    for i, task in enumerate(Arithmetic(level=1).take(n, seed)):
        answer = int(task.answer or 0)
        reply = f"answer: {answer if i % correct_every == 0 else answer + 1}"
        ids.append(add_trace(store, task.prompt[-1].content, reply, **kw))
    return ids


def grpo_config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "deployment": DEPLOYMENT,
        "sources": [{"kind": "grader", "env": "arithmetic", "env_args": {"level": 1}, "lookup_tasks": 2000}],
        "curation": {"holdout_frac": 0.2},  # pii: on, the documented default (issue 16: tested as shipped)
        "trigger": {"every": 10, "min_examples": 4},
        "algorithm": {"kind": "grpo", "train": {"steps": 2, "lora": {"rank": 4},
                                                 "rl": {"prompts_per_step": 2, "group_size": 2, "max_tokens": 4}}},
        "gate": {"max_tokens": 4, "bootstrap_samples": 200},
        "promotion": {"canary_percent": 50, "canary_min_requests": 4, "min_samples": 4, "watch_requests": 4},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def sft_config(**over: Any) -> dict[str, Any]:
    cfg = grpo_config(**over)
    cfg["algorithm"] = over.get("algorithm", {"kind": "sft", "train": {"steps": 2, "lora": {"rank": 4},
                                                                     "data": {"batch_size": 2}}})
    return cfg

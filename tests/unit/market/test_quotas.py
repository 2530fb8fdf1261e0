"""Quotas: tokens per day (serving), concurrent runs (run creation), spend -- 429 naming the quota, nothing stored."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from teachloop.app import AppDeps, create_app
from teachloop.core.errors import QuotaExceeded
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.market.billing import Billing
from teachloop.market.quotas import Quotas, serving_admission
from teachloop.serve.service import Serving
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy
from teachloop.store.schema import JobRow, Trace, TrainingRun
from tests._tiny import tiny_llama
from tests.unit.app.conftest import auth, error_of


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
def app(deps: AppDeps) -> FastAPI:
    return create_app(deps)


def _org(database: Database, name: str) -> tuple[str, str]:
    with database.session() as s:
        tenancy = Tenancy(s)
        org = tenancy.create_org(name)
        user = tenancy.create_user(f"owner@{name}.test")
        tenancy.add_member(org.id, user.id, Role.OWNER)
        return org.id, ApiKeys(s).create_key(org.id, user.id, Role.OWNER, "owner").secret


def _trace(org: str, tokens: int, at: datetime) -> Trace:
    return Trace(org_id=org, model="m", base_model="m", messages=[], choices=[], params={}, finish_reason="stop",
                 prompt_tokens=tokens, completion_tokens=0, latency_ms=1.0, created_at=at)


def _grpo() -> dict[str, Any]:
    return {"name": "arith", "algorithm": "grpo", "steps": 2, "checkpoint_every": 1,
            "rl": {"env": "arithmetic", "prompts_per_step": 2, "group_size": 2, "max_tokens": 8}, "eval": {"tasks": 2}}


def test_tokens_per_day_refuses_serving_with_the_reset_time(deps: AppDeps) -> None:
    org, _ = _org(deps.database, "acme")
    now = datetime.now(UTC)
    with deps.database.session() as s:
        Quotas(s).set(org, "tokens_per_day", 1000)
        s.add(_trace(org, 600, now))
        s.add(_trace(org, 600, now - timedelta(days=1)))  # yesterday's tokens do not count
    admit = serving_admission(deps.database)
    admit(org, "m")  # 600 < 1000
    with deps.database.session() as s:
        s.add(_trace(org, 400, now))
    serving = Serving(deps.database, deps.blobs, admission=admit)
    with pytest.raises(QuotaExceeded) as err:
        serving.generation_target(org, "no-such-model-either", None)  # refused before anything else is looked up
    assert err.value.param == "tokens_per_day" and err.value.status == 429
    assert "1000 of 1000 tokens" in err.value.message and "resets at" in err.value.message
    assert err.value.retry_after is not None and 0 < err.value.retry_after <= 86_400
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.param, again.retry_after) == ("tokens_per_day", err.value.retry_after)
    other, _ = _org(deps.database, "globex")
    admit(other, "m")  # another organisation's quota is its own


def test_chat_past_the_token_quota_is_429_and_stores_no_trace(app: FastAPI, deps: AppDeps) -> None:
    org, key = _org(deps.database, "acme")
    with deps.database.session() as s:
        Quotas(s).set(org, "tokens_per_day", 0)
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", headers=auth(key),
                        json={"model": "anything", "messages": [{"role": "user", "content": "hi"}]})
    err = error_of(r, 429)
    assert err["code"] == "quota_exceeded" and err["param"] == "tokens_per_day"
    assert int(r.headers["Retry-After"]) > 0
    with deps.database.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Trace)) == 0


def test_concurrent_runs_quota_refuses_run_creation_and_queues_nothing(app: FastAPI, deps: AppDeps) -> None:
    org, key = _org(deps.database, "acme")
    with deps.database.session() as s:
        Quotas(s).set(org, "concurrent_runs", 1)
    with TestClient(app) as client:
        first = client.post("/api/runs", headers=auth(key), json={"config": _grpo()})
        assert first.status_code == 201, first.text
        second = client.post("/api/runs", headers=auth(key), json={"config": _grpo()})
        err = error_of(second, 429)
        assert err["code"] == "quota_exceeded" and err["param"] == "concurrent_runs"
        assert "frees up when" in err["message"]
    with deps.database.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(TrainingRun)) == 1
        assert s.scalar(select(func.count()).select_from(JobRow)) == 1
        status = {q.name.value: (q.limit, q.used) for q in Quotas(s).status(org)}
    assert status == {"concurrent_runs": (1, 1)}


def test_spend_quota_counts_this_months_metered_usage(deps: AppDeps) -> None:
    org, _ = _org(deps.database, "acme")
    now = datetime.now(UTC)
    with deps.database.session() as s:
        Billing(s).set_price("prompt_tokens", "*", "1", "USD")  # 1 USD per 1k tokens
        Quotas(s).set(org, "spend_per_month", 150)  # 1.50 USD
        s.add(_trace(org, 1000, now))
    admit = serving_admission(deps.database)
    admit(org, "m")  # 100 cents spent
    with deps.database.session() as s:
        s.add(_trace(org, 500, now))
    with pytest.raises(QuotaExceeded) as err:
        admit(org, "m")
    assert err.value.param == "spend_per_month" and "150 of 150 minor units" in err.value.message


def test_removing_a_quota_lifts_it_and_bad_names_are_400(deps: AppDeps) -> None:
    org, _ = _org(deps.database, "acme")
    with deps.database.session() as s:
        Quotas(s).set(org, "tokens_per_day", 0)
    admit = serving_admission(deps.database)
    with pytest.raises(QuotaExceeded):
        admit(org, "m")
    with deps.database.session() as s:
        Quotas(s).set(org, "tokens_per_day", None)
    admit(org, "m")
    with deps.database.session() as s, pytest.raises(ValueError) as bad:
        Quotas(s).set(org, "tokens_per_week", 5)
    assert getattr(bad.value, "param", None) == "name"

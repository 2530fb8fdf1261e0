"""Distillation from an upstream arm (issue 17): loop source ``upstream``, teacher vs student figures, canary moves.

Traffic goes through teachloop (official openai client) to the fake upstream teacher, with a local adapter as
the shadow student; the loop's pieces then read those traces. No training here (tests/integration does it).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from teachloop.core.chat import Message
from teachloop.core.errors import InvalidInput
from teachloop.core.sampling import SamplingParams
from teachloop.loop.config import check_references, validate_loop_config
from teachloop.loop.distill import arm_figures, iteration_figures, teacher_completer
from teachloop.loop.promotion import promote, roll_back, start_canary
from teachloop.loop.sources import collect
from teachloop.store import BlobStore, Database
from teachloop.store.repos.deployments import Deployments
from teachloop.store.schema.traces import Trace
from tests.unit.serve.conftest import Tenants, auth
from tests.unit.serve.test_serve_deployments import _publish
from tests.unit.serve.upstream_server import KEY, FakeUpstream

SECRET = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def _upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_UPSTREAM_KEY", SECRET)


def _traffic(client: TestClient, database: Database, key: str, prompts: list[str]) -> list[tuple[str, str]]:
    """(primary trace id, shadow trace id) per prompt (the shadow runs in the background)."""
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)
    ids = [oai.chat.completions.create(model="support", messages=[{"role": "user", "content": p}]).id[9:]
           for p in prompts]
    deadline = time.time() + 10
    while time.time() < deadline:
        with database.session(write=False) as s:
            shadows = {t.shadow_of: t.id for t in s.scalars(select(Trace).where(Trace.arm == "shadow"))}
        if all(i in shadows for i in ids):
            return [(i, shadows[i]) for i in ids]
        time.sleep(0.05)
    raise AssertionError("shadow traces missing")


def test_the_teachers_answers_become_sft_rows_and_dpo_pairs_and_the_arms_are_compared(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path,
) -> None:
    acme = tenants.acme
    student = _publish(database, blobs, acme.org_id, tmp_path, "student: ")
    with FakeUpstream() as up:
        r = client.post("/api/deployments", json={
            "name": "support", "upstream": {"base_url": up.base_url, "model": "teacher", "api_key": KEY},
            "shadow": {"adapter": student.ref, "percent": 100},
            "prices": {"teacher": {"prompt_per_1m": 150, "completion_per_1m": 600},
                       student.ref: {"prompt_per_1m": 1, "completion_per_1m": 1}},
        }, headers=auth(acme.owner))
        assert r.status_code == 201, r.text
        pairs = _traffic(client, database, acme.member, ["one", "two", "three"])
        for (teacher, shadow), (t_score, s_score) in zip(pairs, [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0)], strict=True):
            for trace, score in ((teacher, t_score), (shadow, s_score)):
                fb = client.post(f"/api/traces/{trace}/feedback", json={"score": score}, headers=auth(acme.member))
                assert fb.status_code == 201, fb.text

        def rows(source: dict[str, Any], algorithm: str = "sft") -> list[Any]:
            cfg = validate_loop_config({"deployment": "support", "sources": [source], "algorithm": {"kind": algorithm},
                                       "gate": {"metric": "likelihood"}, "promotion": {"signals": ["feedback"]}})
            with database.session(write=False) as s:
                refs = check_references(cfg, s, blobs=blobs, org_id=acme.org_id, cache=tmp_path)
                return collect(s, cfg, refs, org_id=acme.org_id, loop_id="loop_none")

        sft = rows({"kind": "upstream"})
        assert sorted(c.content["messages"][-1]["content"] for c in sft) == ["teacher: one", "teacher: three",
                                                                            "teacher: two"]
        assert all(c.source_kind == "upstream" and c.lineage["teacher"] for c in sft)
        kept = rows({"kind": "upstream", "filter": "feedback", "min_score": 1.0})
        assert [c.content["messages"][-1]["content"] for c in kept] == ["teacher: one"]
        dpo = rows({"kind": "upstream", "filter": "feedback"}, "dpo")
        chosen = sorted((c.content["chosen"]["content"], c.content["rejected"]["content"]) for c in dpo)
        assert chosen == [("student: two", "teacher: two"), ("teacher: one", "student: one")]

        with database.session(write=False) as s:
            dep = Deployments(s).get(acme.org_id, "support")
            arms = arm_figures(s, acme.org_id, dep.id)
            figures = iteration_figures(s, acme.org_id, dep.id, "loop_none", dep.created_at, None)
        assert arms["teacher"]["requests"] == 3 and arms["student"]["shadow_requests"] == 3
        assert arms["teacher"]["feedback"] == pytest.approx(1 / 3) and arms["student"]["feedback"] == pytest.approx(1 / 3)
        # the fake teacher bills 11 prompt + 3 completion tokens at 150 / 600 minor units per million
        assert arms["teacher"]["cost_per_1k"] == pytest.approx((11 * 150 + 3 * 600) / 1000)
        assert arms["student"]["cost_per_1k"] is not None and arms["student"]["cost_per_1k"] < arms["teacher"]["cost_per_1k"]
        assert figures["cost_saved_per_1k"] == pytest.approx(arms["teacher"]["cost_per_1k"] - arms["student"]["cost_per_1k"])

        # the gate's baseline: the teacher answers through a ChatCompleter with its key decrypted
        with database.session(write=False) as s:
            completer = teacher_completer(s, Deployments(s).get(acme.org_id, "support"))
        replies = asyncio.run(completer.complete([Message(role="user", content="gate")], SamplingParams(max_tokens=8)))
        assert replies[0].message.content == "teacher: gate"

        # the loop's canary, promotion and rollback move traffic from the upstream arm to the owned adapter and back
        with database.session() as s:
            canary = start_canary(s, acme.org_id, "support", student.id, 50)
            assert canary.upstream_id is not None and canary.canary_version_id == student.id
            before = canary.revision
            promoted = promote(s, acme.org_id, "support", student.id)
            assert promoted.upstream_id is None and promoted.adapter_version_id == student.id
            restored = roll_back(s, acme.org_id, "support", before - 1)
            assert restored.upstream_id is not None and restored.adapter_version_id is None
            assert restored.shadow_version_id == student.id and restored.prices  # kept throughout


def test_distillation_config_is_refused_without_a_teacher_or_without_a_local_arm(
    client: TestClient, tenants: Tenants, database: Database, blobs: BlobStore, tmp_path: Path,
) -> None:
    acme = tenants.acme
    with FakeUpstream() as up:
        spec = {"base_url": up.base_url, "model": "teacher", "api_key": KEY}
        assert client.post("/api/deployments", json={"name": "local"}, headers=auth(acme.owner)).status_code == 201
        r = client.post("/api/deployments", json={"name": "both", "upstream": spec,
                                                  "canary": {"upstream": spec, "percent": 10}}, headers=auth(acme.owner))
        assert r.status_code == 201, r.text

    def refused(deployment: str, source: dict[str, Any], algorithm: str = "sft") -> str | None:
        cfg = validate_loop_config({"deployment": deployment, "sources": [source], "algorithm": {"kind": algorithm},
                                       "gate": {"metric": "likelihood"}, "promotion": {"signals": ["feedback"]}})
        with database.session(write=False) as s, pytest.raises(InvalidInput) as caught:
            check_references(cfg, s, blobs=blobs, org_id=acme.org_id, cache=tmp_path)
        return caught.value.param

    assert refused("local", {"kind": "upstream"}) == "sources.0.kind"
    assert refused("both", {"kind": "upstream"}) == "deployment"
    assert refused("both", {"kind": "upstream", "filter": "grader"}) == "sources.0.filter"
    with pytest.raises(InvalidInput) as caught:
        validate_loop_config({"deployment": "both", "sources": [{"kind": "upstream", "min_score": 0, "max_score": 1}],
                              "algorithm": {"kind": "sft"}, "gate": {"metric": "likelihood"}, "promotion": {"signals": ["feedback"]}})
    assert caught.value.param == "sources.0"

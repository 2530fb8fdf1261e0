"""The loop as shipped scrubs PII: the documented default (``curation.pii = true``) and its URL, cloud-key,
token and SSN detectors, each on text that must go and on look-alikes that must stay; and one iteration run
with the default curation, whose snapshot holds the placeholders and none of the values."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from teachloop.loop import LoopRunner, configure_loop, history, validate_loop_config
from teachloop.loop.config import CurationConfig
from teachloop.loop.pii import scrub_text
from teachloop.render import Renderer
from teachloop.store.repos.datasets import Datasets
from tests.unit.loop.conftest import DEPLOYMENT, Store, add_trace, deps_for, grpo_config


def test_pii_scrubbing_is_on_by_default() -> None:
    assert CurationConfig().pii is True
    raw = grpo_config()
    raw["curation"].pop("pii", None)
    assert validate_loop_config(raw).curation.pii is True


@pytest.mark.parametrize(("text", "want", "gone"), [
    pytest.param("docs at https://intra.acme.example/pay?id=7, or www.acme.io/x.", "docs at {{URL}}, or {{URL}}.",
                 ["intra.acme", "acme.io"], id="url"),
    pytest.param("aws key AKIAIOSFODNN7EXAMPLE here", "aws key {{SECRET}} here", ["AKIA"], id="aws-access-key-id"),
    pytest.param("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                 "aws_secret_access_key = {{SECRET}}", ["wJalr"], id="aws-secret-key"),
    pytest.param("maps key AIzaSyA1234567890abcdefghijklmnopqrstuv ok", "maps key {{SECRET}} ok", ["AIza"],
                 id="google-api-key"),
    pytest.param("use ghp_abcdefghijklmnopqrstuvwxyz0123456789 now", "use {{SECRET}} now", ["ghp_"],
                 id="github-token"),
    pytest.param("export GITHUB_TOKEN=abcdefgh12345678", "export GITHUB_TOKEN={{SECRET}}", ["abcdefgh"],
                 id="token-assignment"),
    pytest.param("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "Authorization: Bearer {{SECRET}}",
                 ["eyJhb"], id="bearer-token"),
    pytest.param("openai sk-proj-abcdefghijklmnop1234 and slack xoxb-123456789012-abcdefghij",
                 "openai {{SECRET}} and slack {{SECRET}}", ["sk-proj", "xoxb"], id="api-tokens"),
    pytest.param("my ssn is 123-45-6789, thanks", "my ssn is {{SOCIAL_SECURITY_NUMBER}}, thanks", ["6789"],
                 id="ssn"),
    pytest.param("SSN: 078-05-1120 (or 219 09 9999)", "SSN: {{SOCIAL_SECURITY_NUMBER}} (or {{SOCIAL_SECURITY_NUMBER}})",
                 ["1120", "9999"], id="ssn-published-and-spaced"),
])
def test_each_detector_replaces_what_it_is_for(text: str, want: str, gone: list[str]) -> None:
    out = scrub_text(text)
    assert out == want
    assert not any(g in out for g in gone)


@pytest.mark.parametrize("text", [
    "What is 7 + 5?", "token budget: 5", "max_tokens: 32", "version 1.2.3 of the API", "call it at 10:30",
    "the keyword is secret", "order 12345", "see section 3.4.5", "on 2026-12-06", "not an ssn: 000-12-3456",
])
def test_look_alikes_stay(text: str) -> None:
    assert scrub_text(text) == text


def test_an_iteration_with_the_default_curation_snapshots_scrubbed_rows(store: Store, fake_engine: Any,
                                                                        renderer: Renderer) -> None:
    raw = grpo_config(trigger={"every": 6, "min_examples": 2})
    raw["curation"].pop("pii", None)  # the documented default: on
    raw["sources"] = [{"kind": "grader", "env": "arithmetic", "answer": "metadata:expected"}]
    configure_loop(store.db, store.blobs, store.org_id, raw, cache=store.cache)
    secrets = ["https://files.acme.example/q7", "AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
               "078-05-1120"]
    for i in range(12):
        leak = secrets[i % len(secrets)]
        add_trace(store, f"My id {leak}: what is {i} + 2?", f"answer: {i + 2}", system=None,
                  metadata={"expected": str(i + 2)})
    result = asyncio.run(LoopRunner(deps_for(store, fake_engine, renderer), DEPLOYMENT).tick())
    assert result.iteration == 1 and result.status != "skipped", result
    [it] = history(store.db, store.org_id, DEPLOYMENT)
    with store.db.session(write=False) as s:
        rows = Datasets(s).rows(store.org_id, it["dataset"]["id"])
        text = " ".join(str(r.content) for r in rows)
    assert len(rows) == 12
    assert not any(leak in text for leak in secrets), text
    for placeholder in ("{{URL}}", "{{SECRET}}", "{{SOCIAL_SECURITY_NUMBER}}"):
        assert placeholder in text

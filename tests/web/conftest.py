"""Console fixtures: a seeded world (two organisations, members with passwords, deployments, traces), the app.

The world is built once per session in a template (SQLite file + blob folder)
and copied for each test, so argon2 hashing and adapter publishing run once.
``acme`` has a deployment ``support`` at revision 3 (adapter bot@2, canary
bot@3 for 20 %), traces (one carrying a stored-XSS probe in its content,
tool call and metadata) and an owner, admin, member and viewer who sign in
with ``PASSWORD``; ``globex`` has its own deployment ``gx-only``, a trace, a
key and a pending invitation -- the objects acme must never reach.

For the loop, run, environment and dataset pages (``seed_pages``) each
organisation also has a completed training run with train and eval metrics and
checkpoints, a published environment with a stored evaluation, a dataset of
``DATASET_ROWS`` rows with lineage, and a loop on its deployment; acme's loop
has three iterations (rejected by the gate, promoted after a canary, failed)
and online scores over the last hours, and acme also holds the stored-XSS
probe in a run's name, config and metric name, a dataset row, an environment's
description and an iteration's reason. acme grants its dataset to globex.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from teachloop.core.loop import (  # noqa: E402
    CanaryRecord,
    IterationStage,
    IterationStatus,
    Judgement,
    OnlineSummary,
    Revisions,
)
from teachloop.core.settings import Settings  # noqa: E402
from teachloop.core.tenancy import Role  # noqa: E402
from teachloop.loop.config import validate_loop_config  # noqa: E402
from teachloop.render import Renderer  # noqa: E402
from teachloop.serve import Serving, ServingConfig, publish_adapter  # noqa: E402
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy  # noqa: E402
from teachloop.store.repos.datasets import Datasets, NewRow  # noqa: E402
from teachloop.store.repos.deployments import Deployments, DeploymentState  # noqa: E402
from teachloop.store.repos.environments import EnvironmentRegistry  # noqa: E402
from teachloop.store.repos.loops import Loops  # noqa: E402
from teachloop.store.repos.sessions import Passwords, SigninLinks  # noqa: E402
from teachloop.store.repos.traces import Traces  # noqa: E402
from teachloop.store.schema.base import utc_now  # noqa: E402
from teachloop.store.schema.loops import TraceScore  # noqa: E402
from teachloop.store.schema.runs import RunCheckpoint, RunMetric, TrainingRun  # noqa: E402
from teachloop.store.schema.traces import Trace  # noqa: E402
from tests._tiny import tiny_tokenizer  # noqa: E402
from tests.unit.serve.fakes import EchoEngine, adapter_folder  # noqa: E402

BASE = "tiny-base"
PASSWORD = "correct horse battery"
#: a stored-XSS probe: a script element, an attribute-breaking double and single quote, an event handler
XSS = "<script>alert('xss')</script>\"><img src=x onerror=alert(1)>'"
XSS_KEY = "k\"><script>alert(2)</script>"


@dataclass(frozen=True)
class Org:
    id: str
    owner: str
    admin: str
    member: str
    viewer: str
    key: str
    key_id: str
    trace_ids: list[str]
    invite_id: str


@dataclass(frozen=True)
class Seeded:
    """An organisation's objects for the loop, run, environment and dataset pages."""

    run: str
    xss_run: str | None
    dataset: str
    env: str
    loop: str  # the deployment the loop belongs to


@dataclass(frozen=True)
class World:
    acme: Org
    globex: Org
    xss_trace: str
    tool_trace: str
    acme_pages: Seeded
    globex_pages: Seeded


DATASET_ROWS = 55
#: (step, reward_mean, loss) of the seeded run's training curve
RUN_CURVE = [(s, 0.2 + 0.08 * s, 1.5 - 0.15 * s) for s in range(1, 9)]


def _run(s: Any, org_id: str, name: str, config: dict[str, Any], curve: list[tuple[int, dict[str, Any]]],
         evals: list[tuple[int, dict[str, Any]]]) -> str:
    run = TrainingRun(org_id=org_id, name=name[:200], algorithm="grpo", status="completed", base_model=BASE,
                      config=config, inputs={"env": {"ref": "arithmetic", "digest": "sha256:" + "c" * 64}},
                      step=len(curve), total_steps=len(curve), created_at=utc_now() - timedelta(minutes=35),
                      started_at=utc_now() - timedelta(minutes=30),
                      finished_at=utc_now() - timedelta(minutes=5))
    s.add(run)
    s.flush()
    s.add_all(RunMetric(org_id=org_id, run_id=run.id, step=step, phase="train", values=v) for step, v in curve)
    s.add_all(RunMetric(org_id=org_id, run_id=run.id, step=step, phase="eval", values=v) for step, v in evals)
    s.add_all(RunCheckpoint(org_id=org_id, run_id=run.id, step=step, blob_key=f"runs/{run.id}/checkpoints/{step:08d}")
              for step in (4, 8))
    s.flush()
    return run.id


def seed_pages(s: Any, org_id: str, name: str, dep_id: str, dep_name: str, trace_ids: list[str],
               versions: list[Any]) -> Seeded:
    """Runs, an environment, a dataset and a loop of one organisation (see the module docstring)."""
    acme = name == "acme"
    run = _run(s, org_id, f"{name}-grpo", {"name": f"{name}-grpo", "steps": 8, "lora": {"rank": 4}},
               [(st, {"reward_mean": r, "loss": lo}) for st, r, lo in RUN_CURVE],
               [(0, {"reward_mean": 0.3, "heldout_rows": 20.0}), (8, {"reward_mean": 0.8, "heldout_rows": 20.0})])
    xss_run = _run(s, org_id, XSS, {"name": XSS, "notes": XSS}, [(1, {XSS: 1.0, "loss": 0.5}), (2, {XSS: 2.0, "loss": 0.4})],
                   []) if acme else None
    registry = EnvironmentRegistry(s)
    env = f"{name}-env"
    for version, digit in (("1.0.0", "a"), ("1.1.0", "b")):
        registry.publish(org_id, name=env, version=version, digest="sha256:" + digit * 64, blob_key=f"envs/{env}",
                         manifest={"name": env, "version": version, "content_hash": "sha256:" + digit * 64,
                                   "description": XSS if acme else "Support questions.", "license": "Apache-2.0",
                                   "tools": ["lookup"], "tags": ["support"], "reward_range": [0.0, 1.0]})
    registry.record_eval(org_id, env_name=env, env_version="1.1.0", env_digest="sha256:" + "b" * 64, model=BASE,
                         report={"n_tasks": 20, "n_episodes": 20, "mean": 0.65, "ci_low": 0.45, "ci_high": 0.85})
    rows = [NewRow(content={"messages": [{"role": "user", "content": XSS if acme and i == 1 else f"Question {i}?"},
                                         {"role": "assistant", "content": f"Answer {i}."}]},
                   split="holdout" if i % 10 == 0 else "train", source_kind="feedback" if i % 2 else "grader",
                   source_trace_id=trace_ids[i % 2], env_ref="arithmetic" if i % 2 == 0 else None,
                   env_digest="sha256:" + "c" * 64 if i % 2 == 0 else None, score=1.0, license="CC-BY-4.0")
            for i in range(DATASET_ROWS)]
    dataset, _ = Datasets(s).create(org_id, name=f"{name}-sft", kind="chat", rows=rows, blob_key=f"datasets/{name}")
    cfg = validate_loop_config({
        "deployment": dep_name, "sources": [{"kind": "grader", "env": "arithmetic"}],
        "trigger": {"every": 10, "min_examples": 4}, "algorithm": {"kind": "grpo", "train": {"steps": 2}},
        "promotion": {"canary_percent": 20},
    })
    loops = Loops(s)
    loop, _ = loops.configure(org_id, dep_id, cfg.to_dict(), cfg.digest)
    if acme:
        _iterations(s, loops, org_id, loop.id, run, dataset.id, versions)
        scores = []
        for h in range(12):
            trace = add_trace(s, org_id, model=dep_name, deployment_id=dep_id, ago=timedelta(hours=h, minutes=5))
            scores.append(TraceScore(org_id=org_id, loop_id=loop.id, trace_id=trace,
                                     trace_created_at=utc_now() - timedelta(hours=h, minutes=5),
                                     arm="canary" if h % 3 == 0 else "primary", env_ref="arithmetic",
                                     env_digest="sha256:" + "c" * 64, score=0.5 + 0.03 * (12 - h)))
        loops.add_scores(scores)
    return Seeded(run, xss_run, dataset.id, env, dep_name)


def _iterations(s: Any, loops: Loops, org_id: str, loop_id: str, run: str, dataset: str, versions: list[Any]) -> None:
    now = utc_now()
    gate = {"passed": False, "reason": "not better at 95% confidence (mean diff -0.01 over 40 paired examples)",
            "test": {"method": "paired bootstrap", "n": 40, "mean_diff": -0.01, "lower_bound": -0.05, "p_value": 0.61,
                     "confidence": 0.95},
            "suites": [{"name": "holdout", "metric": "reward", "n": 40, "deciding": True, "baseline_mean": 0.6,
                        "candidate_mean": 0.59, "mean_diff": -0.01}]}
    first = loops.start_iteration(org_id, loop_id, "64 new usable examples")
    loops.update_iteration(org_id, first.id, status=IterationStatus.REJECTED, stage=IterationStage.DONE,
                           reason=gate["reason"], gate=gate, finished_at=now - timedelta(hours=3))
    second = loops.start_iteration(org_id, loop_id, "64 new usable examples")
    judged = Judgement(baseline=OnlineSummary(requests=80, graded=80, grader_mean=0.61, feedback=3, feedback_mean=0.5),
                       candidate=OnlineSummary(requests=20, graded=20, grader_mean=0.74, feedback=1, feedback_mean=1.0),
                       verdict="the candidate held up: grader mean 0.74 vs 0.61")
    loops.update_iteration(
        org_id, second.id, status=IterationStatus.PROMOTED, stage=IterationStage.WATCH, reason="promoted after canary",
        dataset_id=dataset, run_id=run, baseline_version_id=versions[1].id, candidate_version_id=versions[2].id,
        gate={**gate, "passed": True, "reason": "better at 95% confidence (mean diff +0.12 over 40 paired examples)",
              "test": {**gate["test"], "mean_diff": 0.12, "lower_bound": 0.05, "p_value": 0.001},
              "suites": [{**gate["suites"][0], "candidate_mean": 0.72, "mean_diff": 0.12}]},
        canary=CanaryRecord(started_at=now - timedelta(hours=2), percent=20, canary=judged,
                            promoted_at=now - timedelta(hours=1)),
        revisions=Revisions(before=2, canary=3, promoted=4), counts={"train": 48, "holdout": 6}, train_seconds=42.0)
    third = loops.start_iteration(org_id, loop_id, "interval")
    loops.update_iteration(org_id, third.id, status=IterationStatus.FAILED, stage=IterationStage.DONE, reason=XSS,
                           finished_at=now)


def add_trace(session: Any, org_id: str, *, model: str = "support", deployment_id: str | None = None,
              content: str = "What is 2+2?", reply: str = "4", metadata: dict[str, str] | None = None,
              tool_calls: list[dict[str, Any]] | None = None, ago: timedelta = timedelta(0)) -> str:
    """Store one trace as serving would (returns its id)."""
    message: dict[str, Any] = {"role": "assistant", "content": reply}
    if tool_calls:
        message["tool_calls"] = tool_calls
    row = Trace(
        org_id=org_id, key_id=None, model=model, deployment_id=deployment_id, deployment_revision=3, arm="primary",
        base_model=BASE, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        tools=None, choices=[{"index": 0, "message": message, "finish_reason": "stop", "completion_tokens": 2}],
        params={"temperature": 0}, finish_reason="stop", prompt_tokens=9, completion_tokens=2, latency_ms=12.5,
        ttft_ms=3.0, stream=False, user=None, request_metadata=metadata or {}, created_at=utc_now() - ago,
    )
    Traces(session).add_many([row])
    return row.id


def _org(db: Database, blobs: BlobStore, tmp: Path, name: str) -> tuple[Org, str | None, Seeded]:
    with db.session() as s:
        tenancy = Tenancy(s)
        org = tenancy.create_org(name)
        emails = {role: f"{role.value}@{name}.test" for role in (Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER)}
        passwords = Passwords(s)
        users = {}
        for role, email in emails.items():
            user = tenancy.create_user(email, f"{role.value.title()} of {name}")
            tenancy.add_member(org.id, user.id, role)
            passwords.set(user.id, PASSWORD)
            users[role] = user
        key = ApiKeys(s).create_key(org.id, users[Role.OWNER].id, Role.OWNER, "owner key")
        versions = [publish_adapter(s, blobs, org.id, name="bot", folder=adapter_folder(tmp / name, p),
                                    base_model=BASE)[0] for p in ("one ", "two ", "three ")]
        deployments = Deployments(s)
        dep_name = "support" if name == "acme" else "gx-only"
        dep = deployments.create(org.id, dep_name, DeploymentState(BASE, versions[0].id))
        deployments.update(org.id, dep_name, DeploymentState(BASE, versions[1].id))
        deployments.update(org.id, dep_name, DeploymentState(BASE, versions[1].id, versions[2].id, 20))
        traces = [
            add_trace(s, org.id, model=dep_name, deployment_id=dep.id, metadata={"app": "checkout"},
                      ago=timedelta(hours=2)),
            add_trace(s, org.id, model=dep_name, deployment_id=dep.id, content="Capital of France?", reply="Paris",
                      metadata={"app": "search"}, ago=timedelta(hours=1)),
        ]
        xss = None
        if name == "acme":
            xss = add_trace(s, org.id, model=dep_name, deployment_id=dep.id, content=XSS, reply=XSS,
                            metadata={XSS_KEY: XSS, "app": "probe"},
                            tool_calls=[{"id": "call_1", "type": "function",
                                         "function": {"name": XSS, "arguments": '{"q": "' + XSS.replace('"', '\\"') + '"}'}}])
            traces.append(xss)
        invite = SigninLinks(s).create_invite(org.id, f"invited@{name}.test", Role.MEMBER, actor="test")
        seeded = seed_pages(s, org.id, name, dep.id, dep_name, traces, versions)
        return Org(org.id, emails[Role.OWNER], emails[Role.ADMIN], emails[Role.MEMBER], emails[Role.VIEWER],
                   key.secret, key.key.id, traces, invite.info.id), xss, seeded


@pytest.fixture(scope="session")
def _template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, World]:
    root = tmp_path_factory.mktemp("console-template")
    db = Database(f"sqlite:///{root / 'teachloop.db'}")
    db.migrate()
    blobs = BlobStore(root / "blobs")
    acme, xss, acme_pages = _org(db, blobs, root, "acme")
    globex, _, globex_pages = _org(db, blobs, root, "globex")
    with db.session() as s:
        Datasets(s).grant(acme.id, "acme-sft", globex.id, license="CC-BY-4.0")
        tool = add_trace(s, acme.id, model=BASE, content="Weather in Paris?", reply="",
                         tool_calls=[{"id": "call_w", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}])
    db.close()
    assert xss is not None
    return root, World(acme, globex, xss, tool, acme_pages, globex_pages)


@pytest.fixture
def world(_template: tuple[Path, World]) -> World:
    return _template[1]


@pytest.fixture
def database(_template: tuple[Path, World], tmp_path: Path) -> Iterator[Database]:
    """The seeded world, copied for this test."""
    root, _ = _template
    shutil.copy(root / "teachloop.db", tmp_path / "teachloop.db")
    shutil.copytree(root / "blobs", tmp_path / "blobs")
    db = Database(f"sqlite:///{tmp_path / 'teachloop.db'}")
    yield db
    db.close()


@pytest.fixture
def blobs(database: Database, tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture(scope="session")
def renderer() -> Renderer:
    return Renderer(tiny_tokenizer())


@pytest.fixture
def serving(database: Database, blobs: BlobStore, renderer: Renderer) -> Iterator[Serving]:
    s = Serving(database, blobs, engine=EchoEngine(renderer.tokenizer), renderer=renderer, base_model=BASE,
                config=ServingConfig(sync_interval_s=0.1))
    s.start()
    yield s
    s.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, model_cache=tmp_path / "models", database_url="sqlite://", blob_url=str(tmp_path),
                    max_body_bytes=256 * 1024)


@pytest.fixture
def app(serving: Serving, database: Database, blobs: BlobStore, settings: Settings) -> Any:
    from teachloop.app import AppDeps
    from teachloop.web import create_console_app

    return create_console_app(AppDeps(settings, database, blobs, serving=serving))


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as c:
        yield c


_CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(client: Any, email: str, password: str = PASSWORD) -> Any:
    """Sign ``client`` in through the form (loads it first for the CSRF token); returns the POST's response."""
    form = client.get("/signin")
    assert form.status_code == 200, form.text
    return client.post("/signin", data={"email": email, "password": password, "csrf_token": csrf_of(form.text),
                                        "next": "/"})


def post_form(client: Any, page: str, action: str, data: dict[str, Any]) -> Any:
    """POST ``data`` to ``action`` with the CSRF token of ``page`` (as a browser submitting its form would)."""
    shown = client.get(page)
    assert shown.status_code in (200, 201), shown.text
    return client.post(action, data={**data, "csrf_token": csrf_of(shown.text)})

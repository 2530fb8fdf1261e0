"""Tenancy on every route of the app: a key of acme cannot list, read, change or infer globex's objects.

The route list is read from the app (``app_routes``), so a route added without a probe
here fails ``test_every_route_has_a_tenancy_probe``. Each probe runs against a world
where both organisations own one of everything (deployment with an adapter, traces,
feedback, a loop, a dataset, a grant) and checks, with acme's owner key (the most
powerful), one of:

- ``Hidden``: naming globex's object is answered exactly like naming one that does not
  exist (same status, same body once the two names are swapped), and writes nothing;
- ``Listing``: acme's listing holds acme's own objects and nothing of globex's;
- a custom check for the routes that take no object (stats, whoami, the OpenAPI document,
  creating and importing under a name globex also uses).

After every probe, every row globex owns (every org-owned table) is exactly as before;
after a ``Hidden`` probe, acme's rows are too.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from teachloop.core.ids import new_id
from teachloop.core.settings import Settings
from teachloop.loop.config import validate_loop_config
from teachloop.serve import publish_adapter
from teachloop.store import BlobStore, Database
from teachloop.store.repos.datasets import Datasets, NewRow, encode_snapshot
from teachloop.store.repos.deployments import Deployments
from teachloop.store.repos.loops import Loops
from teachloop.store.repos.tenancy import Tenancy
from teachloop.store.schema.base import Base
from tests.unit.app.routelist import app_routes
from tests.unit.loop.conftest import grpo_config
from tests.unit.serve.conftest import BASE, Tenant, Tenants, auth
from tests.unit.serve.fakes import adapter_folder

CHAT = "/v1/chat/completions"


@dataclass
class World:
    acme: Tenant
    globex: Tenant
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def markers(self) -> list[str]:
        """Strings only globex's objects contain: none may reach acme."""
        return ["gx-private", "gxbot", "gxdata", "gx-confidential", self.globex.org_id,
                *(v for k, v in self.ids.items() if k.startswith("g_"))]


def _dataset(database: Database, blobs: BlobStore, org_id: str, name: str, text: str) -> str:
    rows = [NewRow(content={"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]},
                   split="train", source_kind="dataset")]
    data, digest = encode_snapshot("chat", rows)
    key = f"datasets/{org_id}/{digest.removeprefix('sha256:')}.jsonl"
    blobs.put_bytes(key, data)
    with database.session() as s:
        dataset, _ = Datasets(s).create(org_id, name=name, kind="chat", rows=rows, blob_key=key)
        return dataset.id


def _loop(database: Database, org_id: str, deployment: str) -> str:
    cfg = validate_loop_config(grpo_config(deployment=deployment))
    with database.session() as s:
        dep = Deployments(s).get(org_id, deployment)
        loop, _ = Loops(s).configure(org_id, dep.id, cfg.to_dict(), cfg.digest)
        return loop.id


def _own_everything(client: TestClient, database: Database, blobs: BlobStore, tmp: Path, t: Tenant, tag: str,
                    ids: dict[str, str], prefix: str) -> None:
    """Give ``t`` a deployment serving an adapter, a trace with feedback, a dataset, a loop and a grant."""
    names = {"a": ("support", "abot", "adata", "acme-question"), "g": ("gx-private", "gxbot", "gxdata",
                                                                       "gx-confidential question")}[prefix]
    deployment, adapter, dataset, text = names
    with database.session() as s:
        version, _ = publish_adapter(s, blobs, t.org_id, name=adapter, folder=adapter_folder(tmp / tag, f"{tag}: "),
                                     base_model=BASE)
        ids[f"{prefix}_adapter_version"] = version.id
    r = client.post("/api/deployments", json={"name": deployment, "adapter": f"{adapter}@1"}, headers=auth(t.owner))
    assert r.status_code == 201, r.text
    ids[f"{prefix}_deployment"] = r.json()["id"]
    r = client.post(CHAT, json={"model": deployment, "messages": [{"role": "user", "content": text}],
                                "user": f"{tag}-user", "metadata": {"project": f"{tag}-project"}},
                    headers=auth(t.member))
    assert r.status_code == 200, r.text
    ids[f"{prefix}_trace"] = r.headers["x-teachloop-trace-id"]
    r = client.post(f"/api/traces/{ids[f'{prefix}_trace']}/feedback", json={"score": 1, "label": f"{tag}-label"},
                    headers=auth(t.member))
    assert r.status_code == 201, r.text
    ids[f"{prefix}_feedback"] = r.json()["id"]
    r = client.post("/v1/responses", json={"model": deployment, "input": f"{text} (response)"}, headers=auth(t.member))
    assert r.status_code == 200, r.text
    ids[f"{prefix}_response"] = r.json()["id"]
    ids[f"{prefix}_dataset"] = _dataset(database, blobs, t.org_id, dataset, text)
    ids[f"{prefix}_loop"] = _loop(database, t.org_id, deployment)
    _own_runs_envs_evals(client, database, t, tag, ids, prefix)
    with database.session() as s:
        third = Tenancy(s).create_org(f"{tag}-partner")
        ids[f"{prefix}_partner"] = third.id
        if hasattr(Datasets, "grant"):
            grant = Datasets(s).grant(t.org_id, dataset, third.id, license="CC-BY-4.0")
            ids[f"{prefix}_grant"] = grant.id
    _own_market(database, blobs, t, tag, ids, prefix)


def _own_runs_envs_evals(client: TestClient, database: Database, t: Tenant, tag: str, ids: dict[str, str],
                         prefix: str) -> None:
    """A queued training run (with an idempotency key), a published environment version, a queued evaluation."""
    from teachloop.store.repos.environments import EnvironmentRegistry

    cfg = {"name": f"{tag}-run", "algorithm": "grpo", "steps": 2, "rl": {"env": "arithmetic"}}
    r = client.post("/api/runs", json={"config": cfg}, headers={**auth(t.owner), "Idempotency-Key": f"key-{prefix}"})
    assert r.status_code == 201, r.text
    ids[f"{prefix}_run"] = r.json()["id"]
    with database.session() as s:
        row, _ = EnvironmentRegistry(s).publish(t.org_id, name=f"{tag}env", version="1.0.0", digest="sha256:" + "0" * 64,
                                                manifest={"name": f"{tag}env"}, blob_key=f"envs/{tag}")
        ids[f"{prefix}_env"] = row.id
    r = client.post("/api/evals", json={"env": "arithmetic", "n": 2}, headers=auth(t.owner))
    assert r.status_code == 201, r.text
    ids[f"{prefix}_eval"] = r.json()["id"]


def _own_market(database: Database, blobs: BlobStore, t: Tenant, tag: str, ids: dict[str, str], prefix: str) -> None:
    """A published listing (with an offer) and a draft listing of ``t``'s dataset; ``t`` buys its partner's
    listing (an order, an entitlement) and signs a download link for it."""
    from teachloop.core.money import Money
    from teachloop.market import downloads, listings, offers, orders

    partner, own = ids[f"{prefix}_partner"], {"a": "adata@1", "g": "gxdata@1"}[prefix]
    _dataset(database, blobs, partner, f"{tag}pdata", f"{tag} partner row")
    with database.session() as s:
        for org, ref, key in ((t.org_id, own, ""), (partner, f"{tag}pdata@1", "p")):
            lst = listings.create_listing(s, org, kind="dataset", ref=ref, title=f"{tag} {key}listing")
            ids[f"{prefix}_{key}listing"] = listings.publish_listing(s, org, lst.id).id
            ids[f"{prefix}_{key}offer"] = offers.create_offer(s, org, lst.id, pricing="licence", amount=100,
                                                              currency="USD", use="research").id
        ids[f"{prefix}_draft"] = listings.create_listing(s, t.org_id, kind="dataset", ref=own, title=f"{tag} draft").id
    orders.deposit(database, orders.TestCharges(), t.org_id, f"dep-{prefix}", Money(amount=1000, currency="USD"),
                   "card")
    with database.session() as s:
        order = orders.buy(s, t.org_id, ids[f"{prefix}_poffer"], f"buy-{prefix}")
        ids[f"{prefix}_order"], ids[f"{prefix}_entitlement"] = order.id, order.entitlement_id
        ids[f"{prefix}_link"] = downloads.sign_link(s, t.org_id, order.entitlement_id, "openai")


def _create_runs_beside_globex(ctx: Ctx) -> None:
    # globex's idempotency key is no key of acme's: a new run, not globex's
    cfg = {"name": "gx-private", "algorithm": "grpo", "steps": 2, "rl": {"env": "arithmetic"}}
    r = ctx.client.post("/api/runs", json={"config": cfg},
                        headers={**auth(ctx.world.acme.owner), "Idempotency-Key": "key-g"})
    assert r.status_code == 201 and r.json()["id"] != ctx.world.ids["g_run"], r.text
    ctx.clean(r.text.replace("gx-private", "<name>"))


def _publish_under_a_globex_name(ctx: Ctx) -> None:
    # environment names are per organisation: globex's gxenv@1.0.0 neither blocks acme's (a 409 would reveal
    # it) nor is touched by it
    import tempfile

    from teachloop.catalog.environments import archive
    from teachloop.envs import scaffold

    with tempfile.TemporaryDirectory() as tmp:
        root = scaffold("gxenv", Path(tmp) / "gxenv")
        (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text().replace(
            'version = "0.1.0"', 'version = "1.0.0"'))
        r = ctx.client.post("/api/envs", files={"package": ("gxenv.tar.gz", archive(root), "application/gzip")},
                            headers=auth(ctx.world.acme.owner))
    assert r.status_code == 201 and r.json()["created"] and r.json()["version"]["ref"] == "gxenv@1.0.0", r.text
    assert r.json()["version"]["digest"] != "sha256:" + "0" * 64  # acme's own content, not globex's row
    ctx.clean(r.text.replace("gxenv", "<name>"))


def _models_listing(ctx: Ctx) -> None:
    r = ctx.call("GET", "/api/models")
    assert r.status_code == 200 and "default" in r.json(), r.text
    ctx.clean(r.text)


@dataclass(frozen=True)
class _Template:
    """The world built once per module: its database file, blob folder, tenants and object ids."""

    db_path: Path
    blob_dir: Path
    tenants: Tenants
    ids: dict[str, str]


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: Callable[[Path], str], tokenizer: Any,
              renderer: Any) -> _Template:
    """Build the two organisations' world once (through the app, as a probe's world would be) and keep its files.

    Every probe then runs on a fresh copy (``database``/``blobs`` below), so it is exactly as isolated as
    a world built per test, without building ~90 of them.
    """
    from teachloop.app import AppDeps, create_app
    from teachloop.serve import Serving, ServingConfig
    from tests.unit.serve.conftest import BASE as base
    from tests.unit.serve.conftest import _tenant
    from tests.unit.serve.fakes import EchoEngine

    root = tmp_path_factory.mktemp("tenancy-world")
    db_path, blob_dir = root / "teachloop.db", root / "blobs"
    database, blobs = Database(migrated_sqlite(db_path)), BlobStore(blob_dir)
    tenants = Tenants(_tenant(database, "acme"), _tenant(database, "globex"))
    serving = Serving(database, blobs, engine=EchoEngine(tokenizer), renderer=renderer, base_model=base,
                      config=ServingConfig(sync_interval_s=0.1, max_rows=8, max_queue=4))
    serving.start()
    settings = Settings(home=root, model_cache=root / "models", database_url="sqlite://", blob_url=str(root),
                        max_body_bytes=256 * 1024)
    w = World(tenants.acme, tenants.globex)
    try:
        with TestClient(create_app(AppDeps(settings, database, blobs, serving=serving))) as client:
            _own_everything(client, database, blobs, root / "adapters", tenants.globex, "gx", w.ids, "g")
            _own_everything(client, database, blobs, root / "adapters", tenants.acme, "acme", w.ids, "a")
            _own_requests(database, w)
            _own_work(database, w)
            _own_tinker(database, blobs, root / "tinker", w)
    finally:
        serving.close()
        database.close()
    return _Template(db_path, blob_dir, tenants, dict(w.ids))


@pytest.fixture
def database(_template: _Template, tmp_path: Path) -> Iterator[Database]:
    """A copy of the module's world database (overrides the conftest's empty one)."""
    path = tmp_path / "teachloop.db"
    shutil.copy(_template.db_path, path)
    db = Database(f"sqlite:///{path}")
    yield db
    db.close()


@pytest.fixture
def blobs(_template: _Template, tmp_path: Path) -> BlobStore:
    """A copy of the module's world blobs."""
    shutil.copytree(_template.blob_dir, tmp_path / "blobs")
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def tenants(_template: _Template) -> Tenants:
    return _template.tenants


@pytest.fixture
def world(_template: _Template, client: TestClient) -> World:
    return World(_template.tenants.acme, _template.tenants.globex, dict(_template.ids))


def _own_requests(database: Database, w: World) -> None:
    """Globex's private data request (hidden from acme) and acme's own marketplace one."""
    from teachloop.core.requests import RequestCreate
    from teachloop.market.requests import DataRequests

    with database.session() as s:
        w.ids["g_request"] = DataRequests(s).post(w.globex.org_id, RequestCreate(
            title="gx-confidential labels", description="gx-private task", visibility="private")).id
        w.ids["a_request"] = DataRequests(s).post(w.acme.org_id, RequestCreate(
            title="acme labels", description="acme task")).id


def _own_work(database: Database, w: World) -> None:
    """Issue 14: globex's labeling project (a gold item an expert of globex answered wrongly and disputed), its
    expert and exam; acme's own project."""
    from teachloop.core.work import ExamCreate, ExpertCreate, ItemIn, ProjectCreate, SubmitBody
    from teachloop.work import projects, review, tasks, workforce

    pair = {"prompt": [{"role": "user", "content": "gx-confidential question"}],
            "candidates": [{"id": "a", "text": "gx-private a"}, {"id": "b", "text": "gx-private b"}]}
    with database.session() as s:
        for prefix, org, name in (("g", w.globex.org_id, "gxwork"), ("a", w.acme.org_id, "acmework")):
            body = ProjectCreate.model_validate({"name": name, "task_type": "pairwise",
                                                 "settings": {"gold_share": 0.5, "quorum": 1}})
            w.ids[f"{prefix}_project"] = projects.create_project(s, org, body).id
        projects.add_items(s, w.globex.org_id, "gxwork", [ItemIn.model_validate(pair),
                                                          ItemIn.model_validate({**pair, "gold_answer": {"choice": "a"}})])
        user = Tenancy(s).create_user("gx-expert@globex.test")
        Tenancy(s).add_member(w.globex.org_id, user.id, "expert")
        workforce.add_expert(s, w.globex.org_id, ExpertCreate(user_id=user.id, skills=["gxskill"]))
        w.ids["g_expert"] = user.id
        workforce.put_exam(s, w.globex.org_id, "gxskill", ExamCreate.model_validate(
            {"questions": [{"id": "q", "prompt": "gx-confidential?", "options": ["x", "y"], "answer": "x"}]}))
        answers = []
        for _ in range(2):
            lease = tasks.next_task(s, w.globex.org_id, user.id, "gxwork")
            assert lease is not None
            answers.append(tasks.submit(s, w.globex.org_id, user.id, lease.id, SubmitBody(value={"choice": "b"})))
        w.ids["g_assignment"] = answers[0].assignment_id
        w.ids["g_answer"] = answers[0].id
        gold = next(a for a in answers if a.is_gold)
        w.ids["g_dispute"] = review.open_dispute(s, w.globex.org_id, user.id, gold.id, "gx-private reason").id
        lease = tasks.next_task(s, w.globex.org_id, user.id, "gxwork")
        assert lease is None  # (both items answered: the leases below are from a fresh call each)


def _own_tinker(database: Database, blobs: BlobStore, tmp: Path, w: World) -> None:
    """Issue 15: each organisation's Tinker session, training model (a training run) and checkpoint."""
    from teachloop.core.tinker import TinkerPath
    from teachloop.tinker import Records

    records = Records(database, blobs)
    for prefix, t, tag in (("g", w.globex, "gx-private"), ("a", w.acme, "acme")):
        session = records.create_session(t.org_id, tags=[], user_metadata={"display_name": f"{tag} session"},
                                         sdk_version="0.38.0")
        model = f"{session}:train:0"
        records.create_model(t.org_id, model, session_id=session, base_model=BASE, lora={"rank": 4},
                             user_metadata={"note": tag})
        folder = tmp / prefix
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        path = TinkerPath(model, "weights", "ckpt")
        records.save_checkpoint(t.org_id, path, folder, ttl_seconds=None, overwrite=False, user_metadata=None)
        w.ids.update({f"{prefix}_tinker_session": session, f"{prefix}_tinker_model": model,
                      f"{prefix}_tinker_path": str(path)})


def _tinker_future_hidden(path: str, body: Callable[[str, World], Any] | None = None, key: str = "g_tinker_model",
                          missing: str = "tses_00000000000000000000000000:train:0",
                          raw: Callable[[str], bytes] | None = None) -> Callable[[Ctx], None]:
    """A Tinker request naming globex's object fails (in its future, category user) exactly like one naming
    nothing; the future's error names no more than what acme sent."""

    def check(ctx: Ctx) -> None:
        answers = []
        for value in (ctx.world.ids[key], missing):
            if raw is not None:
                r = ctx.client.post(path, content=raw(value), headers={
                    **auth(ctx.world.acme.owner), "Content-Type": "application/x-protobuf"})
            else:
                r = ctx.call("POST", path, body(value, ctx.world) if body else {})
            assert r.status_code == 200, r.text
            done = ctx.call("POST", "/api/v1/retrieve_future", {"request_id": r.json()["request_id"]})
            assert done.status_code == 200 and done.json()["category"] == "user", done.text
            answers.append(done.json()["error"].replace(value, "<id>"))
        assert answers[0] == answers[1], answers
        ctx.clean(answers[0])

    return check


def _tinker_fwdbwd(model_id: str) -> bytes:
    from teachloop.tinker.proto import messages

    msg = messages()["ForwardBackwardRequest"](model_id=model_id, seq_id=1, loss_fn="cross_entropy")
    return bytes(msg.SerializeToString())


def _tinker_open(path: str, body: Any = None) -> Callable[[Ctx], None]:
    """A route that names no object: 200 for acme, nothing of globex's in the answer."""

    def check(ctx: Ctx) -> None:
        r = ctx.call("GET" if body is None else "POST", path, body)
        assert r.status_code == 200, r.text
        ctx.clean(r.text)

    return check


def _tinker_search(ctx: Ctx) -> None:
    r = ctx.call("POST", "/api/v1/sessions/search", {"session_id": ctx.world.ids["g_tinker_session"]})
    assert r.status_code == 200 and r.json()["sessions"] == [], r.text
    r = ctx.call("POST", "/api/v1/sessions/search", {"display_name": "session"})
    assert [x["session_id"] for x in r.json()["sessions"]] == [ctx.world.ids["a_tinker_session"]], r.text
    ctx.clean(r.text)


def _tinker_session_beside_globex(ctx: Ctx) -> None:
    r = ctx.call("POST", "/api/v1/create_session", {"tags": [], "user_metadata": {}})
    assert r.status_code == 200 and r.json()["session_id"] != ctx.world.ids["g_tinker_session"], r.text
    ctx.clean(r.text)


def _tinker_cancel(ctx: Ctx) -> None:
    r = ctx.call("POST", "/api/v1/create_model", {"session_id": ctx.world.ids["g_tinker_session"], "model_seq_id": 1})
    rid = r.json()["request_id"]
    other = ctx.client.post("/api/v1/cancel_future", json={"request_id": rid}, headers=auth(ctx.world.globex.owner))
    assert other.status_code == 404, other.text  # a future is its organisation's own
    assert ctx.call("POST", "/api/v1/cancel_future", {"request_id": "nope"}).status_code == 404


def _work_project_beside_globex(ctx: Ctx) -> None:
    # project names are per organisation: globex's gxwork neither blocks acme's nor is touched by it
    r = ctx.call("POST", "/api/work/projects", {"name": "gxwork", "task_type": "demonstration"})
    assert r.status_code == 201 and r.json()["id"] != ctx.world.ids["g_project"], r.text
    ctx.clean(r.text)


def _work_exam_beside_globex(ctx: Ctx) -> None:
    r = ctx.call("PUT", "/api/work/exams/gxskill",
                 {"questions": [{"id": "q", "prompt": "acme?", "options": ["x", "y"], "answer": "y"}]})
    assert r.status_code == 200 and "gx-confidential" not in r.text, r.text
    ctx.clean(r.text)


def _work_me_is_acme_only(path: str) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:  # acme's owner has no expert profile in acme: 404, nothing of globex's expert
        r = ctx.call("GET", path)
        assert r.status_code == 404 and r.json()["error"]["param"] == "expert", r.text
        ctx.clean(r.text)

    return check


def _work_release_is_acme_only(ctx: Ctx) -> None:
    r = ctx.call("POST", "/api/work/release")
    assert r.status_code == 200 and r.json()["released"] == [], r.text
    ctx.clean(r.text)


def _uses_are_acme_only(ctx: Ctx) -> None:
    for side in ("buyer", "seller"):
        r = ctx.call("GET", f"/api/market/uses?side={side}")
        assert r.status_code == 200, r.text
        assert all(acme in (u["buyer_org_id"], u["seller_org_id"]) for u in r.json()["data"]
                   for acme in [ctx.world.acme.org_id]), r.text
        ctx.clean(r.text)
    assert ctx.call("GET", "/api/market/uses?side=everyone").status_code == 400


_ORG_TABLES = [t.name for t in Base.metadata.sorted_tables if "org_id" in t.c and t.name != "api_keys"]


def _rows(database: Database, org_id: str) -> dict[str, list[str]]:
    """Every row ``org_id`` owns, table by table, as stored (API keys' last use left out: acme's own key use
    touches it). One driver query per table, raw column values: a probe compares these four times, and ORM
    statements over ~50 tables made that most of the module's time."""
    out: dict[str, list[str]] = {}
    with database.engine.connect() as conn:
        for name in _ORG_TABLES:
            rows = conn.exec_driver_sql(f'SELECT * FROM "{name}" WHERE org_id = ?', (org_id,)).fetchall()
            out[name] = sorted(repr(tuple(row)) for row in rows)
    return out


# ---------------------------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Ctx:
    client: TestClient
    world: World
    database: Database

    def call(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        kwargs: dict[str, Any] = {"headers": {**auth(self.world.acme.owner), **(headers or {})}}
        if body is not None:
            kwargs["json"] = body
        return self.client.request(method, url, **kwargs)

    def clean(self, text: str) -> None:
        leaked = [m for m in self.world.markers if m in text]
        assert not leaked, f"globex's {leaked} reached acme: {text[:300]}"


Value = Callable[[World], str]


def g(name: str) -> Value:
    """The id of globex's object ``name`` (``g_<name>`` in ``World.ids``)."""
    return lambda w: w.ids[f"g_{name}"]


def lit(text: str) -> Value:
    return lambda w: text


@dataclass(frozen=True)
class Hidden:
    """Globex's object, named in the path or body, is answered exactly like a missing one, and nothing changes."""

    subst: dict[str, tuple[Value, str]]  # placeholder -> (globex's value, a value that names nothing)
    body: Callable[[dict[str, str]], Any] | None = None
    status: int = 404
    param: str | None = None
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # e.g. an Idempotency-Key the route requires

    def run(self, ctx: Ctx, method: str, path: str) -> None:
        present = {k: v(ctx.world) for k, (v, _) in self.subst.items()}
        missing = {k: m for k, (_, m) in self.subst.items()}
        answers = []
        for values in (present, missing):
            url = re.sub(r"\{(\w+)\}", lambda m, v=values: v[m.group(1)], path + self.query)
            answers.append(ctx.call(method, url, self.body(values) if self.body else None, self.headers))
        a, b = answers
        assert a.status_code == b.status_code == self.status, (a.status_code, a.text, b.status_code, b.text)
        swapped_a, swapped_b = a.text, b.text
        for key in self.subst:
            swapped_a = swapped_a.replace(present[key], f"<{key}>")
            swapped_b = swapped_b.replace(missing[key], f"<{key}>")
        assert swapped_a == swapped_b, (swapped_a, swapped_b)
        assert set(a.headers) - {"content-length", "x-teachloop-trace-id"} == set(b.headers) - {
            "content-length", "x-teachloop-trace-id"}
        if self.param is not None:
            assert a.json()["error"]["param"] == self.param, a.text
        ctx.clean(swapped_a)


@dataclass(frozen=True)
class Listing:
    """Acme's listing answers 200 with acme's own objects and nothing of globex's."""

    own: Callable[[World], list[str]]
    query: str = ""
    url: str | None = None  # for a listing under a path that names the organisation's own object

    def run(self, ctx: Ctx, method: str, path: str) -> None:
        path = self.url or path
        r = ctx.call(method, path + self.query)
        assert r.status_code == 200, r.text
        ctx.clean(r.text)
        for item in self.own(ctx.world):
            assert item in r.text, f"acme's own {item!r} is missing from {path}{self.query}: {r.text[:300]}"


@dataclass(frozen=True)
class Check:
    """A check of its own, for routes that name no object."""

    fn: Callable[[Ctx], None]

    def run(self, ctx: Ctx, method: str, path: str) -> None:
        self.fn(ctx)


def _stats_ignore_globex_traffic(ctx: Ctx) -> None:
    before = ctx.call("GET", "/api/serving/stats").json()
    assert before["org_id"] == ctx.world.acme.org_id  # (this process's counters: the world was built in another)
    for i in range(3):
        r = ctx.client.post(CHAT, json={"model": "gx-private", "messages": [{"role": "user", "content": f"{i}"}]},
                            headers=auth(ctx.world.globex.member))
        assert r.status_code == 200
    after = ctx.call("GET", "/api/serving/stats")
    assert after.json() == before
    ctx.clean(after.text)


def _whoami_is_acme(ctx: Ctx) -> None:
    r = ctx.call("GET", "/api/whoami")
    assert r.json()["org"]["id"] == ctx.world.acme.org_id
    ctx.clean(r.text)


def _openapi_holds_no_data(ctx: Ctx) -> None:
    r = ctx.call("GET", "/api/openapi.json")
    assert r.status_code == 200 and "/v1/chat/completions" in r.json()["paths"]
    ctx.clean(r.text)


def _operator_only(path: str) -> Callable[[Ctx], None]:
    """Server-wide figures (every organisation's traffic) are the platform operator's: an org owner gets 403."""

    def check(ctx: Ctx) -> None:
        r = ctx.call("GET", path)
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied", r.text
        assert "teachloop_" not in r.text and "organisations" not in r.text
        ctx.clean(r.text)

    return check


def _operator_only_write(method: str, path: str, body: Any = None) -> Callable[[Ctx], None]:
    """An operator-only write (prices, quotas, invoicing): an org owner gets 403 and nothing changes."""

    def check(ctx: Ctx) -> None:
        url = re.sub(r"\{org_id\}", ctx.world.globex.org_id, path)
        r = ctx.call(method, url, body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied", r.text
        ctx.clean(r.text)

    return check


def _post_request_beside_globex(ctx: Ctx) -> None:
    # globex's private request's title is no obstacle and does not show in acme's answer
    r = ctx.call("POST", "/api/requests", {"title": "gx-confidential labels", "description": "acme's own"})
    assert r.status_code == 201 and r.json()["org_id"] == ctx.world.acme.org_id, r.text
    ctx.clean(r.text.replace("gx-confidential", "<title>"))


def _create_under_globex_names(ctx: Ctx) -> None:
    # a name globex uses is free for acme (a 409 would reveal it) ...
    r = ctx.call("POST", "/api/deployments", {"name": "gx-private"})
    assert r.status_code == 201 and r.json()["revision"] == 1 and r.json()["adapter"] is None, r.text
    ctx.clean(r.text.replace("gx-private", "<name>"))
    # ... and globex's adapter versions are referenced exactly like missing ones (as primary or canary)
    Hidden({"ref": (lit("gxbot@1"), "nobot@1")}, body=lambda v: {"name": "x1", "adapter": v["ref"]},
           param="adapter").run(ctx, "POST", "/api/deployments")
    Hidden({"ref": (g("adapter_version"), new_id("av"))}, body=lambda v: {"name": "x2", "adapter": v["ref"]},
           param="adapter").run(ctx, "POST", "/api/deployments")
    Hidden({"ref": (lit("gxbot"), "nobot")}, param="adapter",
           body=lambda v: {"name": "x3", "canary": {"adapter": v["ref"], "percent": 10}}).run(
        ctx, "POST", "/api/deployments")


def _patch_to_globex_adapter(ctx: Ctx) -> None:
    Hidden({"ref": (lit("gxbot@1"), "nobot@1")}, body=lambda v: {"adapter": v["ref"]}, param="adapter").run(
        ctx, "PATCH", "/api/deployments/support")


def _import_under_a_globex_name(ctx: Ctx) -> None:
    body = {"name": "gxdata", "license": "CC0-1.0", "rows": [{"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]}
    r = ctx.call("POST", "/api/datasets", body)
    assert r.status_code == 201 and r.json()["version"] == 1 and r.json()["created"], r.text
    ctx.clean(r.text.replace("gxdata", "<name>"))


def _loop_config(deployment: str, dataset: str | None = None) -> dict[str, Any]:
    cfg = grpo_config(deployment=deployment)
    if dataset is not None:
        cfg["sources"] = [{"kind": "dataset", "dataset": dataset}, *cfg["sources"]]
    return cfg


def _put_loop_naming_globex_dataset(ctx: Ctx) -> None:
    for ref, missing in (("gxdata", "nodata"), ("gxdata@1", "nodata@1"), (ctx.world.ids["g_dataset"], new_id("ds")),
                         (f"{ctx.world.globex.org_id}/gxdata", f"{ctx.world.globex.org_id}/nodata")):
        Hidden({"ref": (lit(ref), missing)}, body=lambda v: _loop_config("support", v["ref"]), status=400,
               param="sources.0.dataset").run(ctx, "PUT", "/api/loops/support")


def _catalogue_is_published_only(ctx: Ctx) -> None:
    # the catalogue is every seller's published listings (globex's included: that is what it is for), never a draft
    r = ctx.call("GET", "/api/market/listings")
    assert r.status_code == 200, r.text
    listed = {x["id"] for x in r.json()["data"]}
    ids = ctx.world.ids
    assert {ids["a_listing"], ids["g_listing"], ids["a_plisting"]} <= listed, listed
    assert not {ids["a_draft"], ids["g_draft"]} & listed, listed


def _buy_with_a_globex_key(ctx: Ctx) -> None:
    # globex's idempotency key is no key of acme's: a new order of acme's, not globex's replayed
    r = ctx.client.post("/api/market/orders", json={"offer": ctx.world.ids["a_poffer"]},
                        headers={**auth(ctx.world.acme.owner), "Idempotency-Key": "buy-g"})
    assert r.status_code == 201 and not r.json()["replayed"] and r.json()["id"] != ctx.world.ids["g_order"], r.text
    ctx.clean(r.text)


def _globex_link_refused(ctx: Ctx) -> None:
    r = ctx.call("GET", f"/api/market/downloads/{ctx.world.ids['g_link']}")
    assert r.status_code == 403 and "another organisation" in r.text, r.text
    ctx.clean(r.text)
    own = ctx.call("GET", f"/api/market/downloads/{ctx.world.ids['a_link']}")
    assert own.status_code == 200 and "acme partner row" in own.text, own.text
    ctx.clean(own.text)


def _payouts_pay_only_acme(ctx: Ctx) -> None:
    r = ctx.call("POST", "/api/market/payouts", {"batch": "probe"})
    assert r.status_code == 200 and r.json()["payouts"] == [], r.text
    ctx.clean(r.text)


DEP = {"name": (lit("gx-private"), "no-such-dep")}
LISTING = {"listing_id": (g("listing"), new_id("lst"))}
LISTING_DRAFT = {"listing_id": (g("draft"), new_id("lst"))}
LOOP = {"deployment": (lit("gx-private"), "no-such-dep")}
TRACE = {"trace_id": (g("trace"), new_id("tr"))}
RESPONSE = {"response_id": (g("response"), f"resp_{new_id('tr')}")}
COMPLETION = {"trace_id": (lambda w: f"chatcmpl-{w.ids['g_trace']}", f"chatcmpl-{new_id('tr')}")}
RUN = {"run_id": (g("run"), new_id("run"))}
ENV_REF = {"ref": (lit("gxenv@1.0.0"), "noenv@1.0.0"), "env": (lit("gxenv"), "noenv")}
ENV_NAME = {"name": (lit("gxenv"), "noenv")}
REQUEST = {"request_id": (g("request"), new_id("dreq"))}
DATASET_REFS = [{"ref": (lit("gxdata"), "nodata")}, {"ref": (lit("gxdata@1"), "nodata@1")},
                {"ref": (g("dataset"), new_id("ds"))}]

WORK_PROJECT = {"project": (g("project"), new_id("wprj"))}
WORK_PROJECT_NAME = {"project": (lit("gxwork"), "nowork")}


def _work_project_probes(method: str, body: Callable[[dict[str, str]], Any] | None = None) -> list[Any]:
    return [Hidden(WORK_PROJECT, body=body, param="project"), Hidden(WORK_PROJECT_NAME, body=body, param="project")]


TS_ACME = "tses_00000000000000000000000001"  # a session id of nobody's: creating under it is refused
TINKER_SESSION = {"sid": (g("tinker_session"), "tses_00000000000000000000000000")}
TINKER_RUN = {"run_id": (g("tinker_model"), "tses_00000000000000000000000000:train:0")}
TINKER_PATH = {"path": (g("tinker_path"), "tinker://tses_00000000000000000000000000:train:0/weights/ckpt")}
TINKER_CKPT = {"run_id": (g("tinker_model"), "tses_00000000000000000000000000:train:0"),
               "kind": (lit("weights"), "weights"), "name": (lit("ckpt"), "ckpt")}

TINKER_NOBODY = "tses_00000000000000000000000000"  # a session id of nobody's
TINKER_SESSION = {"sid": (g("tinker_session"), TINKER_NOBODY)}
TINKER_RUN = {"run_id": (g("tinker_model"), f"{TINKER_NOBODY}:train:0")}
TINKER_SAMPLER = {"sampler_id": (lambda w: f"{w.ids['g_tinker_session']}:sample:0", f"{TINKER_NOBODY}:sample:0")}
TINKER_PATH = {"path": (g("tinker_path"), f"tinker://{TINKER_NOBODY}:train:0/weights/ckpt")}
TINKER_CKPT = {"run_id": (g("tinker_model"), f"{TINKER_NOBODY}:train:0"), "kind": (lit("weights"), "weights"),
               "name": (lit("ckpt"), "ckpt")}

PROBES: dict[tuple[str, str], list[Any]] = {
    ("GET", "/api/whoami"): [Check(_whoami_is_acme)],
    ("GET", "/api/openapi.json"): [Check(_openapi_holds_no_data)],
    ("GET", "/v1/models"): [Listing(lambda w: ["support", BASE])],
    ("GET", "/v1/models/{model}"): [Hidden({"model": (lit("gx-private"), "no-such-dep")})],
    ("POST", CHAT): [Hidden({"model": (lit("gx-private"), "no-such-dep")}, param="model",
                            body=lambda v: {"model": v["model"], "messages": [{"role": "user", "content": "hi"}]}),
                     Hidden({"model": (lit("gx-private"), "no-such-dep")}, param="model",
                            body=lambda v: {"model": v["model"], "stream": True,
                                            "messages": [{"role": "user", "content": "hi"}]})],
    ("POST", "/v1/completions"): [Hidden({"model": (lit("gx-private"), "no-such-dep")}, param="model",
                                         body=lambda v: {"model": v["model"], "prompt": "hi", "max_tokens": 2}),
                                  Hidden({"model": (lit("gx-private"), "no-such-dep")}, param="model",
                                         body=lambda v: {"model": v["model"], "prompt": "hi", "stream": True})],
    ("POST", "/v1/responses"): [Hidden({"model": (lit("gx-private"), "no-such-dep")}, param="model",
                                       body=lambda v: {"model": v["model"], "input": "hi"}),
                                Hidden(RESPONSE, param="previous_response_id",
                                       body=lambda v: {"model": "support", "input": "hi",
                                                       "previous_response_id": v["response_id"]})],
    ("GET", "/v1/responses/{response_id}"): [Hidden(RESPONSE)],
    ("DELETE", "/v1/responses/{response_id}"): [Hidden(RESPONSE)],
    ("GET", "/api/deployments"): [Listing(lambda w: ["support", w.ids["a_deployment"]])],
    ("POST", "/api/deployments"): [Check(_create_under_globex_names),
                                   Hidden(RUN, body=lambda v: {"name": "x4", "run": v["run_id"]}, param="run")],
    ("GET", "/api/deployments/{name}"): [Hidden(DEP)],
    ("PATCH", "/api/deployments/{name}"): [Hidden(DEP, body=lambda v: {"adapter": None}),
                                           Check(_patch_to_globex_adapter)],
    ("POST", "/api/deployments/{name}/rollback"): [Hidden(DEP, body=lambda v: {}),
                                                   Hidden(DEP, body=lambda v: {"to_revision": 1})],
    ("GET", "/api/deployments/{name}/history"): [Hidden(DEP)],
    ("GET", "/api/adapters"): [Listing(lambda w: ["abot", w.ids["a_adapter_version"]]),
                               Listing(lambda w: [], query="?name=gxbot")],
    ("GET", "/api/traces"): [Listing(lambda w: [w.ids["a_trace"], "acme-label"]),
                             Listing(lambda w: [], query="?model=gx-private"),
                             Listing(lambda w: [], query="?user=gx-user"),
                             Listing(lambda w: [], query="?metadata=project=gx-project"),
                             Listing(lambda w: [], query="?label=gx-label"),
                             Hidden({"v": (g("adapter_version"), new_id("av"))}, status=200,
                                    query="?adapter_version_id={v}"),
                             Hidden({"v": (g("deployment"), new_id("dep"))}, status=200, query="?model={v}")],
    ("GET", "/api/traces/{trace_id}"): [Hidden(TRACE), Hidden(COMPLETION)],
    ("GET", "/api/traces/{trace_id}/feedback"): [Hidden(TRACE), Hidden(COMPLETION)],
    ("POST", "/api/traces/{trace_id}/feedback"): [Hidden(TRACE, body=lambda v: {"score": 0}),
                                                  Hidden(COMPLETION, body=lambda v: {"corrected_output": "x"})],
    ("GET", "/api/serving/stats"): [Check(_stats_ignore_globex_traffic)],
    ("GET", "/metrics"): [Check(_operator_only("/metrics"))],
    ("GET", "/api/operator/stats"): [Check(_operator_only("/api/operator/stats"))],
    ("GET", "/api/loops"): [Listing(lambda w: [w.ids["a_loop"], "support"])],
    ("PUT", "/api/loops/{deployment}"): [Hidden(LOOP, body=lambda v: _loop_config(v["deployment"]), status=400,
                                                param="deployment"),
                                         Check(_put_loop_naming_globex_dataset)],
    ("GET", "/api/loops/{deployment}"): [Hidden(LOOP)],
    ("GET", "/api/loops/{deployment}/iterations"): [Hidden(LOOP)],
    ("POST", "/api/loops/{deployment}/pause"): [Hidden(LOOP)],
    ("POST", "/api/loops/{deployment}/resume"): [Hidden(LOOP)],
    ("POST", "/api/loops/{deployment}/tick"): [Hidden(LOOP)],
    ("POST", "/api/runs"): [Check(_create_runs_beside_globex)],
    ("GET", "/api/runs"): [Listing(lambda w: [w.ids["a_run"]])],
    ("GET", "/api/runs/{run_id}"): [Hidden(RUN)],
    ("GET", "/api/runs/{run_id}/metrics"): [Hidden(RUN)],
    ("GET", "/api/runs/{run_id}/checkpoints"): [Hidden(RUN)],
    ("POST", "/api/runs/{run_id}/cancel"): [Hidden(RUN)],
    ("POST", "/api/runs/{run_id}/resume"): [Hidden(RUN)],
    ("GET", "/api/envs"): [Listing(lambda w: ["acmeenv", "arithmetic"])],
    ("GET", "/api/envs/{ref}"): [Hidden(ENV_REF), Hidden({"ref": (lit("gxenv"), "noenv")})],
    ("GET", "/api/envs/{name}/versions"): [Hidden(ENV_NAME)],
    ("GET", "/api/envs/{name}/evals"): [Hidden(ENV_NAME, status=200)],
    ("POST", "/api/envs/{ref}/check"): [Hidden(ENV_REF)],
    ("POST", "/api/envs/{ref}/yank"): [Hidden(ENV_REF, body=lambda v: {"reason": "x"})],
    ("GET", "/api/envs/{ref}/checks"): [Hidden(ENV_REF), Hidden({"ref": (lit("gxenv"), "noenv")})],
    ("POST", "/api/envs"): [Check(_publish_under_a_globex_name)],
    ("POST", "/api/evals"): [Hidden(RUN, body=lambda v: {"env": "arithmetic", "run": v["run_id"]}, param="run"),
                             Hidden({"ref": (lit("gxbot@1"), "nobot@1")}, param="adapter",
                                    body=lambda v: {"env": "arithmetic", "adapter": v["ref"]})],
    ("GET", "/api/evals"): [Listing(lambda w: [w.ids["a_eval"]])],
    ("GET", "/api/evals/{eval_id}"): [Hidden({"eval_id": (g("eval"), new_id("job"))})],
    ("GET", "/api/models"): [Check(_models_listing)],
    ("GET", "/api/datasets"): [Listing(lambda w: ["adata", w.ids["a_dataset"]]),
                               Listing(lambda w: [], query="?name=gxdata")],
    ("POST", "/api/datasets"): [Check(_import_under_a_globex_name)],
    ("GET", "/api/datasets/{ref}"): [Hidden(s) for s in DATASET_REFS],
    ("GET", "/api/datasets/{ref}/rows"): [Hidden(s) for s in DATASET_REFS],
    ("GET", "/api/datasets/{name}/grants"): [Hidden({"name": (lit("gxdata"), "nodata")}, status=200),
                                            Listing(lambda w: [w.ids["a_grant"]], url="/api/datasets/adata/grants")],
    ("POST", "/api/datasets/{name}/grants"): [
        Hidden({"name": (lit("gxdata"), "nodata"), "partner": (lambda w: w.ids["a_partner"], new_id("org"))},
               body=lambda v: {"org": v["partner"], "license": "CC0-1.0"}),
    ],
    ("DELETE", "/api/datasets/{name}/grants/{grant_id}"): [
        Hidden({"name": (lit("gxdata"), "nodata"), "grant_id": (g("grant"), new_id("dg"))}),
        Hidden({"name": (lit("adata"), "adata"), "grant_id": (g("grant"), new_id("dg"))}),
    ],
    ("POST", "/api/market/listings"): [
        Hidden({"ref": (lit("gxdata@1"), "nodata@1")}, body=lambda v: {"kind": "dataset", "ref": v["ref"],
                                                                       "title": "t"}, param="ref"),
        Hidden({"ref": (g("dataset"), new_id("ds"))}, body=lambda v: {"kind": "dataset", "ref": v["ref"],
                                                                      "title": "t"}, param="ref")],
    ("GET", "/api/market/listings"): [Check(_catalogue_is_published_only),
                                      Listing(lambda w: [w.ids["a_listing"], w.ids["a_draft"]], query="?mine=true")],
    ("GET", "/api/market/listings/{listing_id}"): [Hidden(LISTING_DRAFT, param="listing")],
    ("POST", "/api/market/listings/{listing_id}/publish"): [Hidden(LISTING_DRAFT, param="listing"),
                                                            Hidden(LISTING, param="listing")],
    ("GET", "/api/market/listings/{listing_id}/croissant"): [Hidden(LISTING_DRAFT, param="listing")],
    ("GET", "/api/market/listings/{listing_id}/offers"): [Hidden(LISTING_DRAFT, param="listing")],
    ("POST", "/api/market/listings/{listing_id}/offers"): [
        Hidden(LISTING, param="listing", body=lambda v: {"amount": 100, "currency": "USD", "use": "research"})],
    ("POST", "/api/market/orders"): [Check(_buy_with_a_globex_key)],
    ("GET", "/api/market/orders"): [Listing(lambda w: [w.ids["a_order"]])],
    ("POST", "/api/market/orders/{order_id}/refund"): [Hidden({"order_id": (g("order"), new_id("ord"))},
                                                              param="order")],
    ("GET", "/api/market/entitlements"): [Listing(lambda w: [w.ids["a_entitlement"]])],
    ("POST", "/api/market/entitlements/{entitlement_id}/links"): [
        Hidden({"entitlement_id": (g("entitlement"), new_id("etl"))}, body=lambda v: {"format": "openai"},
               param="entitlement")],
    ("GET", "/api/market/downloads/{token}"): [Check(_globex_link_refused)],
    ("GET", "/api/market/earnings"): [Listing(lambda w: [])],
    ("POST", "/api/market/payouts"): [Check(_payouts_pay_only_acme)],
    ("POST", "/api/requests"): [Check(_post_request_beside_globex)],
    ("GET", "/api/requests"): [Listing(lambda w: [w.ids["a_request"]])],
    ("GET", "/api/requests/{request_id}"): [Hidden(REQUEST, param="request_id")],
    ("GET", "/api/requests/{request_id}/matches"): [Hidden(REQUEST, param="request_id")],
    ("POST", "/api/requests/{request_id}/proposals"): [
        Hidden(REQUEST, param="request_id", body=lambda v: {"listing_id": new_id("lst")})],
    ("GET", "/api/requests/{request_id}/proposals"): [Hidden(REQUEST, param="request_id")],
    ("POST", "/api/requests/{request_id}/proposals/{proposal_id}/accept"): [
        Hidden({**REQUEST, "proposal_id": (lit("dprop_x"), "dprop_x")}, param="request_id", body=lambda v: {})],
    ("POST", "/api/requests/{request_id}/proposals/{proposal_id}/order"): [
        Hidden({**REQUEST, "proposal_id": (lit("dprop_x"), "dprop_x")}, param="request_id",
               body=lambda v: {"offer": new_id("off")}, headers={"Idempotency-Key": "probe-order"})],
    ("POST", "/api/requests/{request_id}/fulfil"): [
        Hidden(REQUEST, param="request_id", body=lambda v: {"listing_id": new_id("lst")})],
    ("POST", "/api/requests/{request_id}/project"): [
        Hidden(REQUEST, param="request_id", body=lambda v: {"name": "from-request", "task_type": "demonstration"})],
    ("GET", "/api/market/uses"): [Check(_uses_are_acme_only)],
    ("GET", "/api/billing/prices"): [Check(_operator_only("/api/billing/prices"))],
    ("PUT", "/api/billing/prices"): [Check(_operator_only_write("PUT", "/api/billing/prices",
                                                                {"meter": "env_run", "price": "1"}))],
    ("DELETE", "/api/billing/prices"): [Check(_operator_only_write("DELETE", "/api/billing/prices?meter=env_run"))],
    ("POST", "/api/billing/orgs/{org_id}/invoices"): [
        Check(_operator_only_write("POST", "/api/billing/orgs/{org_id}/invoices", {"period": "2020-01"}))],
    ("PUT", "/api/billing/orgs/{org_id}/quotas"): [
        Check(_operator_only_write("PUT", "/api/billing/orgs/{org_id}/quotas", {"name": "tokens_per_day", "limit": 0}))],
    ("GET", "/api/billing/usage"): [Listing(lambda w: [w.acme.org_id])],
    ("GET", "/api/billing/invoices"): [Listing(lambda w: [])],
    ("GET", "/api/billing/quotas"): [Listing(lambda w: [w.acme.org_id])],
    ("POST", "/api/work/projects"): [Check(_work_project_beside_globex)],
    ("GET", "/api/work/projects"): [Listing(lambda w: [w.ids["a_project"]])],
    ("GET", "/api/work/projects/{project}"): _work_project_probes("GET"),
    ("PUT", "/api/work/projects/{project}/settings"): _work_project_probes("PUT", lambda v: {}),
    ("POST", "/api/work/projects/{project}/templates"): _work_project_probes("POST", lambda v: {}),
    ("GET", "/api/work/projects/{project}/templates/{version}"): [
        Hidden({**WORK_PROJECT, "version": (lit("1"), "1")}, param="project")],
    ("POST", "/api/work/projects/{project}/items"): _work_project_probes(
        "POST", lambda v: {"items": [{"prompt": [{"role": "user", "content": "q"}]}]}),
    ("GET", "/api/work/projects/{project}/items"): _work_project_probes("GET"),
    ("GET", "/api/work/projects/{project}/answers"): _work_project_probes("GET"),
    ("GET", "/api/work/projects/{project}/review"): _work_project_probes("GET"),
    ("GET", "/api/work/projects/{project}/agreement"): _work_project_probes("GET"),
    ("POST", "/api/work/projects/{project}/dataset"): _work_project_probes("POST"),
    ("POST", "/api/work/projects/{project}/periods"): _work_project_probes("POST", lambda v: {"period": "p1"}),
    ("POST", "/api/work/projects/{project}/environment"): _work_project_probes("POST", lambda v: {}),
    ("POST", "/api/work/projects/{project}/suggestions"): _work_project_probes("POST", lambda v: {"deployment": "x"}),
    ("POST", "/api/work/projects/{project}/next"): _work_project_probes("POST"),
    ("GET", "/api/work/tasks/{assignment_id}"): [
        Hidden({"assignment_id": (g("assignment"), new_id("wasg"))}, param="assignment_id")],
    ("POST", "/api/work/tasks/{assignment_id}/submit"): [
        Hidden({"assignment_id": (g("assignment"), new_id("wasg"))}, param="assignment_id",
               body=lambda v: {"value": {"choice": "a"}})],
    ("POST", "/api/work/tasks/{assignment_id}/release"): [
        Hidden({"assignment_id": (g("assignment"), new_id("wasg"))}, param="assignment_id")],
    ("POST", "/api/work/answers/{answer_id}/review"): [
        Hidden({"answer_id": (g("answer"), new_id("wans"))}, param="answer_id", body=lambda v: {"decision": "accept"})],
    ("POST", "/api/work/answers/{answer_id}/disputes"): [
        Hidden({"answer_id": (g("answer"), new_id("wans"))}, param="answer_id", body=lambda v: {"reason": "x"})],
    ("GET", "/api/work/disputes"): [Listing(lambda w: [])],
    ("POST", "/api/work/disputes/{dispute_id}/resolve"): [
        Hidden({"dispute_id": (g("dispute"), new_id("wdsp"))}, param="dispute_id",
               body=lambda v: {"decision": "reject"})],
    ("POST", "/api/work/experts"): [
        Hidden({"user": (g("expert"), new_id("usr"))}, param="user_id", body=lambda v: {"user_id": v["user"]})],
    ("GET", "/api/work/experts"): [Listing(lambda w: [])],
    ("GET", "/api/work/experts/{user_id}/quality"): [
        Hidden({"user_id": (g("expert"), new_id("usr"))}, param="expert")],
    ("PUT", "/api/work/exams/{skill}"): [Check(_work_exam_beside_globex)],
    ("GET", "/api/work/exams/{skill}"): [Hidden({"skill": (lit("gxskill"), "noskill")}, param="skill")],
    ("POST", "/api/work/exams/{skill}/attempts"): [
        Hidden({"skill": (lit("gxskill"), "noskill")}, param="expert", body=lambda v: {"answers": {"q": "x"}})],
    ("GET", "/api/work/me"): [Check(_work_me_is_acme_only("/api/work/me"))],
    ("GET", "/api/work/me/answers"): [Check(_work_me_is_acme_only("/api/work/me/answers"))],
    ("POST", "/api/work/release"): [Check(_work_release_is_acme_only)],
    # issue 15: the Tinker API (its futures fail in-band with category user; see _tinker_future_hidden)
    ("POST", "/api/v1/client/config"): [Check(_tinker_open("/api/v1/client/config", {}))],
    ("POST", "/api/v1/client/dynamic_config"): [Check(_tinker_open("/api/v1/client/dynamic_config", {}))],
    ("GET", "/api/v1/healthz"): [Check(_tinker_open("/api/v1/healthz"))],
    ("POST", "/api/v1/telemetry"): [Check(_tinker_open("/api/v1/telemetry", {"events": []}))],
    ("GET", "/api/v1/get_server_capabilities"): [Check(_tinker_open("/api/v1/get_server_capabilities"))],
    ("POST", "/api/v1/create_session"): [Check(_tinker_session_beside_globex)],
    ("POST", "/api/v1/session_heartbeat"): [Hidden(TINKER_SESSION, body=lambda v: {"session_id": v["sid"]},
                                                   param="session_id")],
    ("POST", "/api/v1/sessions/{session_id}/finish"): [
        Hidden({"session_id": TINKER_SESSION["sid"]}, body=lambda v: {"reason": {"type": "success"}})],
    ("GET", "/api/v1/sessions"): [Listing(lambda w: [w.ids["a_tinker_session"]])],
    ("POST", "/api/v1/sessions/search"): [Check(_tinker_search)],
    ("GET", "/api/v1/sessions/{session_id}"): [Hidden({"session_id": TINKER_SESSION["sid"]})],
    ("PUT", "/api/v1/sessions/{session_id}/project"): [
        Hidden({"session_id": TINKER_SESSION["sid"]}, body=lambda v: {"project_id": "default"})],
    ("GET", "/api/v1/sessions/{session_id}/trace_export"): [Hidden({"session_id": TINKER_SESSION["sid"]})],
    ("POST", "/api/v1/create_model"): [Check(_tinker_future_hidden(
        "/api/v1/create_model", lambda v, w: {"session_id": v, "model_seq_id": 0, "base_model": BASE},
        key="g_tinker_session", missing=TINKER_NOBODY))],
    ("POST", "/api/v1/get_info"): [Hidden(TINKER_RUN, body=lambda v: {"model_id": v["run_id"]}, param="model_id")],
    ("POST", "/api/v1/forward_backward"): [Check(_tinker_future_hidden("/api/v1/forward_backward",
                                                                       raw=_tinker_fwdbwd))],
    ("POST", "/api/v1/optim_step"): [Check(_tinker_future_hidden(
        "/api/v1/optim_step", lambda v, w: {"model_id": v, "seq_id": 1, "adam_params": {}}))],
    ("POST", "/api/v1/save_weights"): [Check(_tinker_future_hidden(
        "/api/v1/save_weights", lambda v, w: {"model_id": v, "seq_id": 1, "path": "x"}))],
    ("POST", "/api/v1/save_weights_for_sampler"): [Check(_tinker_future_hidden(
        "/api/v1/save_weights_for_sampler",
        lambda v, w: {"model_id": v, "seq_id": 1, "sampling_session_seq_id": 0}))],
    ("POST", "/api/v1/save_weights_external"): [Check(_tinker_future_hidden(
        "/api/v1/save_weights_external", lambda v, w: {"model_id": v, "seq_id": 1, "path": "x"}))],
    ("POST", "/api/v1/load_weights"): [
        Check(_tinker_future_hidden("/api/v1/load_weights",
                                    lambda v, w: {"model_id": v, "seq_id": 1, "path": "x"})),
        Check(_tinker_future_hidden(
            "/api/v1/load_weights", key="g_tinker_path", missing=f"tinker://{TINKER_NOBODY}:train:0/weights/ckpt",
            body=lambda v, w: {"session_id": w.ids["a_tinker_session"], "path": v, "optimizer": True,
                               "model_seq_id": 5 if v == w.ids["g_tinker_path"] else 6}))],  # (one future each)
    ("POST", "/api/v1/create_custom_loss"): [Check(_tinker_future_hidden(
        "/api/v1/create_custom_loss", lambda v, w: {"session_id": v, "custom_loss_seq_id": 0},
        key="g_tinker_session", missing=TINKER_NOBODY))],
    ("POST", "/api/v1/copy_weights"): [Hidden(TINKER_PATH, body=lambda v: {"source_path": v["path"]}, param="path")],
    ("POST", "/api/v1/create_sampling_session"): [
        Hidden(TINKER_SESSION, body=lambda v: {"session_id": v["sid"], "sampling_session_seq_id": 0},
               param="session_id")],
    ("GET", "/api/v1/samplers/{sampler_id}"): [Hidden(TINKER_SAMPLER)],
    ("POST", "/api/v1/join_sampling_session"): [
        Hidden(TINKER_SAMPLER, body=lambda v: {"sampling_session_id": v["sampler_id"]},
               param="sampling_session_id")],
    ("POST", "/api/v1/asample"): [Check(_tinker_future_hidden(
        "/api/v1/asample", lambda v, w: {"sampling_session_id": f"{v}:sample:0", "seq_id": 0, "num_samples": 1,
                                         "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1]}]},
                                         "sampling_params": {"max_tokens": 1}},
        key="g_tinker_session", missing=TINKER_NOBODY))],
    ("POST", "/api/v1/retrieve_future"): [Hidden({"rid": (lit("create_model-0"), "create_model-1")},
                                                 body=lambda v: {"request_id": v["rid"]}, param="request_id")],
    ("POST", "/api/v1/retrieve_futures"): [
        Hidden(TINKER_SAMPLER, body=lambda v: {"target": {"type": "sampling_session",
                                                           "sampling_session_id": v["sampler_id"]}},
               param="sampling_session_id")],
    ("POST", "/api/v1/cancel_future"): [Check(_tinker_cancel)],
    ("GET", "/api/v1/training_runs"): [Listing(lambda w: [w.ids["a_tinker_model"]])],
    ("GET", "/api/v1/training_runs/{run_id}"): [Hidden(TINKER_RUN, param="model_id")],
    ("GET", "/api/v1/training_runs/{run_id}/checkpoints"): [Hidden(TINKER_RUN, param="model_id")],
    ("GET", "/api/v1/checkpoints"): [Listing(lambda w: [w.ids["a_tinker_path"]])],
    ("DELETE", "/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}"): [Hidden(TINKER_CKPT, param="path")],
    ("POST", "/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/publish"): [Hidden(TINKER_CKPT, param="path")],
    ("DELETE", "/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/publish"): [
        Hidden(TINKER_CKPT, param="path")],
    ("PUT", "/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/ttl"): [
        Hidden(TINKER_CKPT, body=lambda v: {"ttl_seconds": 60}, param="path")],
    ("GET", "/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls"): [
        Hidden(TINKER_CKPT, param="path")],
    ("POST", "/api/v1/weights_info"): [Hidden(TINKER_PATH, body=lambda v: {"tinker_path": v["path"]}, param="path")],
}


def _probe_ids() -> list[str]:
    return [f"{m} {p}" for m, p in PROBES]


@pytest.fixture
def app(client: TestClient) -> FastAPI:
    app = client.app
    assert isinstance(app, FastAPI)
    return app


def _unprobed(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(set(app_routes(app)) - {("GET", "/healthz")} - set(PROBES))


def test_every_route_has_a_tenancy_probe(app: FastAPI) -> None:
    missing = _unprobed(app)
    assert not missing, f"routes without a tenancy probe (add them to PROBES): {missing}"
    # and the check sees a route added later, on a router of its own
    extra = APIRouter(prefix="/api/extra")
    extra.add_api_route("/{thing}", lambda thing: {}, methods=["DELETE"])
    app.include_router(extra)
    assert _unprobed(app) == [("DELETE", "/api/extra/{thing}")]


_ROUTES: list[set[tuple[str, str]]] = []


def _routes(app: FastAPI) -> set[tuple[str, str]]:
    """The app's routes, read once per module: every probe's app is built the same way, and building the
    OpenAPI document that ``app_routes`` checks against takes ~2 s per app."""
    if not _ROUTES:
        _ROUTES.append(set(app_routes(app)))
    return _ROUTES[0]


@pytest.mark.parametrize(("method", "path"), list(PROBES), ids=_probe_ids())
def test_acme_cannot_reach_or_infer_globex_objects(
    method: str, path: str, app: FastAPI, client: TestClient, world: World, database: Database
) -> None:
    if (method, path) not in _routes(app):
        pytest.skip(f"{method} {path} is not a route of this app")
    ctx = Ctx(client, world, database)
    for probe in PROBES[(method, path)]:
        globex_before = _rows(database, world.globex.org_id)
        acme_before = _rows(database, world.acme.org_id)
        probe.run(ctx, method, path)
        if isinstance(probe, Check) and probe.fn is _stats_ignore_globex_traffic:
            continue  # that probe has globex send traffic on purpose
        assert _rows(database, world.globex.org_id) == globex_before, f"{method} {path} changed globex's rows"
        if isinstance(probe, Hidden):
            assert _rows(database, world.acme.org_id) == acme_before, f"{method} {path} wrote for a refused call"


def test_the_world_is_what_the_probes_assume(world: World, client: TestClient, database: Database) -> None:
    """Globex's objects exist and answer globex (so a 404 for acme means hidden, not missing)."""
    owned = {table for table, rows in _rows(database, world.globex.org_id).items() if rows}
    assert {"deployments", "adapter_versions", "traces", "feedback", "loops", "datasets"} <= owned, owned
    gx = auth(world.globex.owner)
    for url in ("/v1/models/gx-private", "/api/deployments/gx-private", "/api/deployments/gx-private/history",
                f"/api/traces/{world.ids['g_trace']}", f"/api/traces/chatcmpl-{world.ids['g_trace']}/feedback",
                "/api/loops/gx-private", "/api/loops/gx-private/iterations", "/api/datasets/gxdata",
                "/api/datasets/gxdata@1/rows", f"/api/datasets/{world.ids['g_dataset']}"):
        r = client.get(url, headers=gx)
        assert r.status_code == 200, (url, r.text)
    listed = json.dumps(client.get("/api/traces?model=gx-private&label=gx-label", headers=gx).json())
    assert world.ids["g_trace"] in listed


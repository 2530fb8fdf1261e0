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
from sqlalchemy import select

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
def _template(tmp_path_factory: pytest.TempPathFactory, _migrated: Path, tokenizer: Any,
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
    shutil.copy(_migrated, db_path)
    database, blobs = Database(f"sqlite:///{db_path}"), BlobStore(blob_dir)
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


def _rows(database: Database, org_id: str) -> dict[str, list[str]]:
    """Every row ``org_id`` owns, table by table (API keys' last use left out: acme's own key use touches it)."""
    out: dict[str, list[str]] = {}
    with database.session(write=False) as s:
        for table in Base.metadata.sorted_tables:
            if "org_id" not in table.c or table.name == "api_keys":
                continue
            out[table.name] = sorted(repr(tuple(row)) for row in s.execute(select(table).where(table.c.org_id == org_id)))
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


@pytest.mark.parametrize(("method", "path"), list(PROBES), ids=_probe_ids())
def test_acme_cannot_reach_or_infer_globex_objects(
    method: str, path: str, app: FastAPI, client: TestClient, world: World, database: Database
) -> None:
    if (method, path) not in set(app_routes(app)):
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


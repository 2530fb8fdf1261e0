"""Console fixtures: a seeded world (two organisations, members with passwords, deployments, traces), the app.

The world is built once per session in a template (SQLite file + blob folder)
and copied for each test, so argon2 hashing and adapter publishing run once.
``acme`` has a deployment ``support`` at revision 3 (adapter bot@2, canary
bot@3 for 20 %), traces (one carrying a stored-XSS probe in its content,
tool call and metadata) and an owner, admin, member and viewer who sign in
with ``PASSWORD``; ``globex`` has its own deployment ``gx-only``, a trace, a
key and a pending invitation -- the objects acme must never reach.
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

from teachloop.core.settings import Settings  # noqa: E402
from teachloop.core.tenancy import Role  # noqa: E402
from teachloop.render import Renderer  # noqa: E402
from teachloop.serve import Serving, ServingConfig, publish_adapter  # noqa: E402
from teachloop.store import ApiKeys, BlobStore, Database, Tenancy  # noqa: E402
from teachloop.store.repos.deployments import Deployments, DeploymentState  # noqa: E402
from teachloop.store.repos.sessions import Passwords, SigninLinks  # noqa: E402
from teachloop.store.repos.traces import Traces  # noqa: E402
from teachloop.store.schema.base import utc_now  # noqa: E402
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
class World:
    acme: Org
    globex: Org
    xss_trace: str
    tool_trace: str


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


def _org(db: Database, blobs: BlobStore, tmp: Path, name: str) -> tuple[Org, str | None]:
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
        return Org(org.id, emails[Role.OWNER], emails[Role.ADMIN], emails[Role.MEMBER], emails[Role.VIEWER],
                   key.secret, key.key.id, traces, invite.info.id), xss


@pytest.fixture(scope="session")
def _template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, World]:
    root = tmp_path_factory.mktemp("console-template")
    db = Database(f"sqlite:///{root / 'teachloop.db'}")
    db.migrate()
    blobs = BlobStore(root / "blobs")
    acme, xss = _org(db, blobs, root, "acme")
    globex, _ = _org(db, blobs, root, "globex")
    with db.session() as s:
        tool = add_trace(s, acme.id, model=BASE, content="Weather in Paris?", reply="",
                         tool_calls=[{"id": "call_w", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}])
    db.close()
    assert xss is not None
    return root, World(acme, globex, xss, tool)


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

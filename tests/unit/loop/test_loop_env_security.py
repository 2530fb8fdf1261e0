"""Environment references that arrive over REST are untrusted: only names, rg:, vf: and published versions.

``PUT /api/loops/{deployment}`` with ``subprocess:run``, a ``.py`` file, a package folder or a grader JSON
as ``sources[*].env`` or ``gate.environments[*].env`` is refused with 400 naming the field -- and nothing
the reference names is imported or called (a marker file the code would write never appears), nothing is
stored. The loop worker re-resolves stored configs the same way.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from teachloop.app import AppDeps, create_app
from teachloop.core.errors import InvalidInput
from teachloop.core.settings import Settings
from teachloop.core.tenancy import Role
from teachloop.loop.config import check_references, validate_loop_config
from teachloop.store import ApiKeys
from tests.unit.loop.conftest import DEPLOYMENT, Store, grpo_config


@pytest.fixture
def member(store: Store) -> dict[str, str]:
    with store.db.session() as s:
        key = ApiKeys(s).create_key(store.org_id, None, Role.MEMBER, "m").secret
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Any:
    settings = Settings(home=tmp_path, model_cache=tmp_path / "models", database_url="sqlite://",
                        blob_url=str(tmp_path / "blobs"))
    with TestClient(create_app(AppDeps(settings, store.db, store.blobs))) as c:
        yield c


def _hostile(tmp_path: Path, marker: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """References that would write ``marker`` if anything they name were imported or called."""
    code = f"open({str(marker)!r}, 'w').write('pwned')\n"
    (tmp_path / "evil.py").write_text(code + "from teachloop.envs import Arithmetic\nclass Evil(Arithmetic):\n"
                                      "    name = 'evil'\n")
    pkg = tmp_path / "evilpkg"
    (pkg / "src/evilpkg").mkdir(parents=True)
    (pkg / "src/evilpkg/__init__.py").write_text(code + "from teachloop.envs import Arithmetic as Env\n")
    (pkg / "pyproject.toml").write_text(textwrap.dedent('''
        [project]
        name = "evilpkg"
        version = "0.1.0"
        [project.entry-points."teachloop.environments"]
        evil = "evilpkg:Env"
    '''))
    (tmp_path / "evil.json").write_text('{"type": "python", "name": "p", "source": "import os\\n'
                                        f'open({str(marker)!r}, \\"w\\")\\ndef grade(sample, item):\\n  return 1"}}')
    (tmp_path / "evil.jsonl").write_text('{"prompt": "hi"}\n')
    return {
        "module:attr": ("subprocess:run", {"args": ["touch", str(marker)]}),
        "module:attr os.system": ("os:system", {"command": f"touch {marker}"}),
        "py file": (str(tmp_path / "evil.py"), {}),
        "py file, relative": ("./evil.py", {}),
        "package folder": (str(pkg), {}),
        "grader json": (str(tmp_path / "evil.json"), {}),
        "home path": ("~/evil.py", {}),
    }


@pytest.mark.parametrize("where", ["source", "gate"])
def test_put_loop_refuses_references_that_run_local_code_and_runs_nothing(
        client: Any, member: dict[str, str], store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        where: str) -> None:
    marker = tmp_path / "executed.marker"
    monkeypatch.chdir(tmp_path)  # "./evil.py" exists here
    url = f"/api/loops/{DEPLOYMENT}"
    for label, (ref, args) in _hostile(tmp_path, marker).items():
        if where == "source":
            body = grpo_config(sources=[{"kind": "grader", "env": ref, "env_args": args}])
            param = "sources.0.env"
        else:
            body = grpo_config(gate={"environments": [{"env": ref, "env_args": args}]})
            param = "gate.environments.0.env"
        r = client.put(url, json=body, headers=member)
        assert r.status_code == 400, (label, r.status_code, r.text)
        error = r.json()["error"]
        assert error["param"] == param, (label, error)
        assert "runs local code" in error["message"] and "published NAME@VERSION" in error["message"], error
        assert not marker.exists(), f"{label}: the reference was executed"
    assert client.get("/api/loops", headers=member).json() == {"data": []}  # nothing stored
    assert "evilpkg" not in __import__("sys").modules


def test_put_loop_still_takes_builtin_names_and_rg(client: Any, member: dict[str, str]) -> None:
    url = f"/api/loops/{DEPLOYMENT}"
    ok = client.put(url, json=grpo_config(sources=[{"kind": "grader", "env": "arithmetic", "env_args": {"level": 1}}]),
                    headers=member)
    assert ok.status_code == 200, ok.text
    bad_args = client.put(url, json=grpo_config(sources=[{"kind": "grader", "env": "arithmetic",
                                                          "env_args": {"level": 9}}]), headers=member)
    assert bad_args.status_code == 400 and bad_args.json()["error"]["param"] == "sources.0.env"
    assert "level must be one of" in bad_args.json()["error"]["message"]


def test_a_stored_config_is_resolved_as_untrusted_too(store: Store, tmp_path: Path) -> None:
    """The loop worker re-checks stored configs with ``check_references``: the same refusal, nothing run."""
    marker = tmp_path / "executed.marker"
    cfg = validate_loop_config(grpo_config(sources=[{"kind": "grader", "env": "subprocess:run",
                                                     "env_args": {"args": ["touch", str(marker)]}}]))
    with store.db.session() as s, pytest.raises(InvalidInput) as err:
        check_references(cfg, s, blobs=store.blobs, org_id=store.org_id, cache=store.cache)
    assert err.value.param == "sources.0.env" and not marker.exists()

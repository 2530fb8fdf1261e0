"""Packaging: discovery, resolution, scaffolding, manifests, and env check naming what is broken."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import pytest

from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.envs import (
    Arithmetic,
    Countdown,
    Manifest,
    available,
    build_manifest,
    check_environment,
    load,
    package_hash,
    parse_semver,
    scaffold,
)
from teachloop.envs.registry import load_package


def test_builtins_are_available_and_resolve_with_arguments() -> None:
    names = available()
    assert {"arithmetic", "countdown", "json_extract", "guess_number"} <= set(names)
    assert names["arithmetic"].source == "builtin"
    env = load("arithmetic?level=3&size=4")
    assert isinstance(env, Arithmetic) and env.operators == "+-*" and len(env.take(10)) == 4
    assert isinstance(load("teachloop.envs.builtin.countdown:Countdown", count=3), Countdown)
    with pytest.raises(NotFound, match="available: arithmetic"):
        load("no_such_env")
    with pytest.raises(InvalidInput, match="bad arguments"):
        load("arithmetic?colour=red")


def test_installed_packages_are_discovered_through_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_envpkg").mkdir()
    (tmp_path / "my_envpkg" / "__init__.py").write_text(textwrap.dedent('''
        from teachloop.envs import Arithmetic
        class Tiny(Arithmetic):
            name = "tiny"
        def make(level: int = 1) -> Tiny:
            return Tiny(level)
        def unannotated(level: int = 1):
            return Tiny(level)
    '''))
    dist = tmp_path / "my_envpkg-1.2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-envpkg\nVersion: 1.2.0\n")
    (dist / "entry_points.txt").write_text("[teachloop.environments]\ntiny = my_envpkg:make\n"
                                           "arithmetic = my_envpkg:Tiny\nloose = my_envpkg:unannotated\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = available()
    assert entries["tiny"].source == "my-envpkg" and entries["tiny"].version == "1.2.0"
    assert entries["arithmetic"].source == "builtin"  # a package cannot take over a built-in name
    env = load("tiny?level=2")
    assert env.name == "tiny" and env.digits == 2  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput, match="annotated to return an Environment"):  # never called on faith
        load("loose")


def test_a_single_file_environment_loads(tmp_path: Path) -> None:
    path = tmp_path / "one.py"
    path.write_text("from teachloop.envs import Countdown\n\nclass Mine(Countdown):\n    name = 'mine'\n")
    assert load(str(path)).name == "mine"
    path.write_text("x = 1\n")
    with pytest.raises(InvalidInput, match="exactly one"):
        load(str(path))


def test_semver_and_manifest_validation() -> None:
    assert parse_semver("1.2.3-rc.1+build.5") == (1, 2, 3, "rc.1")
    for bad in ("1.2", "01.2.3", "v1.2.3", "latest"):
        with pytest.raises(InvalidInput):
            parse_semver(bad)
    with pytest.raises(ValueError):
        Manifest(name="Bad Name", version="1.0.0", content_hash="sha256:" + "0" * 64, license="MIT")


def test_scaffold_creates_a_package_that_passes_every_check(tmp_path: Path) -> None:
    root = scaffold("word-rev", tmp_path / "word-rev")
    assert (root / "src/word_rev/env.py").is_file() and (root / "tests/test_env.py").is_file()
    assert len((root / "src/word_rev/env.py").read_text().splitlines()) < 50
    report = asyncio.run(check_environment(str(root)))
    assert report.ok, report.to_dict()
    assert {r.name: r.status for r in report.results} == {
        "loads": "pass", "imports_offline": "pass", "deterministic": "pass", "manifest": "pass",
        "reference_top_score": "pass", "adversarial": "pass", "reward_range": "pass", "concurrent_episodes": "pass"}
    m = build_manifest(root, load_package(root))
    assert (m.name, m.version, m.license, m.single_turn, m.price.currency) == ("word-rev", "0.1.0", "Apache-2.0", True, "USD")
    assert m.ref == f"word-rev@0.1.0+{m.content_hash[7:19]}"
    with pytest.raises(Conflict):
        scaffold("word-rev", root)
    with pytest.raises(InvalidInput):
        scaffold("Bad Name", tmp_path / "x")


def test_package_hash_covers_content_not_caches(tmp_path: Path) -> None:
    root = scaffold("hashme", tmp_path / "hashme")
    h = package_hash(root)
    (root / "src/hashme/__pycache__").mkdir()
    (root / "src/hashme/__pycache__/env.cpython-311.pyc").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / ".git/HEAD").write_text("ref")
    assert package_hash(root) == h
    (root / "README.md").write_text("changed")
    assert package_hash(root) != h
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", h)


BROKEN = {
    # check that must fail -> (text to replace in env.py, replacement)
    "loads": ("class ", "class Broken(:\nclass "),
    "deterministic": ("rng.choice(WORDS)", "random.choice(WORDS)"),
    "reference_top_score": ("grader = ExactMatch(case_sensitive=False)", "grader = ExactMatch(case_sensitive=True, reference='X')"),
    "adversarial": ("grader = ExactMatch(case_sensitive=False)", "grader = Regex('{answer}')"),
    "reward_range": ("grader = ExactMatch(case_sensitive=False)", "grader = ExactMatch(case_sensitive=False)\n    reward_range = (0.0, 0.5)"),
    "concurrent_episodes": ("    def tasks(", "    def initial_state(self, task):\n        type(self).current = task\n        return {}\n\n    async def score(self, sample):\n        from teachloop.envs import Sample\n        return await self.grader.grade(Sample(getattr(type(self), 'current', sample.task), sample.messages))\n\n    def tasks("),
}


@pytest.mark.parametrize("failing", sorted(BROKEN))
def test_env_check_names_the_failing_check(tmp_path: Path, failing: str) -> None:
    module = f"broken_{failing}"
    root = scaffold(module, tmp_path / module)
    env_py = root / f"src/{module}/env.py"
    old, new = BROKEN[failing]
    text = env_py.read_text().replace(old, new, 1)
    text = text.replace("from teachloop.envs import Environment", "from teachloop.envs import Regex, Environment")
    env_py.write_text(text)
    report = asyncio.run(check_environment(str(root), offline=False))
    failed = [r.name for r in report.failed]
    assert failing in failed, report.to_dict()
    if failing == "loads":
        assert {r.status for r in report.results[1:]} == {"skip"}
    else:
        also = {"reference_top_score": {"concurrent_episodes"}}.get(failing, set())  # the oracle scores low there too
        assert set(failed) <= {failing} | also, report.to_dict()


def test_env_check_catches_import_time_network_use(tmp_path: Path) -> None:
    root = scaffold("phones_home", tmp_path / "phones_home")
    init = root / "src/phones_home/__init__.py"
    init.write_text("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=0.2).close()\n"
                    "except ConnectionRefusedError:\n    pass\n")
    report = asyncio.run(check_environment(str(root)))
    assert [r.name for r in report.failed] == ["imports_offline"]
    assert "network access is blocked" in report.failed[0].message


def test_env_check_catches_a_missing_license(tmp_path: Path) -> None:
    root = scaffold("nolicense", tmp_path / "nolicense")
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('license = "Apache-2.0"\n', ""))
    report = asyncio.run(check_environment(str(root), offline=False))
    assert [r.name for r in report.failed] == ["manifest"] and "license" in report.failed[0].message


def test_pyproject_registers_every_builtin_under_the_entry_point_group() -> None:
    import tomllib

    from teachloop.envs import BUILTINS, ENTRY_POINT_GROUP

    root = Path(__file__).resolve().parents[3]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    eps = data["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert eps == {name: f"{cls.__module__}:{cls.__name__}" for name, cls in BUILTINS.items()}

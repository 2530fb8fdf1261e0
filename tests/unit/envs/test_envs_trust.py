"""Trust levels of environment references, the target check before any call, and content digests."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from teachloop.catalog.envref import local_digest, resolve_env
from teachloop.core.errors import InvalidInput, NotFound
from teachloop.envs import Arithmetic, Environment, load
from teachloop.envs.registry import instantiate, references_trusted, untrusted_references


def test_untrusted_refs_may_only_name_builtins_installed_rg_and_vf(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "one.py").write_text(f"open({str(marker)!r}, 'w')\nfrom teachloop.envs import Countdown\n"
                                     "class Mine(Countdown):\n    name = 'mine'\n")
    for ref in ("subprocess:run", "os:system", str(tmp_path / "one.py"), str(tmp_path), "one.py", "a/b", "~/x"):
        with pytest.raises(InvalidInput, match="runs local code") as err:
            load(ref, trusted=False, args=["touch", str(marker)])
        assert err.value.param == "env"
    with pytest.raises(NotFound, match="built in or installed"):
        load("no_such_env", trusted=False)
    assert not marker.exists()
    assert isinstance(load("arithmetic?level=1", trusted=False), Arithmetic)
    assert load(str(tmp_path / "one.py")).name == "mine" and marker.exists()  # the CLI user's own file: trusted


def test_an_untrusted_name_never_resolves_to_a_local_folder_of_that_name(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "arithmetic").mkdir()  # a folder that shadows the built-in name for a trusted reference
    (tmp_path / "arithmetic/pyproject.toml").write_text("[project]\nname='x'\n")
    monkeypatch.chdir(tmp_path)
    assert isinstance(load("arithmetic", trusted=False), Arithmetic)
    resolved = resolve_env("arithmetic", trusted=False)
    assert isinstance(resolved.env, Arithmetic) and resolved.digest == local_digest("arithmetic", Arithmetic(),
                                                                                    trusted=False)


def test_the_ambient_trust_level_and_stored_configs() -> None:
    assert references_trusted() is True
    with untrusted_references():
        assert references_trusted() is False and references_trusted(True) is True
        with pytest.raises(InvalidInput, match="module:attr"):
            resolve_env("teachloop.envs.builtin.countdown:Countdown")
        assert resolve_env("countdown").name == "countdown"
    assert resolve_env("teachloop.envs.builtin.countdown:Countdown").name == "countdown"


def test_untrusted_vf_refs_must_be_verifiers_tasksets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("verifiers.v1")
    (tmp_path / "side_effect_mod.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for ref in ("vf:side_effect_mod", "vf:os", "vf:a.b", "vf:../x"):
        with pytest.raises(InvalidInput, match="vf:"):
            load(ref, trusted=False)
    assert not (tmp_path / "ran").exists() and "side_effect_mod" not in sys.modules


def test_instantiate_checks_the_target_before_calling_it(tmp_path: Path) -> None:
    called: list[str] = []

    def not_annotated(**kw: object):  # type: ignore[no-untyped-def]
        called.append("x")
        return Arithmetic()

    def annotated(level: int = 1) -> Arithmetic:
        return Arithmetic(level)

    class NotAnEnv:
        def __init__(self) -> None:
            called.append("init")

    for target in (not_annotated, NotAnEnv, print, len, "arithmetic", 3):
        with pytest.raises(InvalidInput, match=r"refusing to call it|not an Environment"):
            instantiate(target, {}, "t")
    assert called == []
    assert isinstance(instantiate(annotated, {"level": 3}, "t"), Arithmetic)
    assert isinstance(instantiate(Arithmetic, {}, "t"), Environment)
    with pytest.raises(InvalidInput, match="takes no arguments"):
        instantiate(Arithmetic(), {"level": 1}, "t")
    for trusted_ref in ("subprocess:run", "os:system", "builtins:eval"):
        with pytest.raises(InvalidInput, match="refusing to call it"):
            load(trusted_ref, args=["true"])


def test_bad_constructor_arguments_are_invalid_input_naming_the_argument() -> None:
    for ref, arg in [("arithmetic?level=9", "level"), ("arithmetic?digits=0", "digits"), ("arithmetic?terms=99", "terms"),
                     ("arithmetic?operators=%25", "operators"), ("arithmetic?size=0", "size"),
                     ("guess_number?high=0", "high"), ("guess_number?penalty=2", "penalty"),
                     ("countdown?count=0", "count"), ("countdown?max_number=-3", "max_number"),
                     ("json_extract?size=-1", "size"), ("arithmetic?level=true", "level")]:
        with pytest.raises(InvalidInput, match=rf"{arg} must be") as err:
            load(ref)
        assert err.value.param == "env_args", ref


def test_rg_builds_eagerly_and_takes_kwargs() -> None:
    pytest.importorskip("reasoning_gym")
    with pytest.raises(InvalidInput, match="size must be a positive integer"):
        load("rg:basic_arithmetic?size=-1")
    with pytest.raises(InvalidInput, match="min_terms"):
        load("rg:basic_arithmetic?size=5&min_terms=0")  # reasoning-gym's own validation, at load time
    env = load("rg:basic_arithmetic?size=5", seed=3, size=4)
    assert env.config == {"size": 4, "seed": 3} and len(env.take(10)) == 4  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput, match="no config field"):
        load("rg:basic_arithmetic", colour="red")


def test_digests_cover_content_and_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import teachloop

    a = local_digest("arithmetic", Arithmetic())
    assert a == local_digest("arithmetic", Arithmetic()) and a.startswith("sha256:")
    assert local_digest("arithmetic?level=1", Arithmetic(1)) != a
    monkeypatch.setattr(teachloop, "__version__", "9.9.9")
    assert local_digest("arithmetic", Arithmetic()) != a  # built-ins: teachloop's version is part of it
    monkeypatch.undo()

    env_py = tmp_path / "one.py"
    env_py.write_text("from teachloop.envs import Countdown\nclass Mine(Countdown):\n    name = 'mine'\n")
    d1 = local_digest(str(env_py), load(str(env_py)))
    assert local_digest(str(env_py), load(str(env_py)), {"count": 3}) != d1
    env_py.write_text(env_py.read_text() + "# changed\n")
    assert local_digest(str(env_py), load(str(env_py))) != d1

    grader = tmp_path / "g.json"
    grader.write_text('{"name": "g", "items": "data/items.jsonl", "grader": {"type": "string_check", '
                      '"input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}}')
    (tmp_path / "data").mkdir()
    items = tmp_path / "data/items.jsonl"
    items.write_text('{"prompt": "2+2?", "answer": "4"}\n')
    g1 = local_digest(str(grader), load(str(grader)))
    items.write_text('{"prompt": "2+2?", "answer": "5"}\n')  # the resolved items file, not a sibling .jsonl
    assert local_digest(str(grader), load(str(grader))) != g1


def test_entry_point_digest_covers_the_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "digest_envpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from teachloop.envs import Arithmetic
        class Tiny(Arithmetic):
            name = "tiny-digest"
    '''))
    dist = tmp_path / "digest_envpkg-1.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: digest-envpkg\nVersion: 1.0.0\n")
    (dist / "entry_points.txt").write_text("[teachloop.environments]\ntiny-digest = digest_envpkg:Tiny\n")
    (dist / "RECORD").write_text("digest_envpkg/__init__.py,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        env = load("tiny-digest", trusted=False)  # an installed entry point: allowed untrusted
        d1 = local_digest("tiny-digest", env, trusted=False)
        (pkg / "__init__.py").write_text((pkg / "__init__.py").read_text() + "# v2\n")
        assert local_digest("tiny-digest", env, trusted=False) != d1  # the distribution's files
        d2 = local_digest("tiny-digest", env, trusted=False)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: digest-envpkg\nVersion: 1.0.1\n")
        assert local_digest("tiny-digest", env, trusted=False) != d2  # and its version
    finally:
        sys.modules.pop("digest_envpkg", None)

"""No ``"package.module:Attr"`` strings inside teachloop: the import-linter cannot see such imports.

A module that needs another one imports it (the layer contract then checks
the edge); an environment that must be found by name registers under the
``teachloop.environments`` entry point group in pyproject.toml.
"""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "teachloop"
#: a quoted "teachloop.x.y:Attr" (either quote), the form importlib-by-name and entry-point targets take
PATTERN = re.compile(r"""["']teachloop(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_.]*["']""")


def string_imports(text: str) -> list[str]:
    """The ``"teachloop.module:Attr"`` strings in ``text``."""
    return [m.group(0) for m in PATTERN.finditer(text)]


def test_the_pattern_catches_what_it_must_and_nothing_else() -> None:
    assert string_imports('TRAFFIC = "teachloop.loop.trafficenv:TrafficPrompts"') == [
        '"teachloop.loop.trafficenv:TrafficPrompts"']
    assert string_imports("x = ('teachloop.cli.train:runs_app', 'runs')") == ["'teachloop.cli.train:runs_app'"]
    assert string_imports('"teachloop.cli.train" and "traffic" and "sha256:abc" and "teachloop: no"') == []


def test_no_module_attr_strings_in_the_package() -> None:
    found = {str(p.relative_to(SRC)): hits for p in sorted(SRC.rglob("*.py"))
             if (hits := string_imports(p.read_text(encoding="utf-8")))}
    assert not found, f"import these instead of naming them in strings: {found}"

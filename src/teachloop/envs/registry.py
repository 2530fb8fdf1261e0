"""Finding environments: built-ins, installed packages (entry points) and references.

Environment packages register in the entry point group
``teachloop.environments``: ``name = "package.module:Target"``, where the
target is an ``Environment`` subclass, a factory returning one, or an
instance. ``available()`` lists built-ins and installed packages (a built-in
name cannot be taken over by a package). ``load(ref)`` resolves:

    rg:<dataset>?seed=1&size=500     reasoning-gym dataset
    vf:<taskset-id>?k=v              verifiers v1 taskset (optional extra)
    path/to/grader.json              OpenAI grader JSON (+ items JSONL): a no-code environment
    path/to/package/                 a package folder (its pyproject's entry point), not installed
    path/to/module.py                a file defining one Environment subclass
    package.module:Target            an importable target
    name[?k=v&...]                   a built-in or installed environment

Query parameters (values read as JSON where they parse) and ``**kwargs``
become the constructor's keyword arguments. Published versions
(``name@version``) are the hub's business: the CLI fetches the archive and
resolves its folder here. This module never touches the network or the store.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.envs.base import Environment

ENTRY_POINT_GROUP = "teachloop.environments"


@dataclass(frozen=True)
class EnvEntry:
    """One discoverable environment."""

    name: str
    target: str
    source: str
    version: str | None


def _builtins() -> dict[str, type[Environment]]:
    from teachloop.envs.builtin import BUILTINS

    return dict(BUILTINS)


def available() -> dict[str, EnvEntry]:
    """Built-in and installed environments by name, sorted."""
    out = {n: EnvEntry(n, f"{c.__module__}:{c.__name__}", "builtin", c.version) for n, c in _builtins().items()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        if ep.name in out and out[ep.name].source == "builtin":
            continue
        out[ep.name] = EnvEntry(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else None)
    return dict(sorted(out.items()))


def instantiate(target: Any, kwargs: dict[str, Any], where: str) -> Environment:
    """An ``Environment`` from a class, a factory or an instance."""
    if isinstance(target, Environment):
        if kwargs:
            raise InvalidInput(f"{where} is an environment instance and takes no arguments, got {sorted(kwargs)}")
        return target
    if not callable(target):
        raise InvalidInput(f"{where} is not an Environment class, factory or instance")
    try:
        env = target(**kwargs)
    except TypeError as err:
        raise InvalidInput(f"{where}: bad arguments {sorted(kwargs)}: {err}") from None
    if not isinstance(env, Environment):
        raise InvalidInput(f"{where} returned {type(env).__name__}, not an Environment")
    return env


def import_target(target: str) -> Any:
    """The object named by ``module:attr``."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def split_query(ref: str) -> tuple[str, dict[str, Any]]:
    """``name?k=v&k2=v2`` -> (name, {k: value}) with values read as JSON where they parse."""
    from teachloop.envs.adapters.reasoning_gym import parse_value

    base, _, query = ref.partition("?")
    return base, {k: parse_value(v) for k, v in parse_qsl(query, keep_blank_values=True)}


def package_entry_points(root: Path) -> dict[str, str]:
    """The ``teachloop.environments`` entry points a package folder's pyproject declares."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise InvalidInput(f"{root} has no pyproject.toml")
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(f"{pyproject}: {err}") from None
    eps = data.get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    if not eps:
        raise InvalidInput(f'{pyproject} declares no [project.entry-points."{ENTRY_POINT_GROUP}"]')
    return {str(k): str(v) for k, v in eps.items()}


def _forget(module_name: str) -> None:
    """Drop an already-imported top-level package, so a folder is always loaded from its current files."""
    top = module_name.split(".")[0]
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def load_package(root: Path, name: str | None = None, **kwargs: Any) -> Environment:
    """The environment a package folder declares (the one named ``name`` if it declares several).

    The folder's top-level module is imported afresh each time (an earlier import of the same name is
    dropped from ``sys.modules``), so an edited package is never served from a stale import.
    """
    eps = package_entry_points(root)
    if name is None and len(eps) > 1:
        raise InvalidInput(f"{root} declares several environments {sorted(eps)}; name one")
    key = name or next(iter(eps))
    if key not in eps:
        raise NotFound(f"{root} declares no environment {key!r}; it has {sorted(eps)}")
    src = root / "src" if (root / "src").is_dir() else root
    if str(src.resolve()) not in sys.path:
        sys.path.insert(0, str(src.resolve()))
    _forget(eps[key].partition(":")[0])
    importlib.invalidate_caches()
    return instantiate(import_target(eps[key]), kwargs, f"{root}:{key}")


def _load_file(path: Path, kwargs: dict[str, Any]) -> Environment:
    spec = importlib.util.spec_from_file_location(f"teachloop_env_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    classes = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, Environment)
               and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise InvalidInput(f"{path} must define exactly one Environment subclass, found {[c.__name__ for c in classes]}")
    return instantiate(classes[0], kwargs, str(path))


def load(ref: str, **kwargs: Any) -> Environment:
    """The environment ``ref`` names (see the module docstring); raises ``NotFound``/``InvalidInput``."""
    if ref.startswith("rg:"):
        from teachloop.envs.adapters.reasoning_gym import ReasoningGym

        return ReasoningGym.from_uri(ref)
    if ref.startswith("vf:"):
        from teachloop.envs.adapters.verifiers import VerifiersTaskset

        return VerifiersTaskset.from_uri(ref)
    base, query = split_query(ref)
    kwargs = {**query, **kwargs}
    path = Path(base).expanduser()
    if path.suffix == ".json" and path.is_file():
        from teachloop.envs.adapters.openai_graders import GraderJsonEnv

        return GraderJsonEnv(path, **kwargs)
    if path.is_dir():
        return load_package(path, **kwargs)
    if path.suffix == ".py" and path.is_file():
        return _load_file(path, kwargs)
    entries = available()
    if base in entries:
        builtin = _builtins().get(base)
        target = builtin if builtin is not None and entries[base].source == "builtin" else import_target(entries[base].target)
        return instantiate(target, kwargs, base)
    if ":" in base and not path.exists():
        try:
            target = import_target(base)
        except (ImportError, AttributeError) as err:
            raise NotFound(f"cannot import environment {base!r}: {err}") from None
        return instantiate(target, kwargs, base)
    raise NotFound(f"no environment {base!r}: not a path, not rg:/vf:, not installed; available: {', '.join(entries)}")


__all__ = ["ENTRY_POINT_GROUP", "EnvEntry", "available", "import_target", "instantiate", "load", "load_package",
           "package_entry_points", "split_query"]

"""Finding environments: built-ins, installed packages (entry points) and references.

Environment packages register in the entry point group
``teachloop.environments``: ``name = "package.module:Target"``, where the
target is an ``Environment`` subclass, a factory *annotated* to return one
(``def make(...) -> MyEnv``) or an instance. ``available()`` lists built-ins
and installed packages (a built-in name cannot be taken over by a package).
``load(ref)`` resolves:

    rg:<dataset>?seed=1&size=500     reasoning-gym dataset
    vf:<taskset-id>?k=v              verifiers v1 taskset (optional extra)
    name[?k=v&...]                   a built-in or installed environment
    path/to/grader.json              OpenAI grader JSON (+ items JSONL): a no-code environment   (trusted only)
    path/to/package/                 a package folder (its pyproject's entry point), not installed (trusted only)
    path/to/module.py                a file defining one Environment subclass                    (trusted only)
    package.module:Target            an importable target                                        (trusted only)

Query parameters (values read as JSON where they parse) and ``**kwargs``
become the constructor's keyword arguments (``**kwargs`` win). Published
versions (``name@version``) are ``train.envref``'s business.

**Trust.** A reference is *trusted* when the local user typed it (the CLI,
Python code); references that arrive over the API or from a stored config are
*untrusted*: ``load(ref, trusted=False)`` accepts only built-in and installed
names, ``rg:`` and ``vf:`` (a taskset verifiers ships or an installed package
that depends on verifiers), and refuses paths and ``module:attr`` with
``InvalidInput`` *before importing or calling anything*, since those run
arbitrary code. ``trusted=None`` takes the ambient level: trusted, except
inside ``untrusted_references()``. A named environment is constructed at the
caller's level, so one whose arguments name local files (``traffic``'s
``path``) can ask ``references_trusted()`` and refuse them. Even a trusted target is called only if it
is an ``Environment`` subclass or a function annotated to return one.

Constructor arguments that an environment rejects (``TypeError``/``ValueError``)
become ``InvalidInput`` naming the environment and the argument. This module
never touches the network or the store.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import tomllib
import typing
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from teachloop.core.errors import InvalidInput, NotFound
from teachloop.envs.base import Environment

ENTRY_POINT_GROUP = "teachloop.environments"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TRUSTED: ContextVar[bool] = ContextVar("teachloop_env_refs_trusted", default=True)
UNTRUSTED_FORMS = "a built-in or installed environment name, rg:<dataset>, vf:<taskset> or a published NAME@VERSION"


@dataclass(frozen=True)
class EnvEntry:
    """One discoverable environment."""

    name: str
    target: str
    source: str
    version: str | None


@contextlib.contextmanager
def untrusted_references() -> Iterator[None]:
    """Within this block, references resolve as untrusted unless a caller says otherwise (stored configs)."""
    token = _TRUSTED.set(False)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def references_trusted(trusted: bool | None = None) -> bool:
    """``trusted`` if given, else the ambient level (see the module docstring)."""
    return _TRUSTED.get() if trusted is None else trusted


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


def entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    """The installed (non-built-in) entry point ``name``, if any."""
    if name in _builtins():
        return None
    return next((ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name), None)


def _returns_environment(fn: Any) -> bool:
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve is no promise
        return False
    return inspect.isclass(hint) and issubclass(hint, Environment)


def _check_target(target: Any, where: str) -> None:
    """Refuse (before calling anything) a target that is not an Environment class or an annotated factory."""
    if inspect.isclass(target):
        if issubclass(target, Environment):
            return
        raise InvalidInput(f"{where} names the class {target.__module__}.{target.__qualname__}, which is not an "
                           "Environment subclass; refusing to call it", param="env")
    if (inspect.isfunction(target) or inspect.ismethod(target)) and _returns_environment(target):
        return
    what = getattr(target, "__qualname__", None) or type(target).__name__
    raise InvalidInput(f"{where} names {what!r}, which is not an Environment subclass, an Environment instance or a "
                       "function annotated to return an Environment (def make(...) -> MyEnv); refusing to call it",
                       param="env")


def instantiate(target: Any, kwargs: dict[str, Any], where: str) -> Environment:
    """An ``Environment`` from a class, an annotated factory or an instance; nothing else is ever called."""
    if isinstance(target, Environment):
        if kwargs:
            raise InvalidInput(f"{where} is an environment instance and takes no arguments, got {sorted(kwargs)}",
                               param="env_args")
        return target
    _check_target(target, where)
    try:
        env = target(**kwargs)
    except InvalidInput:
        raise
    except TypeError as err:
        raise InvalidInput(f"{where}: bad arguments {sorted(kwargs)}: {err}", param="env_args") from None
    except ValueError as err:
        raise InvalidInput(f"{where}: {err}", param="env_args") from None
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
    dropped from ``sys.modules``), so an edited package is never served from a stale import. Runs the
    package's code: callers decide trust (a folder the user named, or a verified published archive).
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


def _refuse_untrusted(ref: str, base: str) -> None:
    """``InvalidInput`` unless ``base`` is a form an untrusted reference may take (checked without importing)."""
    if ref.startswith("vf:"):
        from teachloop.envs.adapters.verifiers import taskset_installed

        taskset = base.removeprefix("vf:")
        if not taskset_installed(taskset):
            raise InvalidInput(f"environment reference {ref!r}: vf:{taskset} is not a taskset verifiers ships nor an "
                               "installed package that depends on verifiers; untrusted references may not import "
                               "other modules", param="env")
        return
    if ref.startswith("rg:"):
        return
    if ":" in base or "/" in base or "\\" in base or base.endswith((".py", ".json")) or base.startswith((".", "~")):
        kind = "a Python import path (module:attr)" if ":" in base else "a file or folder path"
        raise InvalidInput(
            f"environment reference {ref!r} is {kind}, which runs local code; a reference from the API or a stored "
            f"config may only be {UNTRUSTED_FORMS} (run local code from the CLI instead)", param="env")
    if not _NAME.match(base) or base not in available():
        raise NotFound(f"no environment {base!r} is built in or installed; a reference from the API or a stored "
                       f"config may only be {UNTRUSTED_FORMS}; available: {', '.join(available())}", param="env")


def load(ref: str, *, trusted: bool | None = None, **kwargs: Any) -> Environment:
    """The environment ``ref`` names (see the module docstring); raises ``NotFound``/``InvalidInput``.

    ``trusted=False`` (or the ambient level inside ``untrusted_references()``) accepts only names,
    ``rg:`` and ``vf:``; ``**kwargs`` are constructor arguments, merged over the reference's query.
    """
    base = ref.partition("?")[0]
    if not references_trusted(trusted):
        _refuse_untrusted(ref, base)
    if ref.startswith("rg:"):
        from teachloop.envs.adapters.reasoning_gym import ReasoningGym

        return ReasoningGym.from_uri(ref, **kwargs)
    if ref.startswith("vf:"):
        from teachloop.envs.adapters.verifiers import VerifiersTaskset

        return VerifiersTaskset.from_uri(ref, **kwargs)
    base, query = split_query(ref)
    kwargs = {**query, **kwargs}
    if references_trusted(trusted):
        path = Path(base).expanduser()
        if path.suffix == ".json" and path.is_file():
            from teachloop.envs.adapters.openai_graders import GraderJsonEnv

            return instantiate(GraderJsonEnv, {"path": path, **kwargs}, str(path))
        if path.is_dir():
            return load_package(path, **kwargs)
        if path.suffix == ".py" and path.is_file():
            return _load_file(path, kwargs)
    entries = available()
    if base in entries:
        builtin = _builtins().get(base)
        target = builtin if builtin is not None and entries[base].source == "builtin" else import_target(entries[base].target)
        token = _TRUSTED.set(references_trusted(trusted))  # the constructor sees the caller's trust
        try:
            return instantiate(target, kwargs, base)
        finally:
            _TRUSTED.reset(token)
    if ":" in base and not Path(base).exists():
        try:
            target = import_target(base)
        except (ImportError, AttributeError) as err:
            raise NotFound(f"cannot import environment {base!r}: {err}") from None
        return instantiate(target, kwargs, base)
    raise NotFound(f"no environment {base!r}: not a path, not rg:/vf:, not installed; available: {', '.join(entries)}")


__all__ = ["ENTRY_POINT_GROUP", "UNTRUSTED_FORMS", "EnvEntry", "available", "entry_point", "import_target",
           "instantiate", "load", "load_package", "package_entry_points", "references_trusted", "split_query",
           "untrusted_references"]

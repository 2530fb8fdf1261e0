"""The manifest of an environment version, and the content hash of a package folder.

A package declares its manifest in ``pyproject.toml``: ``[project]`` gives
``name``, ``version`` (semver) and ``license``; ``[tool.teachloop.environment]``
gives the rest (``price = {amount_minor = 0, currency = "USD"}``,
``resources = {cpu = 1, memory_mb = 512}``, ``requires_network``, ``tags``).
Behaviour facts (single/multi-turn, tools, reward range) come from the
loaded environment itself, so they cannot drift from the code.

``package_hash`` is ``sha256:`` over every file of the folder, sorted by
relative path (``file:<path>\\0<bytes>\\0`` each), skipping VCS, cache, build
and virtual-env folders; the same files give the same hash anywhere. A
version is its semver plus this hash; the hub keys immutability on both.
This module knows nothing of the store.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from teachloop.core.errors import InvalidInput
from teachloop.core.files import files_digest
from teachloop.envs.base import Environment

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", "build", "dist", ".pytest_cache",
                       ".mypy_cache", ".ruff_cache", ".tox", ".nox", "node_modules", ".idea", ".vscode"})
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
Protocol = Literal["native-1", "rg", "grader-json", "verifiers-v1"]


def parse_semver(version: str) -> tuple[int, int, int, str]:
    """(major, minor, patch, prerelease) of a semver string; raises ``InvalidInput`` if it is not one."""
    m = SEMVER.match(version)
    if not m:
        raise InvalidInput(f"version {version!r} is not semver (MAJOR.MINOR.PATCH[-pre][+build])")
    return int(m[1]), int(m[2]), int(m[3]), m[4] or ""


def package_files(root: Path) -> list[Path]:
    """The files of a package folder that its hash and archive cover, sorted by relative path."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part in SKIP_DIRS or part.endswith(SKIP_SUFFIXES) for part in rel.parts):
            continue
        if p.is_file() and not p.is_symlink():
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def package_hash(root: Path) -> str:
    """``sha256:<hex>`` of a package folder's files (see the module docstring)."""
    return files_digest((p.relative_to(root).as_posix(), p) for p in package_files(root))


class Price(BaseModel):
    """Price per use (one episode), in integer minor units of ``currency``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount_minor: int = Field(default=0, ge=0, description="E.g. 25 = 0.25 USD.")
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")


class Resources(BaseModel):
    """What one environment worker needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float = Field(default=1.0, gt=0)
    memory_mb: int = Field(default=512, gt=0)
    gpu: str | None = Field(default=None, description="E.g. 'A100:1'; None for CPU only.")


class Manifest(BaseModel):
    """What the hub stores about one environment version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Registry name: lower case, digits, '-', '_', '.'.")
    version: str = Field(description="Semver of this version.")
    content_hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="Hash of the package files.")
    protocol: Protocol = Field(default="native-1", description="How the package is loaded.")
    entry_point: str | None = Field(default=None, description="'module:Target' of the environment.")
    description: str = Field(default="", description="One paragraph.")
    license: str = Field(description="SPDX id or 'proprietary'.")
    price: Price = Field(default_factory=Price)
    reward_range: tuple[float, float] = Field(default=(0.0, 1.0))
    single_turn: bool = Field(default=True)
    multi_turn: bool = Field(default=False)
    tools: list[str] = Field(default_factory=list, description="Names of the tools offered.")
    resources: Resources = Field(default_factory=Resources)
    requires_network: bool = Field(default=False)
    tags: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("name must be lower case letters, digits, '-', '_' or '.' (at most 100)")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        parse_semver(v)
        return v

    @property
    def ref(self) -> str:
        """``name@version+<first 12 hex of the hash>``: the human-readable pinned reference."""
        return f"{self.name}@{self.version}+{self.content_hash[7:19]}"


def read_pyproject(root: Path) -> dict[str, Any]:
    """The parsed ``pyproject.toml`` of a package folder."""
    try:
        return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"{root} has no pyproject.toml") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(f"{root / 'pyproject.toml'}: {err}") from None


def build_manifest(root: Path, env: Environment, *, entry_name: str | None = None) -> Manifest:
    """The manifest of the package at ``root`` whose environment is ``env``; ``InvalidInput`` if incomplete."""
    data = read_pyproject(root)
    project = data.get("project", {})
    extra = data.get("tool", {}).get("teachloop", {}).get("environment", {})
    eps = project.get("entry-points", {}).get("teachloop.environments", {})
    name = entry_name or (next(iter(eps)) if len(eps) == 1 else project.get("name", ""))
    lic = project.get("license")
    if isinstance(lic, dict):
        lic = lic.get("text") or lic.get("file")
    if not lic:
        raise InvalidInput(f"{root}/pyproject.toml: [project] needs a license (an SPDX id or 'proprietary')")
    allowed = {"price", "resources", "requires_network", "tags", "description"}
    if set(extra) - allowed:
        raise InvalidInput(f"[tool.teachloop.environment] has unknown keys {sorted(set(extra) - allowed)}")
    try:
        return Manifest(
            name=str(name).lower(), version=str(project.get("version", "")), content_hash=package_hash(root),
            entry_point=eps.get(name), description=extra.get("description") or project.get("description", ""),
            license=str(lic), price=Price(**extra.get("price", {})), resources=Resources(**extra.get("resources", {})),
            reward_range=env.reward_range, single_turn=not env.multi_turn, multi_turn=env.multi_turn,
            tools=[t.name for t in env.tools], requires_network=bool(extra.get("requires_network", False)),
            tags=list(extra.get("tags", [])),
        )
    except (ValueError, TypeError) as err:
        raise InvalidInput(f"{root}: invalid manifest: {err}") from None


__all__ = ["Manifest", "Price", "Resources", "build_manifest", "package_files", "package_hash", "parse_semver",
           "read_pyproject"]

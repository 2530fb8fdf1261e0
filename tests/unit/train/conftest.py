"""Training fixtures: a tiny Llama engine, its renderer, and a migrated SQLite store with one organisation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from teachloop.core.rl import Task
from teachloop.envs import Environment, FunctionGrader, user
from teachloop.render import Renderer
from teachloop.store import BlobStore, Database, Tenancy
from tests._tiny import tiny_llama


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-train"))


@pytest.fixture
def engine(tiny_dir: Path) -> Any:
    from teachloop.engine.torch_engine import TorchEngine

    return TorchEngine(tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def renderer(tiny_dir: Path) -> Renderer:
    return Renderer.from_pretrained(tiny_dir)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Database, BlobStore, str]]:
    db = Database(f"sqlite:///{tmp_path / 'train.db'}")
    db.migrate()
    with db.session() as s:
        org_id = Tenancy(s).create_org("acme").id
    try:
        yield db, BlobStore(str(tmp_path / "blobs")), org_id
    finally:
        db.close()


def digit_share(completion: str) -> float:
    """Share of the reply's characters that are digits (a toy reward with a smooth signal)."""
    text = completion.strip()
    return sum(c.isdigit() for c in text) / max(1, len(text))


class Digits(Environment):
    """Toy environment: say anything; the reward is the share of digit characters."""

    name: ClassVar[str] = "digits"
    version: ClassVar[str] = "1.0.0"
    grader = FunctionGrader(lambda completion: digit_share(completion), name="digits")

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        i = 0
        while True:
            yield Task(id=f"d-{seed}-{i}", prompt=(user(f"Say some numbers {i % 7}"),), answer="123456789")
            i += 1

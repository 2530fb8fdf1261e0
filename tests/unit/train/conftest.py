"""Training fixtures: a tiny Llama engine, its renderer, and a migrated SQLite store with one organisation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
def store(tmp_path: Path, migrated_sqlite: Callable[[Path], str]) -> Iterator[tuple[Database, BlobStore, str]]:
    db = Database(migrated_sqlite(tmp_path / "train.db"))
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




def digits_written(completion: str) -> float:
    """A gameable grader: pays per digit written (up to 8), so padding a reply with digits earns more."""
    return min(8, sum(c.isdigit() for c in completion)) / 8


def in_words(completion: str) -> float:
    """The honest grade of a task that asks for an answer in words: the share of non-digit characters."""
    text = completion.strip()
    return 1.0 - sum(c.isdigit() for c in text) / max(1, len(text))


class Padded(Environment):
    """The task asks for an answer in words; its grader, paying per digit written, is gamed by padding with digits."""

    name: ClassVar[str] = "padded"
    version: ClassVar[str] = "1.0.0"
    grader = FunctionGrader(lambda completion: digits_written(completion), name="digits_written")

    def tasks(self, seed: int = 0) -> Iterator[Task]:
        i = 0
        while True:
            yield Task(id=f"p-{seed}-{i}", prompt=(user(f"Answer in one word {i % 7}"),), answer="seven")
            i += 1


class InWords(Padded):
    """The same tasks, graded honestly: an answer in words, not digits."""

    name: ClassVar[str] = "in_words"
    grader = FunctionGrader(lambda completion: in_words(completion), name="in_words")

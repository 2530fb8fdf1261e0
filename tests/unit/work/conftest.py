"""Fixtures of the workforce tests: a migrated SQLite database per test (copied from a session template),
an organisation with an owner, a reviewer member and experts, and helpers to make projects and items."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from teachloop.core.tenancy import Role
from teachloop.core.work import ExpertCreate, ItemIn, ProjectCreate
from teachloop.store import BlobStore, Database, Tenancy
from teachloop.work import projects, workforce

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(migrated_sqlite: Callable[[Path], str], tmp_path: Path) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path / "teachloop.db"))
    yield database
    database.close()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@dataclass
class Org:
    id: str
    owner: str
    reviewer: str
    experts: list[str] = field(default_factory=list)
    other_org: str = ""
    outsider: str = ""


@pytest.fixture
def org(db: Database) -> Org:
    with db.session() as s:
        t = Tenancy(s)
        o = t.create_org("acme")
        owner = t.create_user("owner@acme.test")
        t.add_member(o.id, owner.id, Role.OWNER)
        reviewer = t.create_user("reviewer@acme.test")
        t.add_member(o.id, reviewer.id, Role.MEMBER)
        experts = []
        for i in range(5):
            u = t.create_user(f"expert{i}@acme.test", f"Expert {i}")
            t.add_member(o.id, u.id, Role.EXPERT)
            workforce.add_expert(s, o.id, ExpertCreate(user_id=u.id, skills=["math"]))
            experts.append(u.id)
        other = t.create_org("globex")
        outsider = t.create_user("x@globex.test")
        t.add_member(other.id, outsider.id, Role.EXPERT)
        workforce.add_expert(s, other.id, ExpertCreate(user_id=outsider.id))
        return Org(o.id, owner.id, reviewer.id, experts, other.id, outsider.id)


PROMPT = [{"role": "user", "content": "What is 2+2?"}]


def make_project(db: Database, org_id: str, task_type: str, *, name: str | None = None,
                 items: list[dict[str, Any]] | None = None, **settings: Any) -> str:
    """A project of ``task_type`` with ``items`` (payload dicts); returns its id."""
    template: dict[str, Any] = {"instructions": "Be careful."}
    if task_type == "rubric":
        template["criteria"] = [{"id": "correct", "description": "Is it right?", "low": 1, "high": 5},
                                {"id": "clear", "description": "Is it clear?", "low": 1, "high": 3}]
    body = ProjectCreate.model_validate({"name": name or f"{task_type}-proj", "task_type": task_type,
                                         "template": template, "settings": {"gold_share": 0, **settings}})
    with db.session() as s:
        p = projects.create_project(s, org_id, body, actor="owner")
        if items:
            projects.add_items(s, org_id, p.id, [ItemIn.model_validate(i) for i in items])
        return p.id


def pair_item(**extra: Any) -> dict[str, Any]:
    return {"prompt": PROMPT, "candidates": [{"id": "a", "text": "4"}, {"id": "b", "text": "5"}], **extra}

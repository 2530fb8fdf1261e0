"""Dataset pages: ``/datasets`` (every snapshot) and ``/datasets/{id}`` (its rows with their lineage, its grants).

- ``/datasets``: the organisation's snapshots, newest first: ``name@version``,
  kind, origin (loop, import, labels), rows per split, licences, digest.
- ``/datasets/{id}``: the snapshot's record and ``source``, the grants the
  organisation gave on its name (grantee, version or every version, licence,
  revoked or active), and its rows ``PAGE_SIZE`` at a time (``?page=N``,
  ``?split=train|holdout``), in order: each row's content and its lineage --
  source kind, the trace it came from (a link), the dataset row it was copied
  from, the expert, the environment that scored it (reference, version,
  digest), its score and its licence. Content shows as lines (``row_lines``):
  each message by role, a pair's prompt, chosen and rejected replies, a
  prompt's reference answer; other keys as JSON.

Read through ``store.Datasets`` (the row page is one ``LIMIT``/``OFFSET``
query on the snapshot's rows, after ``Datasets.get`` checked the owner),
scoped to the signed-in member's organisation: another organisation's dataset
is a 404 page like a missing one. Needs the viewer role; nothing here changes
a dataset.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select
from starlette.responses import Response

from teachloop.core.errors import InvalidInput
from teachloop.core.tenancy import Role
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.tenancy import Tenancy
from teachloop.store.schema.datasets import DATASET_SPLITS, DatasetRow
from teachloop.web.auth import SignedIn, app_deps, require, require_csrf
from teachloop.web.render import ConsoleRoute, page
from teachloop.web.traces import message_view

router = APIRouter(route_class=ConsoleRoute, dependencies=[Depends(require_csrf)])

PAGE_SIZE = 50
LIST_SIZE = 200


def _turns(label: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, list):
        return [(m.role, m.text + "".join(f"\n[tool call {c.name}] {c.arguments}" for c in m.tool_calls))
                for m in map(message_view, value)]
    if isinstance(value, dict):
        view = message_view(value)
        return [(f"{label} ({view.role})" if label else view.role, view.text)]
    return [(label, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))]


def row_lines(content: dict[str, Any]) -> list[tuple[str, str]]:
    """A row's content as (label, text) lines: each message by role; ``prompt``, ``chosen``, ``rejected``, ``answer``.

    Keys it does not know are shown as JSON under their name, so nothing in a row is hidden.
    """
    lines: list[tuple[str, str]] = []
    for key, value in content.items():
        if key == "messages":
            lines += _turns("", value)
        elif key in ("prompt", "chosen", "rejected"):
            lines += _turns(key, value) if not isinstance(value, list) else [
                (f"{key} · {role}", text) for role, text in _turns("", value)]
        else:
            lines.append((key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))
    return lines


@router.get("/datasets")
def dataset_list(request: Request, viewer: SignedIn) -> Response:
    """The organisation's dataset snapshots, newest first."""
    require(viewer, Role.VIEWER, "reading datasets")
    with app_deps(request).database.session(write=False) as session:
        datasets = Datasets(session).list(viewer.principal.org_id, limit=LIST_SIZE)
    return page(request, "datasets.html", datasets=datasets, limit=LIST_SIZE)


def _page_number(raw: str) -> int:
    if not raw.strip():
        return 1
    if not raw.strip().isdigit() or int(raw) < 1:
        raise InvalidInput(f"page must be a whole number from 1, got {raw!r}", param="page")
    return int(raw)


@router.get("/datasets/{dataset_id}")
def dataset_detail(request: Request, viewer: SignedIn, dataset_id: str,
                   page_number: Annotated[str, Query(alias="page", max_length=12)] = "",
                   split: Annotated[str, Query(max_length=12)] = "") -> Response:
    """One snapshot: its record, grants and one page of its rows with their lineage."""
    require(viewer, Role.VIEWER, "reading datasets")
    number = _page_number(page_number)
    if split and split not in DATASET_SPLITS:
        raise InvalidInput(f"split must be train, holdout or empty, got {split!r}", param="split")
    org = viewer.principal.org_id
    with app_deps(request).database.session(write=False) as session:
        repo = Datasets(session)
        dataset = repo.get(org, dataset_id)
        query = select(DatasetRow).where(DatasetRow.dataset_id == dataset.id)
        if split:
            query = query.where(DatasetRow.split == split)
        total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
        rows = list(session.scalars(query.order_by(DatasetRow.position).offset((number - 1) * PAGE_SIZE)
                                    .limit(PAGE_SIZE)))
        grants = repo.grants(org, dataset.name)
        tenancy = Tenancy(session)
        grantees = {g.grantee_org_id: tenancy.get_org(g.grantee_org_id).name for g in grants}
    pages = max(1, math.ceil(total / PAGE_SIZE))
    return page(request, "dataset.html", dataset=dataset, rows=[(r, row_lines(r.content)) for r in rows], total=total, page_no=number, pages=pages,
                split=split, grants=grants, grantees=grantees, page_size=PAGE_SIZE)


__all__ = ["LIST_SIZE", "PAGE_SIZE", "router", "row_lines"]

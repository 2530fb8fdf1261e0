"""Listings: a seller organisation's card for one version it owns, published with its licence computed.

``create_listing(session, org, kind=, ref=, title=, description=)`` resolves ``ref`` in the
seller's own organisation only (a dataset ``NAME@N``, an environment ``NAME@VERSION``, an
adapter ``NAME@N``, or their ids): another organisation's version is refused exactly like a
missing one (``NotFound``), so a listing can only point at what its organisation owns.

``publish_listing`` pins the version's content digest (what is sold is what was shown) and
computes, from the lineage, never from what the seller types:

- the **card**: schema, size, up to three preview rows, a quality summary (scored rows,
  mean score) and a lineage summary (contributors, row sources, licences);
- the **effective licence** (``catalog.licences.effective`` over every row's licence; an
  adapter's follows its training data -- the datasets its run read; an environment's is its
  manifest's ``license``), stored as ``{"terms": ..., "sources": {licence: rows}}``;
- for datasets, **Croissant** JSON-LD (``croissant.croissant_for``) validated by ``mlcroissant``.

Publishing is idempotent; ``withdraw_listing`` stops new sales (paid entitlements stay).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from teachloop.catalog.licences import classify, effective
from teachloop.core.errors import Conflict, InvalidInput, NotFound
from teachloop.core.ids import is_id
from teachloop.core.market import Listing, ListingStatus, ResourceKind
from teachloop.market.croissant import croissant_for
from teachloop.market.royalties import lineage_parties
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.deployments import AdapterVersions
from teachloop.store.repos.environments import EnvironmentRegistry
from teachloop.store.schema.base import utc_now
from teachloop.store.schema.datasets import Dataset, DatasetRow
from teachloop.store.schema.deployments import AdapterVersion
from teachloop.store.schema.environments import EnvironmentVersion
from teachloop.store.schema.market import MarketListing
from teachloop.store.schema.runs import TrainingRun

PREVIEW_ROWS = 3


def listing_view(row: MarketListing) -> Listing:
    """The domain view of a listing row."""
    return Listing(id=row.id, org_id=row.org_id, kind=ResourceKind(row.kind), resource_id=row.resource_id,
                   resource_ref=row.resource_ref, title=row.title, description=row.description,
                   status=ListingStatus(row.status), digest=row.digest, card=row.card, croissant=row.croissant,
                   licence=row.licence, created_at=row.created_at, published_at=row.published_at)


def _resolve(session: Session, org_id: str, kind: ResourceKind, ref: str) -> tuple[str, str]:
    """(resource id, human ref) of ``ref`` in the seller's own organisation; ``NotFound`` otherwise."""
    if kind is ResourceKind.DATASET:
        d = Datasets(session).resolve(org_id, ref)
        return d.id, d.ref
    if kind is ResourceKind.ADAPTER:
        a = AdapterVersions(session).resolve(org_id, ref)
        return a.id, f"{a.name}@{a.version}"
    if is_id(ref, "envv"):
        e = session.get(EnvironmentVersion, ref)
        if e is None or e.org_id != org_id:
            raise NotFound(f"environment version {ref!r} not found", param="ref")
    else:
        e = EnvironmentRegistry(session).resolve(org_id, ref)
    return e.id, f"{e.name}@{e.version}"


def create_listing(session: Session, org_id: str, *, kind: str, ref: str, title: str, description: str = "",
                   actor: str = "system") -> Listing:
    """A draft listing of ``ref`` (a version the organisation owns)."""
    try:
        rkind = ResourceKind(kind)
    except ValueError:
        raise InvalidInput(f"kind must be dataset, environment or adapter, got {kind!r}", param="kind") from None
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= 200:
        raise InvalidInput("title must be 1-200 characters", param="title")
    if not isinstance(description, str) or len(description) > 5000:
        raise InvalidInput("description must be at most 5000 characters", param="description")
    resource_id, resource_ref = _resolve(session, org_id, rkind, ref)
    row = MarketListing(org_id=org_id, kind=rkind.value, resource_id=resource_id, resource_ref=resource_ref,
                        title=title.strip(), description=description, status=ListingStatus.DRAFT.value, card={},
                        licence={}, created_by=actor)
    session.add(row)
    session.flush()
    return listing_view(row)


def get_listing_row(session: Session, listing_id: str, *, org_id: str | None = None,
                    published: bool = False) -> MarketListing:
    """A listing the caller may see: its own (``org_id``), or any published one when ``published``."""
    row = session.get(MarketListing, listing_id) if isinstance(listing_id, str) else None
    visible = row is not None and (row.org_id == org_id or (published and row.status == "published"))
    if row is None or not visible:
        raise NotFound(f"listing {listing_id!r} not found", param="listing")
    return row


def list_listings(session: Session, org_id: str, *, mine: bool = False) -> list[Listing]:
    """Published listings of every seller (the catalogue), or all of the organisation's own (``mine``)."""
    query = select(MarketListing)
    query = query.where(MarketListing.org_id == org_id) if mine else query.where(MarketListing.status == "published")
    return [listing_view(r) for r in session.scalars(query.order_by(MarketListing.created_at, MarketListing.id))]


def _dataset_card(session: Session, d: Dataset) -> tuple[dict[str, Any], dict[str, int]]:
    rows = list(session.scalars(select(DatasetRow).where(DatasetRow.dataset_id == d.id)
                                .order_by(DatasetRow.position)))
    licences: dict[str, int] = {}
    sources: dict[str, int] = {}
    for r in rows:
        licences[r.license] = licences.get(r.license, 0) + 1
        sources[r.source_kind] = sources.get(r.source_kind, 0) + 1
    scores = [r.score for r in rows if r.score is not None]
    fields = {"chat": ["messages"], "prompts": ["messages", "answer"], "pairs": ["prompt", "chosen", "rejected"]}
    card = {
        "schema": {"kind": d.kind, "fields": fields.get(d.kind, [])},
        "size": {"rows": d.row_count, "splits": d.split_counts},
        "preview": [r.content for r in rows[:PREVIEW_ROWS]],
        "quality": {"scored_rows": len(scores), "mean_score": (sum(scores) / len(scores)) if scores else None},
        "lineage": {"contributors": len(lineage_parties(session, d)), "sources": sources, "licences": licences},
    }
    return card, licences


def _run_datasets(session: Session, run: TrainingRun) -> list[Dataset]:
    """The datasets a training run read (every ``ds_...`` id in its inputs or config)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and is_id(value, "ds"):
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(run.inputs)
    walk(run.config)
    return [d for i in sorted(found) if (d := session.get(Dataset, i)) is not None]


def training_datasets(session: Session, adapter: AdapterVersion) -> list[Dataset]:
    """The datasets an adapter version was trained on (through its run), if known."""
    run = session.get(TrainingRun, adapter.source_run_id) if adapter.source_run_id else None
    return _run_datasets(session, run) if run is not None else []


def publish_listing(session: Session, org_id: str, listing_id: str) -> Listing:
    """Compute the card, licence (and Croissant) from the lineage, pin the digest and publish."""
    row = get_listing_row(session, listing_id, org_id=org_id)
    if row.status == ListingStatus.PUBLISHED.value:
        return listing_view(row)
    if row.status == ListingStatus.WITHDRAWN.value:
        raise Conflict(f"listing {row.id} was withdrawn; create a new listing", param="listing")
    croissant = None
    if row.kind == ResourceKind.DATASET.value:
        d = session.get(Dataset, row.resource_id)
        assert d is not None
        card, licences = _dataset_card(session, d)
        digest = d.digest
        croissant = croissant_for(d, title=row.title, description=row.description or row.title,
                                  licence=sorted(licences), card=card)
    elif row.kind == ResourceKind.ADAPTER.value:
        a = session.get(AdapterVersion, row.resource_id)
        assert a is not None
        datasets = training_datasets(session, a)
        licences = {}
        for d in datasets:
            for lic, n in _dataset_card(session, d)[1].items():
                licences[lic] = licences.get(lic, 0) + n
        if not licences:
            licences = {"LicenseRef-proprietary": 1}
        card = {"schema": {"kind": "peft-lora", "base_model": a.base_model}, "size": {},
                "training_data": [d.ref for d in datasets], "lineage": {"licences": licences}}
        digest = a.digest
    else:
        e = session.get(EnvironmentVersion, row.resource_id)
        assert e is not None
        lic = str((e.manifest or {}).get("license") or "LicenseRef-proprietary")
        licences = {lic: 1}
        card = {"schema": {"kind": "environment", "manifest": e.manifest}, "size": {},
                "quality": {"checks": e.checks}, "lineage": {"contributors": 1, "licences": licences}}
        digest = e.digest
    terms = effective(licences, param="license")
    for lic in licences:
        classify(lic)
    row.card = card
    row.licence = {"terms": terms.model_dump(mode="json"), "summary": terms.summary(), "sources": licences}
    row.croissant = croissant
    row.digest = digest
    row.status = ListingStatus.PUBLISHED.value
    row.published_at = utc_now()
    session.flush()
    return listing_view(row)


def withdraw_listing(session: Session, org_id: str, listing_id: str) -> Listing:
    """Stop new sales of a listing (entitlements already granted stay)."""
    row = get_listing_row(session, listing_id, org_id=org_id)
    row.status = ListingStatus.WITHDRAWN.value
    session.flush()
    return listing_view(row)


def listing_count(session: Session) -> int:
    """How many listings exist (tests)."""
    return int(session.scalar(select(func.count()).select_from(MarketListing)) or 0)


__all__ = ["PREVIEW_ROWS", "create_listing", "get_listing_row", "list_listings", "listing_count", "listing_view",
           "publish_listing", "training_datasets", "withdraw_listing"]

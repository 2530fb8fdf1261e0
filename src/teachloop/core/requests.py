"""Data requests (RFPs), their matches and proposals: wire and domain types.

A buyer posts a ``RequestCreate``; ``licences`` lists the licence terms it needs
(``research``, ``non-commercial``, ``commercial``, ``derivatives``, or a licence id such as
``cc-by-4.0``), all of which an offer must grant. ``budget`` is in minor units of
``currency``; ``size`` is rows (a per-row offer costs its price times ``size``).
This module is pure: stdlib and pydantic only.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from teachloop.core.money import MAX_MINOR


class RequestStatus(StrEnum):
    """open -> matched (a proposal accepted) -> fulfilled; or closed."""

    OPEN = "open"
    MATCHED = "matched"
    FULFILLED = "fulfilled"
    CLOSED = "closed"


class ProposalStatus(StrEnum):
    """proposed -> accepted | declined."""

    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    DECLINED = "declined"


class RequestCreate(BaseModel):
    """Body of ``POST /api/requests``."""

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=10_000, description="The task the data is for.")
    format: str | None = Field(default=None, max_length=40, description="dataset, environment, sft, dpo, ... (a hard filter).")
    size: int | None = Field(default=None, ge=1, le=10**9, description="Rows wanted.")
    quality_bar: float | None = Field(default=None, ge=0, le=1, description="E.g. gold accuracy the data must reach.")
    licences: list[str] = Field(default_factory=list, max_length=20, description="Licence terms needed (all).")
    budget: int | None = Field(default=None, ge=0, le=MAX_MINOR, description="Minor units of `currency`.")
    currency: str = Field(default="USD", min_length=3, max_length=3)
    deadline: datetime | None = None
    visibility: str = Field(default="marketplace", pattern="^(marketplace|private)$")


class DataRequestOut(BaseModel):
    """A data request."""

    id: str
    org_id: str
    title: str
    description: str
    format: str | None
    size: int | None
    quality_bar: float | None
    licences: list[str]
    budget: int | None
    currency: str
    deadline: datetime | None
    visibility: str
    status: RequestStatus
    fulfilled_by: str | None
    created_at: datetime


class RequestList(BaseModel):
    """Requests the caller can see: its own and open marketplace ones."""

    data: list[DataRequestOut]


class Match(BaseModel):
    """A listing that passes the request's hard filters, with its similarity score."""

    listing_id: str
    supplier_org_id: str
    title: str
    score: float = Field(description="Cosine similarity of the request text and the listing card.")
    price: int | None
    currency: str | None


class MatchList(BaseModel):
    """Matches, best first, and the listings the hard filters excluded (with why)."""

    request_id: str
    data: list[Match]
    excluded: dict[str, str] = Field(default_factory=dict, description="listing id -> why it cannot answer.")


class ProposalCreate(BaseModel):
    """Body of ``POST /api/requests/{id}/proposals``: propose a listing (a broker may propose another's)."""

    listing_id: str = Field(max_length=40)
    price: int | None = Field(default=None, ge=0, le=MAX_MINOR, description="Proposed price in the request's currency.")
    note: str = Field(default="", max_length=5000)
    commission_bps: int = Field(default=0, ge=0, le=5000, description="A broker's commission on the order (basis points).")


class ProposalOut(BaseModel):
    """A proposal answering a request."""

    id: str
    request_id: str
    org_id: str = Field(description="The proposing organisation (supplier or broker).")
    listing_id: str
    supplier_org_id: str | None
    broker_org_id: str | None
    commission_bps: int
    price: int | None
    score: float | None
    note: str
    status: ProposalStatus
    order_ref: str | None
    created_at: datetime


class ProposalList(BaseModel):
    """Proposals on one request."""

    data: list[ProposalOut]


class AcceptBody(BaseModel):
    """Body of ``POST /api/requests/{id}/proposals/{proposal_id}/accept``."""

    order_ref: str | None = Field(default=None, max_length=200, description="The order this acceptance led to, if placed.")


class AcceptedMatch(BaseModel):
    """What an order owes a broker: read by the royalty split through ``market.requests.accepted_match``."""

    order_ref: str
    request_id: str
    proposal_id: str
    buyer_org_id: str
    supplier_org_id: str | None
    broker_org_id: str | None
    commission_bps: int


__all__ = [
    "AcceptBody",
    "AcceptedMatch",
    "DataRequestOut",
    "Match",
    "MatchList",
    "ProposalCreate",
    "ProposalList",
    "ProposalOut",
    "ProposalStatus",
    "RequestCreate",
    "RequestList",
    "RequestStatus",
]

"""Data-request tables: buyers' requests (RFPs) and the proposals that answer them.

- ``DataRequest`` (owned by the buyer's organisation): what the buyer wants -- task
  description, format, size, quality bar, licences needed, budget, deadline -- and its
  ``status`` (``open`` -> ``matched`` when a proposal is accepted -> ``fulfilled`` when
  a listing or dataset delivers it; or ``closed``). ``visibility`` ``marketplace`` lets
  other organisations see and answer it; ``private`` keeps it to the buyer.
- ``RequestProposal`` (owned by the proposing organisation: a supplier, or a broker
  proposing another's listing): what is proposed (``candidate_kind`` + ``candidate_ref``),
  price, note, the similarity score, and for a broker ``broker_org_id`` +
  ``commission_bps`` (basis points of the resulting order). ``status``: ``proposed``,
  ``accepted``, ``declined``; ``order_ref`` is the order the acceptance leads to.

This module knows nothing of matching or money; ``market.requests`` does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from teachloop.store.schema.base import Base, JSONType, OrgOwned, Timestamps, id_column, ref_column


class DataRequest(OrgOwned, Timestamps, Base):
    """A buyer's request for data."""

    __tablename__ = "data_requests"
    __table_args__ = (Index("ix_data_requests_status_visibility", "status", "visibility"),)

    id: Mapped[str] = id_column("dreq")
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    format: Mapped[str | None] = mapped_column(String(40))
    size: Mapped[int | None] = mapped_column(Integer)
    quality_bar: Mapped[float | None] = mapped_column(Float)
    licences: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    budget: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    deadline: Mapped[datetime | None]
    visibility: Mapped[str] = mapped_column(String(20), default="marketplace")
    status: Mapped[str] = mapped_column(String(20), default="open")
    fulfilled_by: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))


class RequestProposal(OrgOwned, Timestamps, Base):
    """A proposal answering a data request (by a supplier, or a broker on a supplier's behalf)."""

    __tablename__ = "request_proposals"
    __table_args__ = (UniqueConstraint("order_ref"),)

    id: Mapped[str] = id_column("prop")
    request_id: Mapped[str] = ref_column("data_requests.id")
    buyer_org_id: Mapped[str] = ref_column("organisations.id")
    candidate_kind: Mapped[str] = mapped_column(String(20))
    candidate_ref: Mapped[str] = mapped_column(String(200))
    supplier_org_id: Mapped[str | None] = ref_column("organisations.id", nullable=True)
    price: Mapped[int | None] = mapped_column(BigInteger)
    score: Mapped[float | None] = mapped_column(Float)
    note: Mapped[str] = mapped_column(Text, default="")
    broker_org_id: Mapped[str | None] = ref_column("organisations.id", nullable=True)
    commission_bps: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), default="proposed")
    order_ref: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))


__all__ = ["DataRequest", "RequestProposal"]

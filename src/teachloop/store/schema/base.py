"""Declarative base, column helpers and the conventions every table follows.

- Every table's primary key is a prefixed id from ``teachloop.core.ids.new_id``
  (``id_column("org")`` -> ``org_01k...``), stored as ``VARCHAR(40)``.
- Every tenant-owned table inherits ``OrgOwned``: a non-null, indexed ``org_id``
  foreign key to ``organisations``. A table that is deliberately global (the
  organisations and users themselves) says so with ``GLOBAL_TABLE`` in its
  ``__table_args__``; a test fails for any table that is neither.
- Timestamps are timezone-aware UTC ``datetime`` in Python on every backend
  (SQLite stores them naive; ``UTCDateTime`` converts at the boundary).
- Constraint names follow ``NAMING_CONVENTION`` so Alembic migrations (including
  SQLite batch mode) can refer to them.

Later packages add their tables as new modules of ``teachloop.store.schema``
(imported in its ``__init__``) plus a new migration. This module knows nothing
about sessions, engines or migrations.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, MetaData, String
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, mapped_column
from sqlalchemy.types import TypeDecorator

from teachloop.core.ids import new_id

#: Length of every id column: a prefix of at most 12 characters, "_" and 26 characters.
ID_LENGTH = 40

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: ``info`` marker for tables that belong to no organisation (put it in ``__table_args__``).
GLOBAL_TABLE: dict[str, Any] = {"info": {"global": True}}


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend; naive datetimes are rejected on the way in."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (e.g. datetime.now(UTC))")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON everywhere, JSONB on PostgreSQL.
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of every teachloop table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def id_column(prefix: str) -> MappedColumn[Any]:
    """A primary-key column filled with ``new_id(prefix)`` on insert."""
    new_id(prefix)  # validate the prefix at import time, not at the first insert
    return mapped_column(String(ID_LENGTH), primary_key=True, default=partial(new_id, prefix))


def ref_column(target: str, *, nullable: bool = False, index: bool = True) -> MappedColumn[Any]:
    """A foreign-key column to ``target`` (``"table.id"``) holding a teachloop id."""
    return mapped_column(String(ID_LENGTH), ForeignKey(target), nullable=nullable, index=index)


class Timestamps:
    """``created_at`` set on insert and ``updated_at`` refreshed on every ORM update."""

    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class OrgOwned:
    """A tenant-owned row: non-null ``org_id`` referencing ``organisations.id``."""

    org_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("organisations.id"), nullable=False, index=True
    )


__all__ = [
    "GLOBAL_TABLE",
    "ID_LENGTH",
    "NAMING_CONVENTION",
    "Base",
    "JSONType",
    "OrgOwned",
    "Timestamps",
    "UTCDateTime",
    "id_column",
    "ref_column",
    "utc_now",
]

"""Data requests and proposals (``store.schema.requests``); billing prices, quotas, invoices (``store.schema.billing``).

Revision ID: 0013_requests_billing
Revises: 0012_market
Create Date: 2026-12-11
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013_requests_billing"
down_revision: str | None = "0012_market"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def _org_id(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=f"fk_{table}_org_id_organisations"),
    ]


def upgrade() -> None:
    op.create_table(
        "data_requests",
        sa.Column("id", ID, nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=40), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("quality_bar", sa.Float(), nullable=True),
        sa.Column("licences", JSON, nullable=False),
        sa.Column("budget", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("deadline", TS, nullable=True),
        sa.Column("visibility", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("fulfilled_by", sa.String(length=200), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *_org_id("data_requests"),
        sa.PrimaryKeyConstraint("id", name="pk_data_requests"),
    )
    op.create_index("ix_data_requests_org_id", "data_requests", ["org_id"])
    op.create_index("ix_data_requests_status_visibility", "data_requests", ["status", "visibility"])
    op.create_table(
        "request_proposals",
        sa.Column("id", ID, nullable=False),
        sa.Column("request_id", ID, nullable=False),
        sa.Column("buyer_org_id", ID, nullable=False),
        sa.Column("candidate_kind", sa.String(length=20), nullable=False),
        sa.Column("candidate_ref", sa.String(length=200), nullable=False),
        sa.Column("supplier_org_id", ID, nullable=True),
        sa.Column("price", sa.BigInteger(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("broker_org_id", ID, nullable=True),
        sa.Column("commission_bps", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("order_ref", sa.String(length=200), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *_org_id("request_proposals"),
        sa.PrimaryKeyConstraint("id", name="pk_request_proposals"),
        sa.ForeignKeyConstraint(["request_id"], ["data_requests.id"],
                                name="fk_request_proposals_request_id_data_requests"),
        sa.ForeignKeyConstraint(["buyer_org_id"], ["organisations.id"],
                                name="fk_request_proposals_buyer_org_id_organisations"),
        sa.ForeignKeyConstraint(["supplier_org_id"], ["organisations.id"],
                                name="fk_request_proposals_supplier_org_id_organisations"),
        sa.ForeignKeyConstraint(["broker_org_id"], ["organisations.id"],
                                name="fk_request_proposals_broker_org_id_organisations"),
        sa.UniqueConstraint("order_ref", name="uq_request_proposals_order_ref"),
    )
    for column in ("org_id", "request_id", "buyer_org_id", "supplier_org_id", "broker_org_id"):
        op.create_index(f"ix_request_proposals_{column}", "request_proposals", [column])
    op.create_table(
        "billing_prices",
        sa.Column("id", ID, nullable=False),
        sa.Column("meter", sa.String(length=40), nullable=False),
        sa.Column("scope", sa.String(length=320), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("micro_minor", sa.BigInteger(), nullable=False),
        sa.Column("set_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_prices"),
        sa.UniqueConstraint("meter", "scope", name="uq_billing_prices_meter_scope"),
    )
    op.create_table(
        "billing_quotas",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("limit", sa.BigInteger(), nullable=False),
        sa.Column("set_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *_org_id("billing_quotas"),
        sa.PrimaryKeyConstraint("id", name="pk_billing_quotas"),
        sa.UniqueConstraint("org_id", "name", name="uq_billing_quotas_org_id_name"),
    )
    op.create_index("ix_billing_quotas_org_id", "billing_quotas", ["org_id"])
    op.create_table(
        "billing_invoices",
        sa.Column("id", ID, nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("lines", JSON, nullable=False),
        sa.Column("entry_id", ID, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        *_org_id("billing_invoices"),
        sa.PrimaryKeyConstraint("id", name="pk_billing_invoices"),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entries.id"], name="fk_billing_invoices_entry_id_ledger_entries"),
        sa.UniqueConstraint("org_id", "period", name="uq_billing_invoices_org_id_period"),
    )
    op.create_index("ix_billing_invoices_org_id", "billing_invoices", ["org_id"])


def downgrade() -> None:
    op.drop_table("billing_invoices")
    op.drop_table("billing_quotas")
    op.drop_table("billing_prices")
    op.drop_table("request_proposals")
    op.drop_table("data_requests")

"""The marketplace: listings, offers, orders, entitlements, the usage meter (``store.schema.market``).

Revision ID: 0012_market
Revises: 0011_environment_checks
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import Text

import teachloop.store.schema.base

revision: str = "0012_market"
down_revision: str | None = "0011_environment_checks"
branch_labels: str | None = None
depends_on: str | None = None

TABLES = ("market_usage", "market_entitlements", "market_orders", "market_offers", "market_listings")


def upgrade() -> None:
    op.create_table(
        "market_listings",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("resource_id", sa.String(length=40), nullable=False),
        sa.Column("resource_ref", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=5000), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=True),
        sa.Column(
            "card", sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "croissant",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "licence",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", teachloop.store.schema.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", teachloop.store.schema.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_market_listings_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_listings")),
    )
    op.create_index(op.f("ix_market_listings_org_id"), "market_listings", ["org_id"], unique=False)
    op.create_table(
        "market_offers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("listing_id", sa.String(length=40), nullable=False),
        sa.Column("pricing", sa.String(length=20), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("use", sa.String(length=20), nullable=False),
        sa.Column("derivatives", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", teachloop.store.schema.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["listing_id"], ["market_listings.id"], name=op.f("fk_market_offers_listing_id_market_listings")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_market_offers_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_offers")),
    )
    op.create_index(op.f("ix_market_offers_listing_id"), "market_offers", ["listing_id"], unique=False)
    op.create_index(op.f("ix_market_offers_org_id"), "market_offers", ["org_id"], unique=False)
    op.create_table(
        "market_orders",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("seller_org_id", sa.String(length=40), nullable=False),
        sa.Column("offer_id", sa.String(length=40), nullable=False),
        sa.Column("listing_id", sa.String(length=40), nullable=False),
        sa.Column("idem_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=71), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("entry_id", sa.String(length=40), nullable=True),
        sa.Column("settle_entry_id", sa.String(length=40), nullable=True),
        sa.Column("refund_entry_id", sa.String(length=40), nullable=True),
        sa.Column(
            "shares",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("refundable_until", teachloop.store.schema.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", teachloop.store.schema.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["listing_id"], ["market_listings.id"], name=op.f("fk_market_orders_listing_id_market_listings")
        ),
        sa.ForeignKeyConstraint(
            ["offer_id"], ["market_offers.id"], name=op.f("fk_market_orders_offer_id_market_offers")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_market_orders_org_id_organisations")
        ),
        sa.ForeignKeyConstraint(
            ["seller_org_id"], ["organisations.id"], name=op.f("fk_market_orders_seller_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_orders")),
        sa.UniqueConstraint("org_id", "idem_key", name=op.f("uq_market_orders_org_id_idem_key")),
    )
    op.create_index(op.f("ix_market_orders_offer_id"), "market_orders", ["offer_id"], unique=False)
    op.create_index(op.f("ix_market_orders_org_id"), "market_orders", ["org_id"], unique=False)
    op.create_index("ix_market_orders_seller", "market_orders", ["seller_org_id"], unique=False)
    op.create_table(
        "market_entitlements",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("seller_org_id", sa.String(length=40), nullable=False),
        sa.Column("listing_id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("resource_id", sa.String(length=40), nullable=False),
        sa.Column(
            "actions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("use", sa.String(length=20), nullable=False),
        sa.Column("pricing", sa.String(length=20), nullable=False),
        sa.Column("grant_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", teachloop.store.schema.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", teachloop.store.schema.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["listing_id"],
            ["market_listings.id"],
            name=op.f("fk_market_entitlements_listing_id_market_listings"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["market_orders.id"], name=op.f("fk_market_entitlements_order_id_market_orders")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_market_entitlements_org_id_organisations")
        ),
        sa.ForeignKeyConstraint(
            ["seller_org_id"],
            ["organisations.id"],
            name=op.f("fk_market_entitlements_seller_org_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_entitlements")),
    )
    op.create_index(
        op.f("ix_market_entitlements_order_id"), "market_entitlements", ["order_id"], unique=False
    )
    op.create_index(op.f("ix_market_entitlements_org_id"), "market_entitlements", ["org_id"], unique=False)
    op.create_index(
        "ix_market_entitlements_resource", "market_entitlements", ["org_id", "resource_id"], unique=False
    )
    op.create_table(
        "market_usage",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("entitlement_id", sa.String(length=40), nullable=True),
        sa.Column("resource_id", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("billed_entry_id", sa.String(length=40), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", teachloop.store.schema.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_market_usage_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_usage")),
    )
    op.create_index("ix_market_usage_entitlement", "market_usage", ["entitlement_id"], unique=False)
    op.create_index(op.f("ix_market_usage_org_id"), "market_usage", ["org_id"], unique=False)


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)

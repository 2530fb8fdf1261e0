"""Datasets the organisation imports or labels (``datasets.origin``) and entitlements to other orgs' datasets.

Revision ID: 0006_dataset_origin_grants
Revises: 0005_datasets_loops
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006_dataset_origin_grants"
down_revision: str | None = "0005_datasets_loops"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("origin", sa.String(length=20), nullable=False, server_default="loop"))

    op.create_table(
        "dataset_grants",
        sa.Column("id", ID, nullable=False),
        sa.Column("dataset_name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("grantee_org_id", ID, nullable=False),
        sa.Column("license", sa.String(length=100), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name="fk_dataset_grants_org_id_organisations"),
        sa.ForeignKeyConstraint(["grantee_org_id"], ["organisations.id"],
                                name="fk_dataset_grants_grantee_org_id_organisations"),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_grants"),
    )
    op.create_index("ix_dataset_grants_org_id", "dataset_grants", ["org_id"])
    op.create_index("ix_dataset_grants_grantee_org_id", "dataset_grants", ["grantee_org_id"])
    op.create_index("ix_dataset_grants_grantee_name", "dataset_grants", ["grantee_org_id", "org_id", "dataset_name"])


def downgrade() -> None:
    op.drop_table("dataset_grants")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("origin")

"""Idempotency keys of POST requests (``store.schema.idempotency``).

Revision ID: 0009_idempotency_keys
Revises: 0008_console_auth
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009_idempotency_keys"
down_revision: str | None = "0008_console_auth"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", ID, nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_digest", sa.String(length=71), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name="fk_idempotency_keys_org_id_organisations"),
        sa.PrimaryKeyConstraint("id", name="pk_idempotency_keys"),
        sa.UniqueConstraint("org_id", "scope", "key", name="uq_idempotency_keys_org_id_scope_key"),
    )
    op.create_index("ix_idempotency_keys_org_id", "idempotency_keys", ["org_id"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_org_id", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")

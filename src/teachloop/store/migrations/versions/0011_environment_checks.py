"""The publish-time check report of each environment version (``environment_versions.checks``).

Nullable: versions published before this revision have no stored report.

Revision ID: 0011_environment_checks
Revises: 0010_ledger
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011_environment_checks"
down_revision: str | None = "0010_ledger"
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("environment_versions") as batch:
        batch.add_column(sa.Column("checks", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("environment_versions") as batch:
        batch.drop_column("checks")

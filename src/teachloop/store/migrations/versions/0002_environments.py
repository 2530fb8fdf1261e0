"""Environment hub: immutable published environment versions and stored evaluations.

Revision ID: 0002_environments
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_environments"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "environment_versions",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.Column("blob_key", sa.String(length=200), nullable=False),
        sa.Column("published_by", sa.String(length=200), nullable=False),
        sa.Column("yanked", sa.Boolean(), nullable=False),
        sa.Column("yanked_at", TS, nullable=True),
        sa.Column("yank_reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_environment_versions_org_id_organisations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_environment_versions"),
        sa.UniqueConstraint("org_id", "name", "version", name="uq_environment_versions_org_id_name_version"),
    )
    op.create_index("ix_environment_versions_org_id", "environment_versions", ["org_id"])
    op.create_index("ix_environment_versions_org_name", "environment_versions", ["org_id", "name"])
    op.create_index("ix_environment_versions_digest", "environment_versions", ["digest"])

    op.create_table(
        "environment_evals",
        sa.Column("id", ID, nullable=False),
        sa.Column("env_name", sa.String(length=200), nullable=False),
        sa.Column("env_version", sa.String(length=64), nullable=True),
        sa.Column("env_digest", sa.String(length=71), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("n_tasks", sa.Integer(), nullable=False),
        sa.Column("n_episodes", sa.Integer(), nullable=False),
        sa.Column("mean", sa.Float(), nullable=False),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
        sa.Column("report", JSON, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_environment_evals_org_id_organisations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_environment_evals"),
    )
    op.create_index("ix_environment_evals_org_id", "environment_evals", ["org_id"])
    op.create_index("ix_environment_evals_org_env", "environment_evals", ["org_id", "env_name"])


def downgrade() -> None:
    op.drop_table("environment_evals")
    op.drop_table("environment_versions")

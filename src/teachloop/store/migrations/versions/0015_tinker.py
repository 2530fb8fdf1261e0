"""The Tinker-compatible API (``store.schema.tinker``): sessions, models, checkpoints.

Revision ID: 0015_tinker
Revises: 0014_work
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_tinker"
down_revision: str | None = "0014_work"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
MODEL_ID = sa.String(length=80)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def _org_id(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=f"fk_{table}_org_id_organisations"),
    ]


def upgrade() -> None:
    op.create_table(
        "tinker_sessions",
        sa.Column("id", ID, nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("user_metadata", JSON, nullable=False),
        sa.Column("sdk_version", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("last_seen_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *_org_id("tinker_sessions"),
        sa.PrimaryKeyConstraint("id", name="pk_tinker_sessions"),
    )
    op.create_index("ix_tinker_sessions_org_id", "tinker_sessions", ["org_id"])
    op.create_table(
        "tinker_models",
        sa.Column("id", MODEL_ID, nullable=False),
        sa.Column("session_id", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("base_model", sa.String(length=300), nullable=False),
        sa.Column("lora", JSON, nullable=False),
        sa.Column("user_metadata", JSON, nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *_org_id("tinker_models"),
        sa.PrimaryKeyConstraint("id", name="pk_tinker_models"),
        sa.ForeignKeyConstraint(["session_id"], ["tinker_sessions.id"],
                                name="fk_tinker_models_session_id_tinker_sessions"),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"], name="fk_tinker_models_run_id_training_runs"),
    )
    op.create_index("ix_tinker_models_org_id", "tinker_models", ["org_id"])
    op.create_index("ix_tinker_models_session_id", "tinker_models", ["session_id"])
    op.create_index("ix_tinker_models_run_id", "tinker_models", ["run_id"])
    op.create_table(
        "tinker_checkpoints",
        sa.Column("id", ID, nullable=False),
        sa.Column("model_id", MODEL_ID, nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("blob_key", sa.String(length=300), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("user_metadata", JSON, nullable=False),
        sa.Column("adapter_version_id", sa.String(length=40), nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        *_org_id("tinker_checkpoints"),
        sa.PrimaryKeyConstraint("id", name="pk_tinker_checkpoints"),
        sa.ForeignKeyConstraint(["model_id"], ["tinker_models.id"],
                                name="fk_tinker_checkpoints_model_id_tinker_models"),
        sa.UniqueConstraint("model_id", "kind", "name", name="uq_tinker_checkpoints_model_id_kind_name"),
    )
    op.create_index("ix_tinker_checkpoints_org_id", "tinker_checkpoints", ["org_id"])
    op.create_index("ix_tinker_checkpoints_model_id", "tinker_checkpoints", ["model_id"])


def downgrade() -> None:
    op.drop_table("tinker_checkpoints")
    op.drop_table("tinker_models")
    op.drop_table("tinker_sessions")

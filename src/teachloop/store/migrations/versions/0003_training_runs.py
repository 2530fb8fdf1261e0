"""Training runs, their metric time series and checkpoints.

Revision ID: 0003_training_runs
Revises: 0002_environments
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_training_runs"
down_revision: str | None = "0002_environments"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("algorithm", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("base_model", sa.String(length=300), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("inputs", JSON, nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("last_checkpoint_step", sa.Integer(), nullable=True),
        sa.Column("last_checkpoint_key", sa.String(length=300), nullable=True),
        sa.Column("final_adapter_key", sa.String(length=300), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("org_id", ID, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name="fk_training_runs_org_id_organisations"),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
    )
    op.create_index("ix_training_runs_org_id", "training_runs", ["org_id"])
    op.create_index("ix_training_runs_org_created", "training_runs", ["org_id", "created_at"])
    for table, prefix_cols in (("run_metrics", ("step", "phase")), ("run_checkpoints", ("step",))):
        cols: list[sa.Column[Any]] = [
            sa.Column("id", ID, nullable=False),
            sa.Column("run_id", ID, nullable=False),
            sa.Column("step", sa.Integer(), nullable=False),
        ]
        if table == "run_metrics":
            cols += [sa.Column("phase", sa.String(length=10), nullable=False), sa.Column("values", JSON, nullable=False)]
        else:
            cols += [sa.Column("blob_key", sa.String(length=300), nullable=False)]
        op.create_table(
            table,
            *cols,
            sa.Column("created_at", TS, nullable=False),
            sa.Column("org_id", ID, nullable=False),
            sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=f"fk_{table}_org_id_organisations"),
            sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"], name=f"fk_{table}_run_id_training_runs"),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.UniqueConstraint("run_id", *prefix_cols, name=f"uq_{table}_run_id_{'_'.join(prefix_cols)}"),
        )
        op.create_index(f"ix_{table}_org_id", table, ["org_id"])
        op.create_index(f"ix_{table}_run_id", table, ["run_id"])


def downgrade() -> None:
    op.drop_table("run_checkpoints")
    op.drop_table("run_metrics")
    op.drop_table("training_runs")

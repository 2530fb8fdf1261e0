"""Training you can watch and the loop's lineage (issue 16).

Revision ID: 0016_run_watch
Revises: 0015_tinker
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016_run_watch"
down_revision: str | None = "0015_tinker"
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # -- loop lineage (issue 16, loop helper): how each iteration trained (loop.lineage.Plan)
    with op.batch_alter_table("loop_iterations") as batch:
        batch.add_column(sa.Column("plan", JSON, nullable=True))
    # -- end loop lineage
    # -- run watch (issue 16, train helper): best checkpoint, why a run stopped, the reward-hack alarm
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("best_step", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("best_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("best_adapter_key", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("stop_reason", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("alarm", JSON, nullable=True))
    # -- end run watch
    pass


def downgrade() -> None:
    # -- run watch (issue 16, train helper)
    with op.batch_alter_table("training_runs") as batch:
        for column in ("alarm", "stop_reason", "best_adapter_key", "best_score", "best_step"):
            batch.drop_column(column)
    # -- end run watch
    # -- loop lineage (issue 16, loop helper)
    with op.batch_alter_table("loop_iterations") as batch:
        batch.drop_column("plan")
    # -- end loop lineage
    pass

"""Training you can watch and the loop's lineage (issue 16).

Revision ID: 0016_run_watch
Revises: 0015_tinker
Create Date: 2026-12-06
"""

from __future__ import annotations

revision: str = "0016_run_watch"
down_revision: str | None = "0015_tinker"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""The Tinker-compatible API (``store.schema.tinker``): sessions, models, futures, checkpoints.

Revision ID: 0015_tinker
Revises: 0014_work
Create Date: 2026-12-06
"""

from __future__ import annotations

revision: str = "0015_tinker"
down_revision: str | None = "0014_work"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""Upstream deployment arms, encrypted upstream keys, shadow traffic (issue 17).

Revision ID: 0017_upstream
Revises: 0016_run_watch
Create Date: 2026-12-06
"""

from __future__ import annotations

revision: str = "0017_upstream"
down_revision: str | None = "0016_run_watch"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

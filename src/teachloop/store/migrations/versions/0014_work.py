"""The expert workforce (``store.schema.work``): projects, templates, items, assignments, answers, reviews, exams, pay.

Revision ID: 0014_work
Revises: 0013_requests_billing
Create Date: 2026-12-06
"""

from __future__ import annotations

revision: str = "0014_work"
down_revision: str | None = "0013_requests_billing"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

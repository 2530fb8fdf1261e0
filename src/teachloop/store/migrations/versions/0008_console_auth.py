"""Console sign-in: users' password hashes, sessions, sign-in links and invitations, attempts, server secrets.

Revision ID: 0008_console_auth
Revises: 0006_dataset_origin_grants
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008_console_auth"
down_revision: str | None = "0006_dataset_origin_grants"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
TS = sa.DateTime(timezone=True)


def _org(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=f"fk_{table}_org_id_organisations"),
    ]


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(length=200), nullable=True))

    op.create_table(
        "console_sessions",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        *_org("console_sessions"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_console_sessions_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_console_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_console_sessions_token_hash"),
    )
    op.create_index("ix_console_sessions_org_id", "console_sessions", ["org_id"])
    op.create_index("ix_console_sessions_user_id", "console_sessions", ["user_id"])

    op.create_table(
        "signin_links",
        sa.Column("id", ID, nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        *_org("signin_links"),
        sa.PrimaryKeyConstraint("id", name="pk_signin_links"),
        sa.UniqueConstraint("token_hash", name="uq_signin_links_token_hash"),
    )
    op.create_index("ix_signin_links_org_id", "signin_links", ["org_id"])

    op.create_table(
        "signin_attempts",
        sa.Column("id", ID, nullable=False),
        sa.Column("pair_hash", sa.String(length=64), nullable=False),
        sa.Column("client_hash", sa.String(length=64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_signin_attempts"),
    )
    op.create_index("ix_signin_attempts_pair_at", "signin_attempts", ["pair_hash", "at"])
    op.create_index("ix_signin_attempts_client_at", "signin_attempts", ["client_hash", "at"])
    op.create_index("ix_signin_attempts_at", "signin_attempts", ["at"])

    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_server_secrets"),
    )


def downgrade() -> None:
    op.drop_table("server_secrets")
    op.drop_table("signin_attempts")
    op.drop_table("signin_links")
    op.drop_table("console_sessions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_hash")

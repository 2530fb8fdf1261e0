"""Upstream deployment arms, encrypted upstream keys, shadow traffic (issue 17).

``upstream_endpoints`` (immutable; the API key only as Fernet ciphertext); on
``deployments`` the upstream primary/canary arm, the shadow arm and its share,
and per-model prices; on ``traces`` the upstream that answered, the cost in
micro minor units, what went wrong on a failed call, and the trace a shadow
call shadowed.

Revision ID: 0017_upstream
Revises: 0016_run_watch
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017_upstream"
down_revision: str | None = "0016_run_watch"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def _org_id(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=f"fk_{table}_org_id_organisations"),
    ]


_DEPLOYMENT_REFS = (
    ("upstream_id", "upstream_endpoints"),
    ("canary_upstream_id", "upstream_endpoints"),
    ("shadow_version_id", "adapter_versions"),
    ("shadow_upstream_id", "upstream_endpoints"),
)


def upgrade() -> None:
    op.create_table(
        "upstream_endpoints",
        sa.Column("id", ID, nullable=False),
        sa.Column("base_url", sa.String(length=2000), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("key_ciphertext", sa.Text(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("connect_timeout_s", sa.Float(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        *_org_id("upstream_endpoints"),
        sa.PrimaryKeyConstraint("id", name="pk_upstream_endpoints"),
    )
    op.create_index("ix_upstream_endpoints_org_id", "upstream_endpoints", ["org_id"])
    with op.batch_alter_table("deployments") as batch:
        for column, target in _DEPLOYMENT_REFS:
            batch.add_column(sa.Column(column, ID, nullable=True))
            batch.create_foreign_key(f"fk_deployments_{column}_{target}", target, [column], ["id"])
            batch.create_index(f"ix_deployments_{column}", [column])
        batch.add_column(sa.Column("shadow_percent", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("prices", JSON, nullable=False, server_default="{}"))
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("upstream_id", ID, nullable=True))
        batch.create_foreign_key("fk_traces_upstream_id_upstream_endpoints", "upstream_endpoints", ["upstream_id"],
                                 ["id"])
        batch.create_index("ix_traces_upstream_id", ["upstream_id"])
        batch.add_column(sa.Column("cost_micro", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("error", JSON, nullable=True))
        batch.add_column(sa.Column("shadow_of", sa.String(length=40), nullable=True))
        batch.create_index("ix_traces_shadow_of", ["shadow_of"])


def downgrade() -> None:
    with op.batch_alter_table("traces") as batch:
        batch.drop_index("ix_traces_shadow_of")
        batch.drop_index("ix_traces_upstream_id")
        batch.drop_constraint("fk_traces_upstream_id_upstream_endpoints", type_="foreignkey")
        for column in ("shadow_of", "error", "cost_micro", "upstream_id"):
            batch.drop_column(column)
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("prices")
        batch.drop_column("shadow_percent")
        for column, target in reversed(_DEPLOYMENT_REFS):
            batch.drop_index(f"ix_deployments_{column}")
            batch.drop_constraint(f"fk_deployments_{column}_{target}", type_="foreignkey")
            batch.drop_column(column)
    op.drop_index("ix_upstream_endpoints_org_id", table_name="upstream_endpoints")
    op.drop_table("upstream_endpoints")

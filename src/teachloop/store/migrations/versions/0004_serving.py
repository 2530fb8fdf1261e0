"""Serving: adapter versions, deployments and their change history, traces and feedback.

Revision ID: 0004_serving
Revises: 0003_training_runs
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_serving"
down_revision: str | None = "0003_training_runs"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _org(table: str) -> list[Any]:
    return [
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=f"fk_{table}_org_id_organisations"),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
    ]


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}")


def _indexes(table: str, *columns: str) -> None:
    for column in ("org_id", *columns):
        op.create_index(f"ix_{table}_{column}", table, [column])


def upgrade() -> None:
    op.create_table(
        "adapter_versions",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("blob_key", sa.String(length=300), nullable=False),
        sa.Column("base_model", sa.String(length=300), nullable=False),
        sa.Column("source_run_id", ID, nullable=True),
        sa.Column("info", JSON, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        *_org("adapter_versions"),
        _fk("adapter_versions", "source_run_id", "training_runs"),
        sa.UniqueConstraint("org_id", "name", "version", name="uq_adapter_versions_org_id_name_version"),
    )
    _indexes("adapter_versions", "source_run_id")
    op.create_index("ix_adapter_versions_org_digest", "adapter_versions", ["org_id", "digest"])

    op.create_table(
        "deployments",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("base_model", sa.String(length=300), nullable=False),
        sa.Column("adapter_version_id", ID, nullable=True),
        sa.Column("canary_version_id", ID, nullable=True),
        sa.Column("canary_percent", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *_org("deployments"),
        _fk("deployments", "adapter_version_id", "adapter_versions"),
        _fk("deployments", "canary_version_id", "adapter_versions"),
        sa.UniqueConstraint("org_id", "name", name="uq_deployments_org_id_name"),
    )
    _indexes("deployments", "adapter_version_id", "canary_version_id")

    op.create_table(
        "deployment_changes",
        sa.Column("id", ID, nullable=False),
        sa.Column("deployment_id", ID, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("restored_from", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", TS, nullable=False),
        *_org("deployment_changes"),
        _fk("deployment_changes", "deployment_id", "deployments"),
        sa.UniqueConstraint("deployment_id", "revision", name="uq_deployment_changes_deployment_id_revision"),
    )
    _indexes("deployment_changes", "deployment_id")

    op.create_table(
        "traces",
        sa.Column("id", ID, nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("deployment_id", ID, nullable=True),
        sa.Column("deployment_revision", sa.Integer(), nullable=True),
        sa.Column("arm", sa.String(length=10), nullable=True),
        sa.Column("adapter_version_id", ID, nullable=True),
        sa.Column("base_model", sa.String(length=300), nullable=False),
        sa.Column("messages", JSON, nullable=False),
        sa.Column("tools", JSON, nullable=True),
        sa.Column("choices", JSON, nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("finish_reason", sa.String(length=20), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("user", sa.String(length=256), nullable=True),
        sa.Column("request_metadata", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        *_org("traces"),
        _fk("traces", "deployment_id", "deployments"),
        _fk("traces", "adapter_version_id", "adapter_versions"),
    )
    _indexes("traces", "deployment_id", "adapter_version_id")
    op.create_index("ix_traces_org_created", "traces", ["org_id", "created_at"])
    op.create_index("ix_traces_org_model_created", "traces", ["org_id", "model", "created_at"])

    op.create_table(
        "feedback",
        sa.Column("id", ID, nullable=False),
        sa.Column("trace_id", ID, nullable=False),
        sa.Column("choice_index", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("corrected_output", JSON, nullable=True),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        *_org("feedback"),
        _fk("feedback", "trace_id", "traces"),
    )
    _indexes("feedback", "trace_id")
    op.create_index("ix_feedback_org_created", "feedback", ["org_id", "created_at"])


def downgrade() -> None:
    for table in ("feedback", "traces", "deployment_changes", "deployments", "adapter_versions"):
        op.drop_table(table)

"""The loop: dataset snapshots with row lineage, loops, their iterations, and grader scores of traffic.

Revision ID: 0005_datasets_loops
Revises: 0004_serving
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_datasets_loops"
down_revision: str | None = "0004_serving"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
DIGEST = sa.String(length=71)


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
        "datasets",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("digest", DIGEST, nullable=False),
        sa.Column("blob_key", sa.String(length=300), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("split_counts", JSON, nullable=False),
        sa.Column("licenses", JSON, nullable=False),
        sa.Column("source", JSON, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        *_org("datasets"),
        sa.UniqueConstraint("org_id", "name", "version", name="uq_datasets_org_id_name_version"),
    )
    _indexes("datasets")
    op.create_index("ix_datasets_org_digest", "datasets", ["org_id", "digest"])

    op.create_table(
        "dataset_rows",
        sa.Column("id", ID, nullable=False),
        sa.Column("dataset_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=10), nullable=False),
        sa.Column("content", JSON, nullable=False),
        sa.Column("content_hash", DIGEST, nullable=False),
        sa.Column("source_kind", sa.String(length=20), nullable=False),
        sa.Column("source_trace_id", ID, nullable=True),
        sa.Column("source_row_id", ID, nullable=True),
        sa.Column("expert_id", sa.String(length=200), nullable=True),
        sa.Column("env_ref", sa.String(length=300), nullable=True),
        sa.Column("env_version", sa.String(length=100), nullable=True),
        sa.Column("env_digest", DIGEST, nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("license", sa.String(length=100), nullable=False),
        *_org("dataset_rows"),
        _fk("dataset_rows", "dataset_id", "datasets"),
        _fk("dataset_rows", "source_trace_id", "traces"),
        _fk("dataset_rows", "source_row_id", "dataset_rows"),
        sa.UniqueConstraint("dataset_id", "position", name="uq_dataset_rows_dataset_id_position"),
    )
    _indexes("dataset_rows", "dataset_id", "source_trace_id", "source_row_id")

    op.create_table(
        "loops",
        sa.Column("id", ID, nullable=False),
        sa.Column("deployment_id", ID, nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("config_digest", DIGEST, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("phase", sa.String(length=10), nullable=False),
        sa.Column("active_iteration_id", ID, nullable=True),
        sa.Column("cursor", TS, nullable=True),
        sa.Column("scored_until", TS, nullable=True),
        sa.Column("last_tick_at", TS, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *_org("loops"),
        _fk("loops", "deployment_id", "deployments"),
        sa.UniqueConstraint("org_id", "deployment_id", name="uq_loops_org_id_deployment_id"),
    )
    _indexes("loops", "deployment_id")

    op.create_table(
        "loop_iterations",
        sa.Column("id", ID, nullable=False),
        sa.Column("loop_id", ID, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=300), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("dataset_id", ID, nullable=True),
        sa.Column("dataset_digest", DIGEST, nullable=True),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("baseline_version_id", ID, nullable=True),
        sa.Column("candidate_version_id", ID, nullable=True),
        sa.Column("gate", JSON, nullable=False),
        sa.Column("canary", JSON, nullable=False),
        sa.Column("revisions", JSON, nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *_org("loop_iterations"),
        _fk("loop_iterations", "loop_id", "loops"),
        _fk("loop_iterations", "dataset_id", "datasets"),
        _fk("loop_iterations", "run_id", "training_runs"),
        _fk("loop_iterations", "baseline_version_id", "adapter_versions"),
        _fk("loop_iterations", "candidate_version_id", "adapter_versions"),
        sa.UniqueConstraint("loop_id", "number", name="uq_loop_iterations_loop_id_number"),
    )
    _indexes("loop_iterations", "loop_id", "dataset_id", "run_id", "baseline_version_id", "candidate_version_id")

    op.create_table(
        "trace_scores",
        sa.Column("id", ID, nullable=False),
        sa.Column("loop_id", ID, nullable=False),
        sa.Column("trace_id", ID, nullable=False),
        sa.Column("trace_created_at", TS, nullable=False),
        sa.Column("adapter_version_id", ID, nullable=True),
        sa.Column("arm", sa.String(length=10), nullable=True),
        sa.Column("env_ref", sa.String(length=300), nullable=False),
        sa.Column("env_digest", DIGEST, nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        *_org("trace_scores"),
        _fk("trace_scores", "loop_id", "loops"),
        _fk("trace_scores", "trace_id", "traces"),
        sa.UniqueConstraint("loop_id", "trace_id", name="uq_trace_scores_loop_id_trace_id"),
    )
    _indexes("trace_scores", "loop_id", "trace_id")
    op.create_index("ix_trace_scores_loop_created", "trace_scores", ["loop_id", "trace_created_at"])


def downgrade() -> None:
    for table in ("trace_scores", "loop_iterations", "loops", "dataset_rows", "datasets"):
        op.drop_table(table)

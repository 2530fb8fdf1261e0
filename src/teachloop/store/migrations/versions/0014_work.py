"""The expert workforce (``store.schema.work``): projects, templates, items, assignments, answers, reviews, exams, pay.

Revision ID: 0014_work
Revises: 0013_requests_billing
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014_work"
down_revision: str | None = "0013_requests_billing"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "work_exams",
        sa.Column("id", ID, nullable=False),
        sa.Column("skill", sa.String(length=100), nullable=False),
        sa.Column("questions", JSON, nullable=False),
        sa.Column("pass_score", sa.Float(), nullable=False),
        sa.Column("cooldown_s", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name="fk_work_exams_org_id_organisations"),
        sa.PrimaryKeyConstraint("id", name="pk_work_exams"),
        sa.UniqueConstraint("org_id", "skill", name="uq_work_exams_org_id_skill"),
    )
    op.create_index("ix_work_exams_org_id", "work_exams", ["org_id"], unique=False)
    op.create_table(
        "work_experts",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("handle", sa.String(length=100), nullable=False),
        sa.Column("skills", JSON, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("pause_reason", sa.String(length=1000), nullable=True),
        sa.Column("paused_project_id", ID, nullable=True),
        sa.Column("org_id", ID, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_work_experts_org_id_organisations"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_work_experts_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_work_experts"),
        sa.UniqueConstraint("org_id", "user_id", name="uq_work_experts_org_id_user_id"),
    )
    op.create_index("ix_work_experts_org_id", "work_experts", ["org_id"], unique=False)
    op.create_index("ix_work_experts_user_id", "work_experts", ["user_id"], unique=False)
    op.create_table(
        "work_projects",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("task_type", sa.String(length=20), nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("source", JSON, nullable=False),
        sa.Column("fulfils", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_work_projects_org_id_organisations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_work_projects"),
        sa.UniqueConstraint("org_id", "name", name="uq_work_projects_org_id_name"),
    )
    op.create_index("ix_work_projects_org_id", "work_projects", ["org_id"], unique=False)
    op.create_table(
        "work_exam_attempts",
        sa.Column("id", ID, nullable=False),
        sa.Column("exam_id", ID, nullable=False),
        sa.Column("expert_id", ID, nullable=False),
        sa.Column("answers", JSON, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["exam_id"], ["work_exams.id"], name="fk_work_exam_attempts_exam_id_work_exams"
        ),
        sa.ForeignKeyConstraint(["expert_id"], ["users.id"], name="fk_work_exam_attempts_expert_id_users"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_work_exam_attempts_org_id_organisations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_work_exam_attempts"),
    )
    op.create_index("ix_work_exam_attempts_exam_id", "work_exam_attempts", ["exam_id"], unique=False)
    op.create_index("ix_work_exam_attempts_expert_id", "work_exam_attempts", ["expert_id"], unique=False)
    op.create_index("ix_work_exam_attempts_org_id", "work_exam_attempts", ["org_id"], unique=False)
    op.create_table(
        "work_items",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("gold_answer", JSON, nullable=True),
        sa.Column("source_trace_id", ID, nullable=True),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name="fk_work_items_org_id_organisations"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["work_projects.id"], name="fk_work_items_project_id_work_projects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_work_items"),
        sa.UniqueConstraint("project_id", "source_trace_id", name="uq_work_items_project_id_source_trace_id"),
    )
    op.create_index("ix_work_items_created_at", "work_items", ["created_at"], unique=False)
    op.create_index("ix_work_items_org_id", "work_items", ["org_id"], unique=False)
    op.create_index("ix_work_items_project_id", "work_items", ["project_id"], unique=False)
    op.create_table(
        "work_pay_periods",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("period", ID, nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("topups", JSON, nullable=False),
        sa.Column("closed_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_work_pay_periods_org_id_organisations"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["work_projects.id"], name="fk_work_pay_periods_project_id_work_projects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_work_pay_periods"),
        sa.UniqueConstraint("project_id", "period", name="uq_work_pay_periods_project_id_period"),
    )
    op.create_index("ix_work_pay_periods_org_id", "work_pay_periods", ["org_id"], unique=False)
    op.create_index("ix_work_pay_periods_project_id", "work_pay_periods", ["project_id"], unique=False)
    op.create_table(
        "work_templates",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_work_templates_org_id_organisations"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["work_projects.id"], name="fk_work_templates_project_id_work_projects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_work_templates"),
        sa.UniqueConstraint("project_id", "version", name="uq_work_templates_project_id_version"),
    )
    op.create_index("ix_work_templates_org_id", "work_templates", ["org_id"], unique=False)
    op.create_index("ix_work_templates_project_id", "work_templates", ["project_id"], unique=False)
    op.create_table(
        "work_answers",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("item_id", ID, nullable=False),
        sa.Column("assignment_id", ID, nullable=False),
        sa.Column("expert_id", ID, nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("value", JSON, nullable=False),
        sa.Column("diff", sa.Text(), nullable=True),
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("gold_correct", sa.Boolean(), nullable=True),
        sa.Column("active_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("fixed_value", JSON, nullable=True),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("reviewed_by", sa.String(length=200), nullable=True),
        sa.Column("reviewed_at", TS, nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("earn_entry_id", ID, nullable=True),
        sa.Column("payable_at", TS, nullable=True),
        sa.Column("release_entry_id", ID, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["expert_id"], ["users.id"], name="fk_work_answers_expert_id_users"),
        sa.ForeignKeyConstraint(["item_id"], ["work_items.id"], name="fk_work_answers_item_id_work_items"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_work_answers_org_id_organisations"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["work_projects.id"], name="fk_work_answers_project_id_work_projects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_work_answers"),
        sa.UniqueConstraint("assignment_id", name="uq_work_answers_assignment_id"),
    )
    op.create_index("ix_work_answers_expert_id", "work_answers", ["expert_id"], unique=False)
    op.create_index("ix_work_answers_item_id", "work_answers", ["item_id"], unique=False)
    op.create_index("ix_work_answers_org_id", "work_answers", ["org_id"], unique=False)
    op.create_index("ix_work_answers_project_id", "work_answers", ["project_id"], unique=False)
    op.create_table(
        "work_assignments",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("item_id", ID, nullable=False),
        sa.Column("expert_id", ID, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("leased_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["expert_id"], ["users.id"], name="fk_work_assignments_expert_id_users"),
        sa.ForeignKeyConstraint(
            ["item_id"], ["work_items.id"], name="fk_work_assignments_item_id_work_items"
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_work_assignments_org_id_organisations"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["work_projects.id"], name="fk_work_assignments_project_id_work_projects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_work_assignments"),
    )
    op.create_index("ix_work_assignments_expert_id", "work_assignments", ["expert_id"], unique=False)
    op.create_index("ix_work_assignments_item_id", "work_assignments", ["item_id"], unique=False)
    op.create_index(
        "ix_work_assignments_item_status", "work_assignments", ["item_id", "status"], unique=False
    )
    op.create_index("ix_work_assignments_org_id", "work_assignments", ["org_id"], unique=False)
    op.create_index("ix_work_assignments_project_id", "work_assignments", ["project_id"], unique=False)
    op.create_table(
        "work_disputes",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("item_id", ID, nullable=False),
        sa.Column("answer_id", ID, nullable=False),
        sa.Column("expert_id", ID, nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("resolution", sa.String(length=2000), nullable=True),
        sa.Column("resolved_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["answer_id"], ["work_answers.id"], name="fk_work_disputes_answer_id_work_answers"
        ),
        sa.ForeignKeyConstraint(["expert_id"], ["users.id"], name="fk_work_disputes_expert_id_users"),
        sa.ForeignKeyConstraint(["item_id"], ["work_items.id"], name="fk_work_disputes_item_id_work_items"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name="fk_work_disputes_org_id_organisations"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["work_projects.id"], name="fk_work_disputes_project_id_work_projects"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_work_disputes"),
    )
    op.create_index("ix_work_disputes_answer_id", "work_disputes", ["answer_id"], unique=False)
    op.create_index("ix_work_disputes_expert_id", "work_disputes", ["expert_id"], unique=False)
    op.create_index("ix_work_disputes_item_id", "work_disputes", ["item_id"], unique=False)
    op.create_index("ix_work_disputes_org_id", "work_disputes", ["org_id"], unique=False)
    op.create_index("ix_work_disputes_project_id", "work_disputes", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_table("work_disputes")
    op.drop_table("work_assignments")
    op.drop_table("work_answers")
    op.drop_table("work_templates")
    op.drop_table("work_pay_periods")
    op.drop_table("work_items")
    op.drop_table("work_exam_attempts")
    op.drop_table("work_projects")
    op.drop_table("work_experts")
    op.drop_table("work_exams")

"""The money ledger: accounts, journal entries and postings (``store.schema.ledger``).

Revision ID: 0010_ledger
Revises: 0009_idempotency_keys
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010_ledger"
down_revision: str | None = "0009_idempotency_keys"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.String(length=40)


def _org_id(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("org_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name=f"fk_{table}_org_id_organisations"),
    ]


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("non_negative", sa.Boolean(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_org_id("ledger_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_accounts"),
        sa.UniqueConstraint("org_id", "name", name="uq_ledger_accounts_org_id_name"),
        sa.CheckConstraint(
            "kind IN ('asset', 'liability', 'revenue', 'expense', 'equity')", name="ck_ledger_accounts_kind"
        ),
    )
    op.create_index("ix_ledger_accounts_org_id", "ledger_accounts", ["org_id"])
    op.create_table(
        "ledger_entries",
        sa.Column("id", ID, nullable=False),
        sa.Column("idem_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=71), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("memo", sa.String(length=500), nullable=False),
        sa.Column("reversal_of", ID, nullable=True),
        sa.Column("settles", ID, nullable=True),
        sa.Column(
            "info", sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_org_id("ledger_entries"),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_entries"),
        sa.ForeignKeyConstraint(
            ["reversal_of"], ["ledger_entries.id"], name="fk_ledger_entries_reversal_of_ledger_entries"
        ),
        sa.ForeignKeyConstraint(
            ["settles"], ["ledger_entries.id"], name="fk_ledger_entries_settles_ledger_entries"
        ),
        sa.UniqueConstraint("org_id", "idem_key", name="uq_ledger_entries_org_id_idem_key"),
        sa.UniqueConstraint("reversal_of", name="uq_ledger_entries_reversal_of"),
        sa.UniqueConstraint("settles", name="uq_ledger_entries_settles"),
    )
    op.create_index("ix_ledger_entries_org_id", "ledger_entries", ["org_id"])
    op.create_index("ix_ledger_entries_org_created", "ledger_entries", ["org_id", "created_at"])
    op.create_table(
        "ledger_postings",
        sa.Column("id", ID, nullable=False),
        sa.Column("entry_id", ID, nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        *_org_id("ledger_postings"),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_postings"),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["ledger_entries.id"], name="fk_ledger_postings_entry_id_ledger_entries"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name="fk_ledger_postings_account_id_ledger_accounts"
        ),
        sa.CheckConstraint("amount <> 0", name="ck_ledger_postings_nonzero"),
    )
    op.create_index("ix_ledger_postings_org_id", "ledger_postings", ["org_id"])
    op.create_index("ix_ledger_postings_entry_id", "ledger_postings", ["entry_id"])
    op.create_index("ix_ledger_postings_account_id", "ledger_postings", ["account_id"])


def downgrade() -> None:
    for table, indexes in (
        (
            "ledger_postings",
            ("ix_ledger_postings_account_id", "ix_ledger_postings_entry_id", "ix_ledger_postings_org_id"),
        ),
        ("ledger_entries", ("ix_ledger_entries_org_created", "ix_ledger_entries_org_id")),
        ("ledger_accounts", ("ix_ledger_accounts_org_id",)),
    ):
        for index in indexes:
            op.drop_index(index, table_name=table)
        op.drop_table(table)

"""Refusal per prompt category: each evaluation's refusal rate and logit refusal score on every
category of its harmful, harmless and borderline prompts.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-01 23:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "category_refusals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("subset", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=255), nullable=False),
        sa.Column("prompts", sa.Integer(), nullable=False),
        sa.Column("refusal_rate", sa.Float(), nullable=True),
        sa.Column("refusal_token_probability", sa.Float(), nullable=True),
        sa.Column("refusal_token_logodds", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("evaluation_id", "subset", "category", name="uq_category_refusals_slot"),
    )
    with op.batch_alter_table("category_refusals") as batch:
        batch.create_index(batch.f("ix_category_refusals_evaluation_id"), ["evaluation_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("category_refusals") as batch:
        batch.drop_index(batch.f("ix_category_refusals_evaluation_id"))
    op.drop_table("category_refusals")

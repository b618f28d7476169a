"""Feature contexts: the top-activating probe tokens of every listed feature, at the reference and now.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 20:40:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feature_contexts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("hookpoint", sa.String(length=255), nullable=False),
        sa.Column("feature", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=16), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("subset", sa.String(length=64), nullable=False),
        sa.Column("probe_index", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("left_text", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("right_text", sa.Text(), nullable=False),
        sa.Column("activation", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("evaluation_id", "hookpoint", "feature", "model", "rank", name="uq_feature_contexts_slot"),
    )
    with op.batch_alter_table("feature_contexts") as batch:
        batch.create_index(batch.f("ix_feature_contexts_evaluation_id"), ["evaluation_id"], unique=False)
        batch.create_index("ix_feature_contexts_feature", ["hookpoint", "feature"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feature_contexts") as batch:
        batch.drop_index("ix_feature_contexts_feature")
        batch.drop_index(batch.f("ix_feature_contexts_evaluation_id"))
    op.drop_table("feature_contexts")

"""What a user decides with: each run's last heartbeat, its saved checkpoints, the last safe
checkpoint on critical alerts, and the training-data audit.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-02 09:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_interval_s", sa.Float(), nullable=True))
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("checkpoint", sa.Text(), nullable=True))
        batch.add_column(sa.Column("checkpoint_step", sa.Integer(), nullable=True))
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "step", name="uq_checkpoints_run_step"),
    )
    with op.batch_alter_table("checkpoints") as batch:
        batch.create_index(batch.f("ix_checkpoints_run_id"), ["run_id"], unique=False)
    op.create_table(
        "audit_examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("hookpoint", sa.String(length=255), nullable=False),
        sa.Column("example", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("harmfulness", sa.Float(), nullable=True),
        sa.Column("direction_score", sa.Float(), nullable=True),
        sa.Column("feature_score", sa.Float(), nullable=True),
        sa.Column("target_refuses", sa.Boolean(), nullable=False),
        sa.Column("refusal_probability", sa.Float(), nullable=True),
        sa.Column("erosion_risk", sa.Float(), nullable=True),
        sa.Column("over_refusal_risk", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "hookpoint", "example", name="uq_audit_examples_slot"),
    )
    with op.batch_alter_table("audit_examples") as batch:
        batch.create_index(batch.f("ix_audit_examples_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_examples") as batch:
        batch.drop_index(batch.f("ix_audit_examples_run_id"))
    op.drop_table("audit_examples")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_index(batch.f("ix_checkpoints_run_id"))
    op.drop_table("checkpoints")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("checkpoint_step")
        batch.drop_column("checkpoint")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_interval_s")
        batch.drop_column("heartbeat_at")

"""Journal events by sequence number (exactly once from any set of journals, in any order) and the
journal event behind each evaluation. (The step panels need no new index: they probe the existing
`(run_id, step)` unique index once per run; see `featuredrift bench --store`.)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 10:00:00

"""
import json
from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    journal_events = op.create_table(
        "journal_events",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "seq"),
    )
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("journal_sequence", sa.Integer(), nullable=True))
    # Before this revision a run kept only its last applied sequence: every event up to it was applied.
    runs = sa.table("runs", sa.column("id", sa.Integer()), sa.column("extra", sa.JSON()))
    connection = op.get_bind()
    now = datetime.now(timezone.utc)
    for run_id, extra in connection.execute(sa.select(runs.c.id, runs.c.extra)).all():
        extra = json.loads(extra) if isinstance(extra, str) else (extra or {})
        last = int(extra.get("journal_sequence", 0) or 0)
        if last:
            op.bulk_insert(journal_events, [{"run_id": run_id, "seq": seq, "kind": "unknown", "digest": None,
                                             "step": None, "applied_at": now} for seq in range(1, last + 1)])


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("journal_sequence")
    op.drop_table("journal_events")

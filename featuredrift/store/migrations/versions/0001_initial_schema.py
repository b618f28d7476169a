"""Initial run-store schema: runs, evaluations, metric values, drifted and refusal features, alerts.

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 05:40:06.238748

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('model_fingerprint', sa.String(length=128), nullable=True),
    sa.Column('sae_fingerprint', sa.String(length=128), nullable=True),
    sa.Column('reference_policy', sa.String(length=255), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('timestamp', sa.Float(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('epoch', sa.Float(), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('report', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'step', name='uq_evaluations_run_step')
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluations_run_id'), ['run_id'], unique=False)

    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=True),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('labels', sa.String(length=1024), nullable=False),
    sa.Column('severity', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_run_id'), ['run_id'], unique=False)
        batch_op.create_index('ix_alerts_run_name_status', ['run_id', 'name', 'status'], unique=False)

    op.create_table('drifted_features',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('hookpoint', sa.String(length=255), nullable=False),
    sa.Column('feature', sa.Integer(), nullable=False),
    sa.Column('subset', sa.String(length=64), nullable=False),
    sa.Column('freq_reference', sa.Float(), nullable=True),
    sa.Column('freq_current', sa.Float(), nullable=True),
    sa.Column('mean_reference', sa.Float(), nullable=True),
    sa.Column('mean_current', sa.Float(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('drifted_features', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_drifted_features_evaluation_id'), ['evaluation_id'], unique=False)
        batch_op.create_index('ix_drifted_features_feature', ['hookpoint', 'feature'], unique=False)

    op.create_table('metric_values',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('labels', sa.String(length=1024), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('evaluation_id', 'name', 'labels', name='uq_metric_values_sample')
    )
    with op.batch_alter_table('metric_values', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metric_values_evaluation_id'), ['evaluation_id'], unique=False)
        batch_op.create_index('ix_metric_values_name', ['name'], unique=False)

    op.create_table('refusal_features',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('hookpoint', sa.String(length=255), nullable=False),
    sa.Column('k', sa.Integer(), nullable=False),
    sa.Column('feature', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('diff_in_means', sa.Float(), nullable=True),
    sa.Column('nnls_weight', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('evaluation_id', 'hookpoint', 'k', 'source', 'rank', name='uq_refusal_features_slot')
    )
    with op.batch_alter_table('refusal_features', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refusal_features_evaluation_id'), ['evaluation_id'], unique=False)
        batch_op.create_index('ix_refusal_features_feature', ['hookpoint', 'feature'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('refusal_features', schema=None) as batch_op:
        batch_op.drop_index('ix_refusal_features_feature')
        batch_op.drop_index(batch_op.f('ix_refusal_features_evaluation_id'))

    op.drop_table('refusal_features')
    with op.batch_alter_table('metric_values', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_values_name')
        batch_op.drop_index(batch_op.f('ix_metric_values_evaluation_id'))

    op.drop_table('metric_values')
    with op.batch_alter_table('drifted_features', schema=None) as batch_op:
        batch_op.drop_index('ix_drifted_features_feature')
        batch_op.drop_index(batch_op.f('ix_drifted_features_evaluation_id'))

    op.drop_table('drifted_features')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('ix_alerts_run_name_status')
        batch_op.drop_index(batch_op.f('ix_alerts_run_id'))

    op.drop_table('alerts')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_run_id'))

    op.drop_table('evaluations')
    op.drop_table('runs')

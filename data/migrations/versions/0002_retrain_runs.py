"""retrain runs and votes

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import data.models

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'retrain_runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('slot', sa.Integer(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('proposed_by', sa.BigInteger(), nullable=True),
        sa.Column('summary', sa.JSON(), nullable=False),
        sa.Column('guild_id', sa.BigInteger(), nullable=True),
        sa.Column('channel_id', sa.BigInteger(), nullable=True),
        sa.Column('message_id', sa.BigInteger(), nullable=True),
        sa.Column('status_message_id', sa.BigInteger(), nullable=True),
        sa.Column('expires_at', data.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('reminded_at', data.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('snapshot_sha256', sa.String(length=64), nullable=True),
        sa.Column('snapshot_path', sa.Text(), nullable=True),
        sa.Column('model_version_id', sa.Integer(), nullable=True),
        sa.Column('dispatcher', sa.String(length=16), nullable=True),
        sa.Column('job_ref', sa.String(length=200), nullable=True),
        sa.Column('progress', sa.JSON(), nullable=False),
        sa.Column('result', sa.JSON(), nullable=False),
        sa.Column('created_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('started_at', data.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('finished_at', data.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('slot'),
    )
    op.create_index(op.f('ix_retrain_runs_state'), 'retrain_runs', ['state'], unique=False)
    op.create_table(
        'retrain_votes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('stage', sa.String(length=16), nullable=False),
        sa.Column('approve', sa.Boolean(), nullable=False),
        sa.Column('created_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['retrain_runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_id', 'user_id', 'stage', name='uq_retrain_vote'),
    )
    op.create_index(op.f('ix_retrain_votes_run_id'), 'retrain_votes', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_retrain_votes_run_id'), table_name='retrain_votes')
    op.drop_table('retrain_votes')
    op.drop_index(op.f('ix_retrain_runs_state'), table_name='retrain_runs')
    op.drop_table('retrain_runs')

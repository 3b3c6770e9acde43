"""quality: blind comparisons and their votes, regression alerts raised

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

import data.models

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'comparisons',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('candidate_version_id', sa.Integer(), nullable=True),
        sa.Column('candidate_tag', sa.String(length=200), nullable=False),
        sa.Column('opponent_tag', sa.String(length=200), nullable=False),
        sa.Column('items', sa.JSON(), nullable=False),
        sa.Column('channel_id', sa.BigInteger(), nullable=True),
        sa.Column('message_id', sa.BigInteger(), nullable=True),
        sa.Column('created_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['retrain_runs.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['candidate_version_id'], ['model_versions.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_comparisons_run_id'), 'comparisons', ['run_id'], unique=False)
    op.create_table(
        'comparison_votes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('comparison_id', sa.Integer(), nullable=False),
        sa.Column('item', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('choice', sa.String(length=8), nullable=False),
        sa.Column('created_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['comparison_id'], ['comparisons.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('comparison_id', 'item', 'user_id', name='uq_comparison_vote'),
    )
    op.create_index(op.f('ix_comparison_votes_comparison_id'), 'comparison_votes', ['comparison_id'], unique=False)
    op.create_table(
        'quality_alerts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('model_version_id', sa.Integer(), nullable=False),
        sa.Column('compared_with', sa.String(length=200), nullable=False),
        sa.Column('details', sa.JSON(), nullable=False),
        sa.Column('created_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('model_version_id'),
    )


def downgrade() -> None:
    op.drop_table('quality_alerts')
    op.drop_index(op.f('ix_comparison_votes_comparison_id'), table_name='comparison_votes')
    op.drop_table('comparison_votes')
    op.drop_index(op.f('ix_comparisons_run_id'), table_name='comparisons')
    op.drop_table('comparisons')

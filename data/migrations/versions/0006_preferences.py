"""preferences: chosen/rejected answer records (from corrections and imports) and their ratings

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

import data.models

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'preference_records',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('content_hash', sa.String(length=64), nullable=False),
        sa.Column('prompt', sa.JSON(), nullable=False),
        sa.Column('chosen', sa.JSON(), nullable=False),
        sa.Column('rejected', sa.JSON(), nullable=False),
        sa.Column('tags', sa.JSON(), nullable=False),
        sa.Column('tools', sa.Text(), nullable=True),
        sa.Column('source', sa.String(length=32), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('rejected_model', sa.String(length=200), nullable=True),
        sa.Column('rejected_version_id', sa.Integer(), nullable=True),
        sa.Column('answer_id', sa.Integer(), nullable=True),
        sa.Column('example_id', sa.Integer(), nullable=True),
        sa.Column('author_id', sa.BigInteger(), nullable=True),
        sa.Column('guild_id', sa.BigInteger(), nullable=True),
        sa.Column('created_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('approved_at', data.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['rejected_version_id'], ['model_versions.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['answer_id'], ['answers.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['example_id'], ['examples.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('content_hash'),
        sa.UniqueConstraint('example_id'),
    )
    op.create_index(op.f('ix_preference_records_status'), 'preference_records', ['status'], unique=False)
    op.create_table(
        'preference_ratings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('preference_id', sa.Integer(), nullable=False),
        sa.Column('rater_id', sa.BigInteger(), nullable=False),
        sa.Column('score', sa.Integer(), nullable=False),
        sa.Column('created_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['preference_id'], ['preference_records.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('preference_id', 'rater_id', name='uq_preference_rating'),
    )
    op.create_index(op.f('ix_preference_ratings_preference_id'), 'preference_ratings', ['preference_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_preference_ratings_preference_id'), table_name='preference_ratings')
    op.drop_table('preference_ratings')
    op.drop_index(op.f('ix_preference_records_status'), table_name='preference_records')
    op.drop_table('preference_records')

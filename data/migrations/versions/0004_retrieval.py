"""example_vectors: embeddings of approved pairs for retrieval, one row per example and embedding model

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

import data.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keyed by model as well: switching embed_model back and forth keeps both sets instead of re-embedding.
    op.create_table(
        'example_vectors',
        sa.Column('example_id', sa.Integer(), nullable=False),
        sa.Column('model', sa.String(length=200), nullable=False),
        sa.Column('dim', sa.Integer(), nullable=False),
        sa.Column('vector', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['example_id'], ['examples.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('example_id', 'model'),
    )


def downgrade() -> None:
    op.drop_table('example_vectors')

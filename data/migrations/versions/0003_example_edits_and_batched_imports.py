"""examples: superseded_by (the edit that replaced one), import_batch; pending_imports (imports being written)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

import data.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain nullable columns: SQLite adds them in place (no table copy), however many examples there are.
    op.add_column('examples', sa.Column('superseded_by', sa.Integer(), nullable=True))
    op.add_column('examples', sa.Column('import_batch', sa.String(length=32), nullable=True))
    op.create_table(
        'pending_imports',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('started_at', data.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    # The rows of imports that never finished go with the table that hides them.
    op.execute("DELETE FROM examples WHERE import_batch IN (SELECT id FROM pending_imports)")
    op.drop_table('pending_imports')
    with op.batch_alter_table('examples', schema=None) as batch_op:
        batch_op.drop_column('import_batch')
        batch_op.drop_column('superseded_by')

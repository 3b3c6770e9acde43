"""preference_records: import_batch (preference files are imported in hidden batches, like pairs)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain nullable column: SQLite adds it in place (no table copy).
    op.add_column('preference_records', sa.Column('import_batch', sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM preference_records WHERE import_batch IN (SELECT id FROM pending_imports)")
    with op.batch_alter_table('preference_records') as batch:
        batch.drop_column('import_batch')

"""communities: every row that holds knowledge or judgement belongs to one community

Adds a ``community`` column to examples, answers, preference records, snapshots, model versions, the active-model
pointers (one per community), promotions, retrain runs and comparisons; a conversation is unique per community,
one run slot is open per community. Existing rows keep NULL here: Store.assign_communities gives them their
community from the settings (the guild they were taught in) when the bot or the CLI next opens the store.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# (table, indexed): each gets a nullable community column.
_TABLES = (("examples", True), ("answers", True), ("preference_records", True), ("snapshots", False),
           ("model_versions", True), ("active_model", False), ("promotions", True), ("retrain_runs", True),
           ("comparisons", False))
# (table, the old single-column unique constraint, the new one per community)
_UNIQUE = (("examples", "content_hash", "uq_examples_community_hash"),
           ("preference_records", "content_hash", "uq_preference_records_community_hash"),
           ("retrain_runs", "slot", "uq_retrain_runs_community_slot"))


def upgrade() -> None:
    for table, indexed in _TABLES:
        # A plain nullable column: SQLite adds it in place.
        op.add_column(table, sa.Column('community', sa.String(length=40), nullable=True))
        if indexed:
            op.create_index(op.f(f'ix_{table}_community'), table, ['community'], unique=False)
    if op.get_bind().dialect.name == 'sqlite':
        _sqlite_unique('active_model', None, 'uq_active_model_community', ['community'])
    else:
        op.create_unique_constraint('uq_active_model_community', 'active_model', ['community'])
    for table, column, new in _UNIQUE:
        _swap_unique(table, [column], new, ['community', column])


def downgrade() -> None:
    for table, column, new in reversed(_UNIQUE):
        _swap_unique(table, ['community', column], None, [column], old_name=new)
    if op.get_bind().dialect.name == 'sqlite':
        _sqlite_unique('active_model', 'uq_active_model_community', None, [])
    else:
        op.drop_constraint('uq_active_model_community', 'active_model', type_='unique')
    for table, indexed in reversed(_TABLES):
        if indexed:
            op.drop_index(op.f(f'ix_{table}_community'), table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column('community')


def _swap_unique(table: str, old: list[str], new_name: str | None, new: list[str], old_name: str | None = None
                 ) -> None:
    """Replace the unique constraint on ``old`` columns by one named ``new_name`` on ``new`` (None: unnamed)."""
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        _sqlite_unique(table, old_name or f'uq_{table}_{old[0]}', new_name or f'uq_{table}_{new[0]}', new)
        return
    name = old_name or next(uc['name'] for uc in sa.inspect(bind).get_unique_constraints(table)
                            if uc['column_names'] == old)
    if name is None:
        raise RuntimeError(f"{table}'s unique constraint on {old} has no name")
    op.drop_constraint(name, table, type_='unique')
    op.create_unique_constraint(new_name, table, new)


def _sqlite_unique(table: str, drop: str | None, add: str | None, columns: list[str]) -> None:
    """SQLite changes constraints by copying the table; the naming convention names the unnamed constraints that
    reflection finds (the first schema's ``UNIQUE (content_hash)``), so they can be dropped by name."""
    convention = {'uq': 'uq_%(table_name)s_%(column_0_name)s'}
    with op.batch_alter_table(table, recreate='always', naming_convention=convention) as batch:
        if drop is not None:
            batch.drop_constraint(drop, type_='unique')
        if add is not None:
            batch.create_unique_constraint(add, columns)

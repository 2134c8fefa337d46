"""the state checks as ORed equalities: SQLite evaluated their IN lists at 1.5-2.5 us a row

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# (table, column): the values allowed, as 0001 wrote them (a migration does not follow the models)
CHECKS = {
    ('datasets', 'state'): ('OPEN', 'CLOSED', 'TO_UPLOAD', 'TO_DELETE', 'DELETED'),
    ('file_problems', 'problem'): ('missing', 'dark', 'mismatch'),
    ('runs', 'state'): ('running', 'succeeded', 'failed', 'cancelled'),
    ('tasks', 'state'): ('defined', 'queued', 'running', 'succeeded', 'failed', 'retrying', 'cancelled', 'lost'),
    ('jobs', 'state'): ('defined', 'queued', 'running', 'succeeded', 'failed', 'retrying', 'cancelled', 'lost'),
    ('files', 'state'): ('AVAILABLE', 'MISSING', 'CORRUPT', 'DELETED'),
}


def _rewrite(condition) -> None:
    for (table, column), names in CHECKS.items():
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f'ck_{table}_{column}'), type_='check')
            batch.create_check_constraint(op.f(f'ck_{table}_{column}'), condition(column, names))


def upgrade() -> None:
    _rewrite(lambda column, names: ' OR '.join(f"{column} = '{n}'" for n in names))


def downgrade() -> None:
    _rewrite(lambda column, names: f"{column} IN ({', '.join(repr(n) for n in names)})")

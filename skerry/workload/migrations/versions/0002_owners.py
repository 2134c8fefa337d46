"""dataset names per owner; workflows have an owner

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.drop_constraint(op.f('uq_datasets_name'), type_='unique')
        batch.create_unique_constraint(op.f('uq_datasets_owner'), ['owner', 'name'])
    with op.batch_alter_table('workflows') as batch:
        # workflows added before owners existed start runs over ownerless datasets only
        batch.add_column(sa.Column('owner', sa.String(length=255), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('workflows') as batch:
        batch.drop_column('owner')
    with op.batch_alter_table('datasets') as batch:
        batch.drop_constraint(op.f('uq_datasets_owner'), type_='unique')
        batch.create_unique_constraint(op.f('uq_datasets_name'), ['name'])

"""a dataset's files in id order: an index on (dataset_id, id)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the planner reads a dataset's files a page at a time in id order: without it, each page
    # read every file of the dataset through (dataset_id, uri) and sorted them
    op.create_index(op.f('ix_files_dataset_id_id'), 'files', ['dataset_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_files_dataset_id_id'), table_name='files')

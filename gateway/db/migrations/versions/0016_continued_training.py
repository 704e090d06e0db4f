"""continued training: a job's lineage and an adapter's parent

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("fine_tuning_jobs", sa.Column("lineage", sa.JSON()))
    op.add_column("adapters", sa.Column("parent", sa.String(256)))


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("parent")
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("lineage")

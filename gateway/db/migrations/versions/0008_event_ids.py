"""fine-tuning events get random public ids (``ftevent-`` + 24 hex) instead of showing the table's global sequence

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_events") as batch:
        batch.add_column(sa.Column("public_id", sa.String(40)))
    random_hex = (
        "substr(md5(random()::text || id::text), 1, 24)"
        if op.get_bind().dialect.name == "postgresql"
        else "lower(hex(randomblob(12)))"
    )
    op.execute(f"UPDATE fine_tuning_events SET public_id = 'ftevent-' || {random_hex}")
    with op.batch_alter_table("fine_tuning_events") as batch:
        batch.alter_column("public_id", existing_type=sa.String(40), nullable=False)
    op.create_index("ux_fine_tuning_events_public_id", "fine_tuning_events", ["public_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_fine_tuning_events_public_id", "fine_tuning_events")
    with op.batch_alter_table("fine_tuning_events") as batch:
        batch.drop_column("public_id")

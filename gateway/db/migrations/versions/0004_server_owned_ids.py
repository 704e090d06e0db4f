"""server-owned request ids in the ledger (unique), the client's id beside them, storage quotas, and the
budget reservation of fine-tuning jobs

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("client_request_id", sa.String(128)))
    # Before this revision the ledger's request id could be the client's and repeat: keep it as the client's id
    # and give every old row a unique one.
    op.execute(
        "UPDATE usage_records SET client_request_id = request_id, request_id = 'legacy_' || CAST(id AS VARCHAR(20))"
    )
    op.create_index("ux_usage_request_id", "usage_records", ["request_id"], unique=True)
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("max_storage_bytes", sa.BigInteger()))
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("reserved_cost_nanos", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("budget_released_at", sa.DateTime()))
    op.execute("UPDATE fine_tuning_jobs SET budget_released_at = settled_at")


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("budget_released_at")
        batch.drop_column("reserved_cost_nanos")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_storage_bytes")
    op.drop_index("ux_usage_request_id", "usage_records")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("client_request_id")

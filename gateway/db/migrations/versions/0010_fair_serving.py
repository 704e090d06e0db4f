"""fair and cheap serving: cached prompt tokens in the ledger, per-tenant scheduling weight and batch limits, a
priority class per key; which key made a key (revoking a key revokes the keys it made)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("cached_tokens", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("usage_daily") as batch:
        batch.add_column(sa.Column("cached_tokens", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("scheduling_weight", sa.Integer()))
        batch.add_column(sa.Column("max_batch_requests", sa.Integer()))
        batch.add_column(sa.Column("max_enqueued_batch_tokens", sa.BigInteger()))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("priority_class", sa.String(16), nullable=False, server_default="interactive"))
        batch.add_column(sa.Column("created_by_key_id", sa.String(40)))
        batch.create_index("ix_api_keys_created_by_key_id", ["created_by_key_id"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_created_by_key_id")
        batch.drop_column("created_by_key_id")
        batch.drop_column("priority_class")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_enqueued_batch_tokens")
        batch.drop_column("max_batch_requests")
        batch.drop_column("scheduling_weight")
    with op.batch_alter_table("usage_daily") as batch:
        batch.drop_column("cached_tokens")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("cached_tokens")

"""stored chat completions (``store: true``), the tenant setting that forbids them, and evals over them

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("completion", sa.JSON(), nullable=False),
        sa.Column("user_metadata", sa.JSON()),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_stored_completions_tenant_created", "stored_completions", ["tenant_id", "created_at"])
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("store_completions", sa.Boolean()))
    with op.batch_alter_table("evals") as batch:
        batch.add_column(sa.Column("stored_completions", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("evals") as batch:
        batch.drop_column("stored_completions")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("store_completions")
    op.drop_index("ix_stored_completions_tenant_created", "stored_completions")
    op.drop_table("stored_completions")

"""batches (the Batch API) and their requests

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("input_file_id", sa.String(40), nullable=False),
        sa.Column("completion_window", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("errors", sa.JSON()),
        sa.Column("output_file_id", sa.String(40)),
        sa.Column("error_file_id", sa.String(40)),
        sa.Column("user_metadata", sa.JSON()),
        sa.Column("enqueued_tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        *(
            sa.Column(f"{moment}_at", sa.DateTime())
            for moment in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
        ),
        sa.Column("runner_id", sa.String(64)),
        sa.Column("heartbeat_at", sa.DateTime()),
    )
    op.create_index("ix_batches_tenant_created", "batches", ["tenant_id", "created_at"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_requests",
        sa.Column("id", _BIGINT_ID, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(40), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(512), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("response", sa.JSON()),
        sa.Column("error", sa.JSON()),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime()),
    )
    op.create_index("ix_batch_requests_batch_line", "batch_requests", ["batch_id", "line"])
    op.create_index("ux_batch_requests_request_id", "batch_requests", ["request_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_batch_requests_request_id", "batch_requests")
    op.drop_index("ix_batch_requests_batch_line", "batch_requests")
    op.drop_table("batch_requests")
    op.drop_index("ix_batches_status", "batches")
    op.drop_index("ix_batches_tenant_created", "batches")
    op.drop_table("batches")

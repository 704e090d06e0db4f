"""service minutes: each gateway's requests per minute, merged into the service page's rolling windows

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_minutes",
        sa.Column("gateway_id", sa.String(40), primary_key=True),
        sa.Column("minute", sa.BigInteger(), primary_key=True),
        sa.Column("counts", sa.JSON(), nullable=False),
    )
    op.create_index("ix_service_minutes_minute", "service_minutes", ["minute"])


def downgrade() -> None:
    op.drop_index("ix_service_minutes_minute", "service_minutes")
    op.drop_table("service_minutes")

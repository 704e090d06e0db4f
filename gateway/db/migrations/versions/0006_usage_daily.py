"""the ledger summed per tenant, day, key, model and kind (usage_daily), filled from the ledger so far

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Numeric(24, 9), nullable=False),
    )
    day = (
        "to_char(created_at, 'YYYY-MM-DD')"
        if op.get_bind().dialect.name == "postgresql"
        else "strftime('%Y-%m-%d', created_at)"
    )
    op.execute(
        "INSERT INTO usage_daily (tenant_id, day, key_id, model, kind, requests, prompt_tokens, completion_tokens, "
        f"cost) SELECT tenant_id, {day}, coalesce(key_id, ''), model, kind, count(*), sum(prompt_tokens), "
        f"sum(completion_tokens), coalesce(sum(cost), 0) FROM usage_records "
        f"GROUP BY tenant_id, {day}, coalesce(key_id, ''), model, kind"
    )


def downgrade() -> None:
    op.drop_table("usage_daily")

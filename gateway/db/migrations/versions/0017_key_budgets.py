"""keys as operators expect: per-key monthly token and cost budgets, and when each key was last used

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("monthly_token_budget", sa.BigInteger()))
        batch.add_column(sa.Column("monthly_cost_budget", sa.Numeric(20, 9)))
        batch.add_column(sa.Column("last_used_at", sa.DateTime()))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("monthly_cost_budget")
        batch.drop_column("monthly_token_budget")

"""stored responses of /v1/responses and their input items

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("previous_response_id", sa.String(64)),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_responses_tenant_created", "responses", ["tenant_id", "created_at"])
    op.create_table(
        "response_input_items",
        sa.Column("id", _BIGINT_ID, primary_key=True, autoincrement=True),
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item", sa.JSON(), nullable=False),
    )
    op.create_index("ix_response_input_items_response_position", "response_input_items", ["response_id", "position"])
    op.create_index("ux_response_input_items_item_id", "response_input_items", ["item_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_response_input_items_item_id", "response_input_items")
    op.drop_index("ix_response_input_items_response_position", "response_input_items")
    op.drop_table("response_input_items")
    op.drop_index("ix_responses_tenant_created", "responses")
    op.drop_table("responses")

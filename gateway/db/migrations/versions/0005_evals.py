"""evals, their runs and the runs' items

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("item_schema", sa.JSON(), nullable=False),
        sa.Column("include_sample_schema", sa.Boolean(), nullable=False),
        sa.Column("testing_criteria", sa.JSON(), nullable=False),
        sa.Column("user_metadata", sa.JSON()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_evals_tenant_created", "evals", ["tenant_id", "created_at"])
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("eval_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("data_source", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.JSON()),
        sa.Column("result_counts", sa.JSON(), nullable=False),
        sa.Column("per_criteria", sa.JSON(), nullable=False),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("user_metadata", sa.JSON()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("runner_id", sa.String(64)),
        sa.Column("heartbeat_at", sa.DateTime()),
    )
    op.create_index("ix_eval_runs_eval_created", "eval_runs", ["eval_id", "created_at"])
    op.create_index("ix_eval_runs_status", "eval_runs", ["status"])
    op.create_table(
        "eval_run_items",
        sa.Column("id", _BIGINT_ID, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item", sa.JSON(), nullable=False),
        sa.Column("given_sample", sa.JSON()),
        sa.Column("sample", sa.JSON()),
        sa.Column("results", sa.JSON()),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_eval_run_items_run_position", "eval_run_items", ["run_id", "position"])


def downgrade() -> None:
    op.drop_index("ix_eval_run_items_run_position", "eval_run_items")
    op.drop_table("eval_run_items")
    op.drop_index("ix_eval_runs_status", "eval_runs")
    op.drop_index("ix_eval_runs_eval_created", "eval_runs")
    op.drop_table("eval_runs")
    op.drop_index("ix_evals_tenant_created", "evals")
    op.drop_table("evals")

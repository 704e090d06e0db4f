"""a fine-tuning job's cancel is final at once: no cancel_requested flag for its worker to find

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A cancel asked before the upgrade is final now: no worker looks for the flag any more. The job's charge for
    # what it trained is settled by the gateway's sweep of final jobs left unsettled.
    jobs = sa.table(
        "fine_tuning_jobs",
        sa.column("status", sa.String),
        sa.column("cancel_requested", sa.Boolean),
        sa.column("finished_at", sa.DateTime),
    )
    op.execute(
        jobs.update()
        .where(jobs.c.cancel_requested.is_(True), jobs.c.status.in_(("validating_files", "queued", "running")))
        .values(status="cancelled", finished_at=sa.func.current_timestamp())
    )
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("cancel_requested")


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))

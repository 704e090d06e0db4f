"""model aliases and their versions (issue 23)

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("gate", sa.JSON()),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ux_model_aliases_tenant_name", "model_aliases", ["tenant_id", "name"], unique=True)
    op.create_table(
        "model_alias_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("alias_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("restores", sa.Integer()),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index(
        "ux_model_alias_versions_alias_version", "model_alias_versions", ["alias_id", "version"], unique=True
    )
    op.create_index("ix_model_alias_versions_tenant", "model_alias_versions", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_model_alias_versions_tenant", "model_alias_versions")
    op.drop_index("ux_model_alias_versions_alias_version", "model_alias_versions")
    op.drop_table("model_alias_versions")
    op.drop_index("ux_model_aliases_tenant_name", "model_aliases")
    op.drop_table("model_aliases")

"""The enforcement workflow (issue 12): incidents, cases, deadlines, the
notification outbox, and the tenants' watch-list flag.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("watch", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "cases",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.BigInteger(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severe", sa.Boolean(), nullable=False),
        sa.Column("strikes_before", sa.Integer(), nullable=False),
        sa.Column("termination_proposed", sa.Boolean(), nullable=False),
        sa.Column("resolution", sa.String(16)),
        sa.Column("effects", sa.Text(), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("warned_at", sa.DateTime()),
        sa.Column("resolved_at", sa.DateTime()),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_cases_tenant_kind_state", "cases", ["tenant_id", "kind", "state"])
    op.create_table(
        "incidents",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("case_id", sa.BigInteger(), sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("harm_confirmed", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("reported_by", sa.String(200), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("sources", sa.Text(), nullable=False),
        sa.Column("ports", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.DateTime(), nullable=False),
        sa.Column("reported_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_incidents_case_id", "incidents", ["case_id"])
    op.create_index("ix_incidents_tenant_id", "incidents", ["tenant_id"])
    op.create_table(
        "deadlines",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("case_id", sa.BigInteger(), sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("actions", sa.Text(), nullable=False),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("done_at", sa.DateTime()),
        sa.Column("done_by", sa.String(200)),
        sa.Column("cancelled_at", sa.DateTime()),
        sa.Column("cancel_reason", sa.Text()),
    )
    op.create_index("ix_deadlines_case_id", "deadlines", ["case_id"])
    op.create_index("ix_deadlines_due", "deadlines", ["done_at", "cancelled_at", "due_at"])
    op.create_table(
        "notifications",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("case_id", sa.BigInteger(), sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(2000), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_until", sa.DateTime()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime()),
    )
    op.create_index("ix_notifications_case_id", "notifications", ["case_id"])
    op.create_index("ix_notifications_due", "notifications", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_notifications_due", table_name="notifications")
    op.drop_index("ix_notifications_case_id", table_name="notifications")
    op.drop_table("notifications")
    op.drop_index("ix_deadlines_due", table_name="deadlines")
    op.drop_index("ix_deadlines_case_id", table_name="deadlines")
    op.drop_table("deadlines")
    op.drop_index("ix_incidents_tenant_id", table_name="incidents")
    op.drop_index("ix_incidents_case_id", table_name="incidents")
    op.drop_table("incidents")
    op.drop_index("ix_cases_tenant_kind_state", table_name="cases")
    op.drop_table("cases")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("watch")

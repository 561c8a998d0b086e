"""The fleet (issue 11): nodes and what each applied, agents' incidents,
evidence manifests and counter summaries.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_nodes",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("cert_serial", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.DateTime()),
        sa.Column("revoke_reason", sa.Text()),
        sa.Column("applied_revision", sa.BigInteger()),
        sa.Column("applied_digest", sa.String(64)),
        sa.Column("acked_at", sa.DateTime()),
        sa.Column("last_seen", sa.DateTime()),
        sa.Column("connected", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("agent_version", sa.String(64)),
        sa.Column("attach_modes", sa.Text()),
        sa.Column("rejected_revision", sa.BigInteger()),
        sa.Column("rejected_reason", sa.String(40)),
        sa.Column("rejected_message", sa.Text()),
        sa.Column("rejected_at", sa.DateTime()),
    )
    op.create_table(
        "fleet_incidents",
        sa.Column("incident_id", sa.String(200), primary_key=True),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("workflow_incident", sa.BigInteger()),
        sa.Column("workflow_note", sa.Text()),
        sa.Column("received_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_fleet_incidents_node", "fleet_incidents", ["node"])
    op.create_table(
        "fleet_evidence",
        sa.Column("evidence_id", sa.String(200), primary_key=True),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("incident_id", sa.String(200), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_fleet_evidence_node", "fleet_evidence", ["node"])
    op.create_table(
        "fleet_counters",
        sa.Column("node", sa.String(63), primary_key=True),
        sa.Column("tenant_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("interval_start", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("counters", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fleet_counters")
    op.drop_index("ix_fleet_evidence_node", table_name="fleet_evidence")
    op.drop_table("fleet_evidence")
    op.drop_index("ix_fleet_incidents_node", table_name="fleet_incidents")
    op.drop_table("fleet_incidents")
    op.drop_table("fleet_nodes")

"""The fleet's tables (migration 0003): the nodes and what each applied,
the incidents and evidence manifests agents reported, and their latest
counter summaries. They share controller.schema's MetaData."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Integer, String, Table, Text, false

from controller.schema import metadata

# One row per node the fleet CA issued a certificate for; what it enforces as it last told us.
nodes = Table(
    "fleet_nodes", metadata,
    Column("name", String(63), primary_key=True),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("cert_serial", String(64), nullable=False),
    Column("revoked_at", DateTime),
    Column("revoke_reason", Text),
    Column("applied_revision", BigInteger),          # acknowledged: applied to its datapath
    Column("applied_digest", String(64)),
    Column("acked_at", DateTime),
    Column("last_seen", DateTime),
    Column("connected", Boolean, nullable=False, server_default=false()),
    Column("agent_version", String(64)),
    Column("attach_modes", Text),                    # JSON {ifname: mode}
    Column("rejected_revision", BigInteger),         # never pushed to this node again
    Column("rejected_reason", String(40)),
    Column("rejected_message", Text),
    Column("rejected_at", DateTime),
)

# Incidents as agents reported them, by the agent's id: a report sent twice is stored once.
agent_incidents = Table(
    "fleet_incidents", metadata,
    Column("incident_id", String(200), primary_key=True),
    Column("node", String(63), nullable=False, index=True),
    Column("report", Text, nullable=False),          # JSON, as the agent sent it
    Column("workflow_incident", BigInteger),         # controller.workflow's incidents.id, when it took it
    Column("workflow_note", Text),                   # why the workflow did not take it
    Column("received_at", DateTime, nullable=False),
)

evidence_manifests = Table(
    "fleet_evidence", metadata,
    Column("evidence_id", String(200), primary_key=True),
    Column("node", String(63), nullable=False, index=True),
    Column("incident_id", String(200), nullable=False),
    Column("manifest", Text, nullable=False),        # JSON
    Column("received_at", DateTime, nullable=False),
)

# The latest counter summary of each node and tenant (counts over its interval).
counter_summaries = Table(
    "fleet_counters", metadata,
    Column("node", String(63), primary_key=True),
    Column("tenant_id", BigInteger, primary_key=True, autoincrement=False),
    Column("interval_start", BigInteger, nullable=False),
    Column("seconds", Integer, nullable=False),
    Column("counters", Text, nullable=False),        # JSON {counter name: count in the interval}
    Column("received_at", DateTime, nullable=False),
)

"""The enforcement workflow's tables: incidents, the cases that group them,
the deadlines the scheduler keeps, and the notification outbox. Created by
migration 0002 (after the controller's own); times are naive UTC, as in
controller.schema, and the tables share its MetaData so one Alembic
environment sees them all."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, String, Table, Text

from controller.schema import RowId, metadata

# One report of a breach: from an agent (floods, rate thresholds) or an
# operator (own finding, a complaint). Never changed once recorded.
incidents = Table(
    "incidents", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, ForeignKey("cases.id"), nullable=False, index=True),
    Column("tenant_id", BigInteger, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),            # controller.workflow.rules.KINDS
    Column("severity", String(16), nullable=False),        # normal | severe
    Column("harm_confirmed", Boolean, nullable=False),     # 七.3 "已被证实" counts as severe
    Column("source", String(16), nullable=False),          # agent | operator | complaint
    Column("reported_by", String(200), nullable=False),    # the token's name (an agent's, an operator's)
    Column("summary", Text, nullable=False),               # what was seen, in the reporter's words
    Column("evidence", Text, nullable=False),              # JSON list of sealed-evidence references
    Column("sources", Text, nullable=False),               # JSON list of source prefixes involved
    Column("ports", Text, nullable=False),                 # JSON list of port rules involved ("tcp/25")
    Column("observed_at", DateTime, nullable=False),
    Column("reported_at", DateTime, nullable=False),
)

# The incidents of one tenant and kind, handled together through
# open -> warned -> remediating -> resolved, or escalated.
cases = Table(
    "cases", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, ForeignKey("tenants.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("severe", Boolean, nullable=False),             # severe actions were taken
    Column("strikes_before", Integer, nullable=False),     # the tenant's strikes in the window when it opened
    Column("termination_proposed", Boolean, nullable=False),
    Column("resolution", String(16)),                      # remediated | terminated | dismissed, once resolved
    Column("effects", Text, nullable=False),               # JSON: what this case did to the tenant (to undo it)
    Column("opened_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("warned_at", DateTime),
    Column("resolved_at", DateTime),
    Column("version", Integer, nullable=False),
    Index("ix_cases_tenant_kind_state", "tenant_id", "kind", "state"),
)

# What the system must do at a time unless something cancels it first: the
# grace period's end (七.3), a temporary suspension's end (七.4). Kept in the
# store so a restarted controller keeps them; acted on once, by one process.
deadlines = Table(
    "deadlines", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, ForeignKey("cases.id"), nullable=False, index=True),
    Column("tenant_id", BigInteger, nullable=False),
    Column("purpose", String(32), nullable=False),         # grace_expired | suspension_ends
    Column("due_at", DateTime, nullable=False),
    Column("actions", Text, nullable=False),               # JSON list of ladder actions
    Column("rule", String(100), nullable=False),           # the rule that set it, for the audit trail
    Column("created_at", DateTime, nullable=False),
    Column("done_at", DateTime),
    Column("done_by", String(200)),                        # which controller process acted on it
    Column("cancelled_at", DateTime),
    Column("cancel_reason", Text),
    Index("ix_deadlines_due", "done_at", "cancelled_at", "due_at"),
)

# The outbox: written in the enforcement step's own transaction, delivered
# afterwards by the background sender, so a relay or receiver that is down
# never holds up a suspension.
notifications = Table(
    "notifications", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, ForeignKey("cases.id"), nullable=False, index=True),
    Column("tenant_id", BigInteger, nullable=False),
    Column("channel", String(16), nullable=False),          # email | webhook
    Column("recipient", String(2000), nullable=False),     # an address or a URL
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),                  # the text message (email body)
    Column("payload", Text, nullable=False),               # JSON document (webhook body)
    Column("status", String(16), nullable=False),          # pending | sent | failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("claimed_until", DateTime),                     # a sender's lease while it delivers
    Column("last_error", Text),
    Column("created_at", DateTime, nullable=False),
    Column("sent_at", DateTime),
    Index("ix_notifications_due", "status", "next_attempt_at"),
)

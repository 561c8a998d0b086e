"""The controller's schema: the one definition of every table. Migrations in
controller/migrations create exactly these; times are naive UTC."""

from __future__ import annotations

from sqlalchemy import (
    false, BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
)

metadata = MetaData()

# SQLite numbers rows itself only in an INTEGER PRIMARY KEY (64-bit there anyway)
RowId = BigInteger().with_variant(Integer(), "sqlite")

# One row (id = 1). Every changing transaction locks it first: writes are
# serialised, so the audit chain and the revision numbers have no gaps or forks.
head = Table(
    "controller_head", metadata,
    Column("id", Integer, primary_key=True),
    Column("audit_seq", BigInteger, nullable=False),
    Column("audit_hash", String(64), nullable=False),
    Column("revision", BigInteger, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),   # sha256 hex of the token; the token is never stored
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("expires_at", DateTime),
    Column("revoked_at", DateTime),
)

tenants = Table(
    "tenants", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False, unique=True),
    Column("state", String(20), nullable=False),
    Column("icp_filing", String(64), nullable=False),
    Column("vips", Text, nullable=False),       # JSON list in the policy document's VIP form
    Column("flood", Text, nullable=False),      # JSON table in the policy document's flood form
    # on the watch list (clause 七.4): agents sample its traffic; set by the workflow (migration 0002)
    Column("watch", Boolean, nullable=False, server_default=false()),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

tenant_domains = Table(
    "tenant_domains", metadata,
    Column("tenant_id", BigInteger, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("domain", String(253), nullable=False, unique=True),
)

contacts = Table(
    "contacts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("email", String(254), nullable=False),
    Column("phone", String(40), nullable=False),
    Column("webhook_url", String(2000)),
)

state_history = Table(
    "tenant_state_history", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("at", DateTime, nullable=False),
    Column("state", String(20), nullable=False),
    Column("operator", String(200), nullable=False),
    Column("reason", Text, nullable=False),
)

# A batch is one operator action that added entries (one `lists add`, one
# import): the reason, operator, times and evidence every entry of it shares.
block_batches = Table(
    "block_batches", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, ForeignKey("tenants.id")),       # NULL: the global list
    Column("reason", Text, nullable=False),
    Column("operator", String(200), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime),
    Column("evidence", String(500)),
    Column("emergency", Boolean, nullable=False),
    Column("source", String(500)),                                   # the imported file's name, if any
    Column("expired_at", DateTime),                                  # set once its expiry made its revision
    Index("ix_block_batches_expiry", "expired_at", "expires_at"),
)

block_entries = Table(
    "block_entries", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    # No foreign key: its per-row check (a trigger on PostgreSQL) would be most of a
    # million-row COPY. Entries are written only with their batch, in its transaction.
    Column("batch_id", BigInteger, nullable=False, index=True),
    Column("tenant_id", BigInteger),                                 # copied from the batch: the policy is compiled per tenant
    Column("kind", String(6), nullable=False),                       # "source" | "port"
    Column("prefix", String(43)),                                    # kind source: normalised CIDR
    Column("protocol", String(3)),                                   # kind port: tcp | udp
    Column("first_port", Integer),
    Column("last_port", Integer),
    Column("removed_at", DateTime),
    Column("removed_by", String(200)),
)

audit = Table(
    "audit", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),          # ISO 8601 UTC, hashed as written
    Column("operator", String(200), nullable=False),
    Column("action", String(60), nullable=False),
    Column("tenant_id", BigInteger, index=True),
    Column("target", String(200), nullable=False),
    Column("before", Text, nullable=False),            # canonical JSON
    Column("after", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

revisions = Table(
    "revisions", metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("created_at", DateTime, nullable=False),
    Column("operator", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("audit_seq", BigInteger, nullable=False),
    Column("tenants", Integer, nullable=False),
    Column("global_sources", Integer, nullable=False),
    Column("digest", String(64), nullable=False),       # sha256 of the document without its revision number
    Column("document", LargeBinary, nullable=False),    # zlib-compressed canonical JSON policy document
)

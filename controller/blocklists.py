"""Block lists, global and per tenant: source prefixes and destination ports,
each entry with the reason, operator, creation time, optional expiry and
evidence reference of the batch that added it. Bulk import parses list files
with the project's list parser and stores the compiled prefixes in bulk
(executemany on SQLite, COPY on PostgreSQL): no Python object per row."""

from __future__ import annotations

import datetime as dt
import re
from typing import Callable

from sqlalchemy import Connection, and_, insert, select, update

from agent._prefixes import parse_blocklist
from agent.blocklist import MAX_LISTED_BAD_LINES
from controller import audit, schema
from controller.errors import Conflict, Forbidden, Invalid, NotFound, Problem
from controller.prefixes import prefix_texts
from controller.revisions import make_revision
from controller.store import utcnow
from controller.tokens import Role

_PORT_RULE = re.compile(r"(tcp|udp)/([0-9]{1,5})(?:-([0-9]{1,5}))?")
MAX_PORTS_PER_RULE = 4096   # as agent.policy allows per rule
Progress = Callable[[int, int], None]


def _naive_utc(when: dt.datetime | None) -> dt.datetime | None:
    if when is None or when.tzinfo is None:
        return when
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _check_scope(conn: Connection, tenant_id: int | None, emergency: bool, role: Role,
                 expires_at: dt.datetime | None) -> None:
    if tenant_id is not None and conn.execute(
            select(schema.tenants.c.id).where(schema.tenants.c.id == tenant_id)).first() is None:
        raise Invalid(Problem("tenant_id", f"tenant {tenant_id} does not exist"))
    if emergency and not role.allows(Role.ADMIN):
        raise Forbidden("emergency blocks need the admin role")
    if expires_at is not None and expires_at <= utcnow():
        raise Invalid(Problem("expires_at", "the expiry is in the past; omit it for a block without expiry"))


def parse_port_rule(text: str, where: str) -> tuple[str, int, int]:
    m = _PORT_RULE.fullmatch(text.strip().lower())
    if not m:
        raise Invalid(Problem(where, f"{text!r} is not a port rule like 'tcp/25' or 'udp/6000-6010'"))
    first = int(m.group(2))
    last = int(m.group(3)) if m.group(3) else first
    if not (1 <= first <= 65535 and 1 <= last <= 65535):
        raise Invalid(Problem(where, f"ports of {text!r} must be in 1..65535"))
    if last < first:
        raise Invalid(Problem(where, f"port range {text!r} runs backwards"))
    if last - first + 1 > MAX_PORTS_PER_RULE:
        raise Invalid(Problem(where, f"port range {text!r} covers more than {MAX_PORTS_PER_RULE} ports"))
    return m.group(1), first, last


def _new_batch(conn: Connection, *, tenant_id, reason, operator, expires_at, evidence, emergency, source=None) -> int:
    return conn.execute(insert(schema.block_batches).values(
        tenant_id=tenant_id, reason=reason, operator=operator, created_at=utcnow(), expires_at=expires_at,
        evidence=evidence, emergency=emergency, source=source).returning(schema.block_batches.c.id)).scalar_one()


def _insert_sources(conn: Connection, batch_id: int, tenant_id: int | None, prefixes: list[str],
                    progress: Progress | None = None, chunk: int = 50000) -> None:
    """Bulk insert: COPY on PostgreSQL, one executemany per chunk on SQLite."""
    total = len(prefixes)
    if conn.dialect.name == "postgresql":
        dbapi = conn.connection.driver_connection
        with dbapi.cursor() as cur:
            # COPY's text format written in blocks: the prefixes are CIDR texts, nothing needs escaping
            tenant_text = "\\N" if tenant_id is None else str(tenant_id)
            prefix_columns = f"{batch_id}\t{tenant_text}\tsource\t"
            with cur.copy("COPY block_entries (batch_id, tenant_id, kind, prefix) FROM STDIN") as copy:
                for start in range(0, total, chunk):
                    block = prefix_columns + ("\n" + prefix_columns).join(prefixes[start:start + chunk]) + "\n"
                    copy.write(block.encode())
                    if progress:
                        progress(min(start + chunk, total), total)
        return
    dbapi = conn.connection.driver_connection
    cur = dbapi.cursor()
    try:
        for start in range(0, total, chunk):
            cur.executemany("INSERT INTO block_entries (batch_id, tenant_id, kind, prefix) VALUES (?, ?, 'source', ?)",
                            [(batch_id, tenant_id, p) for p in prefixes[start:start + chunk]])
            if progress:
                progress(min(start + chunk, total), total)
    finally:
        cur.close()


def add_entries(conn: Connection, head: dict, *, operator: str, role: Role, tenant_id: int | None,
                sources: list[str], ports: list[str], reason: str, expires_at: dt.datetime | None = None,
                evidence: str | None = None, emergency: bool = False) -> dict:
    expires_at = _naive_utc(expires_at)
    _check_scope(conn, tenant_id, emergency, role, expires_at)
    if not sources and not ports:
        raise Invalid(Problem("sources", "give at least one source or port to block"))
    problems, texts = [], []
    for i, text in enumerate(sources):
        if "\n" in text or "\r" in text:
            problems.append(Problem(f"sources[{i}]", "one entry per item, no line breaks"))
            continue
        result = parse_blocklist(text.encode("utf-8", "surrogatepass"))
        if result.bad_lines or result.entries_read != 1:
            rule = result.bad_lines[0][1] if result.bad_lines else "empty entry (or a comment only)"
            problems.append(Problem(f"sources[{i}]", f"{rule}: {text!r}"))
        else:
            texts.extend(prefix_texts(result.prefixes))
    rules = []
    for i, text in enumerate(ports):
        try:
            rules.append(parse_port_rule(text, f"ports[{i}]"))
        except Invalid as err:
            problems.extend(err.problems)
    if problems:
        raise Invalid(problems)
    batch_id = _new_batch(conn, tenant_id=tenant_id, reason=reason, operator=operator, expires_at=expires_at,
                          evidence=evidence, emergency=emergency)
    if texts:
        conn.execute(insert(schema.block_entries), [
            {"batch_id": batch_id, "tenant_id": tenant_id, "kind": "source", "prefix": p} for p in texts])
    if rules:
        conn.execute(insert(schema.block_entries), [
            {"batch_id": batch_id, "tenant_id": tenant_id, "kind": "port", "protocol": proto, "first_port": first,
             "last_port": last} for proto, first, last in rules])
    scope = "global" if tenant_id is None else f"tenant {tenant_id}"
    audit.record(conn, head, operator=operator, action="block.emergency" if emergency else "block.add",
                 tenant_id=tenant_id, target=f"block batch {batch_id} ({scope})", reason=reason,
                 after={"batch": batch_id, "sources": texts, "ports": ports, "expires_at": expires_at,
                        "evidence": evidence})
    revision = make_revision(conn, head, operator=operator, reason=reason)
    return {"batch_id": batch_id, "tenant_id": tenant_id, "entries": len(texts) + len(rules), "revision": revision}


def import_list(conn: Connection, head: dict, *, operator: str, role: Role, tenant_id: int | None, data: bytes,
                reason: str, source: str = "upload", strict: bool = False, expires_at: dt.datetime | None = None,
                evidence: str | None = None, emergency: bool = False, progress: Progress | None = None) -> dict:
    """Import a block-list file's bytes as one batch. Bad lines are reported
    (and with `strict` refuse the whole file); a file without a valid entry is
    refused, as `edgewarden block load` refuses it."""
    expires_at = _naive_utc(expires_at)
    _check_scope(conn, tenant_id, emergency, role, expires_at)
    result = parse_blocklist(data)
    bad = [{"line": line, "reason": why, "text": text} for line, why, text in result.bad_lines]
    if strict and bad:
        problems = [Problem(f"{source}:{b['line']}", f"{b['reason']}: {b['text']!r}") for b in bad[:MAX_LISTED_BAD_LINES]]
        if len(bad) > MAX_LISTED_BAD_LINES:
            problems.append(Problem(source, f"and {len(bad) - MAX_LISTED_BAD_LINES} more bad lines"))
        raise Invalid(problems, f"{source}: {len(bad)} bad line(s) and --strict; nothing was imported")
    if result.entries_read == 0:
        raise Invalid(Problem(source, "no valid entries; refusing to import an empty block list "
                                      "(an empty download looks like this)"))
    texts = prefix_texts(result.prefixes)
    batch_id = _new_batch(conn, tenant_id=tenant_id, reason=reason, operator=operator, expires_at=expires_at,
                          evidence=evidence, emergency=emergency, source=source)
    _insert_sources(conn, batch_id, tenant_id, texts, progress)
    scope = "global" if tenant_id is None else f"tenant {tenant_id}"
    # the audit entry names the batch and its size; the entries are in block_entries under the batch
    audit.record(conn, head, operator=operator, action="block.import", tenant_id=tenant_id,
                 target=f"block batch {batch_id} ({scope})", reason=reason,
                 after={"batch": batch_id, "source": source, "entries_read": result.entries_read,
                        "prefixes": len(texts), "bad_lines": len(bad), "expires_at": expires_at,
                        "evidence": evidence})
    revision = make_revision(conn, head, operator=operator, reason=reason)
    return {"batch_id": batch_id, "tenant_id": tenant_id, "entries": len(texts),
            "entries_read": result.entries_read, "bad_lines": bad, "revision": revision}


def _entry_query():
    e, b = schema.block_entries.c, schema.block_batches.c
    return (select(e.id, e.batch_id, e.tenant_id, e.kind, e.prefix, e.protocol, e.first_port, e.last_port,
                   e.removed_at, b.reason, b.operator, b.created_at, b.expires_at, b.evidence, b.emergency,
                   b.expired_at)
            .select_from(schema.block_entries.join(schema.block_batches, e.batch_id == b.id)))


def _entry_out(row) -> dict:
    row = dict(row)
    if row["kind"] == "source":
        value = row["prefix"]
    else:
        span = str(row["first_port"]) if row["first_port"] == row["last_port"] else f"{row['first_port']}-{row['last_port']}"
        value = f"{row['protocol']}/{span}"
    return {"id": row["id"], "batch_id": row["batch_id"], "tenant_id": row["tenant_id"], "kind": row["kind"],
            "value": value, "reason": row["reason"], "operator": row["operator"], "created_at": row["created_at"],
            "expires_at": row["expires_at"], "evidence": row["evidence"], "emergency": bool(row["emergency"]),
            "removed_at": row["removed_at"], "expired_at": row["expired_at"]}


def list_entries(conn: Connection, *, scope: str = "all", kind: str | None = None, active_only: bool = True,
                 after_id: int = 0, limit: int = 1000) -> list[dict]:
    e, b = schema.block_entries.c, schema.block_batches.c
    query = _entry_query().where(e.id > after_id)
    if scope == "global":
        query = query.where(e.tenant_id.is_(None))
    elif scope != "all":
        query = query.where(e.tenant_id == int(scope))
    if kind:
        query = query.where(e.kind == kind)
    if active_only:
        query = query.where(and_(e.removed_at.is_(None), b.expired_at.is_(None)))
    return [_entry_out(r) for r in conn.execute(query.order_by(e.id).limit(limit)).mappings()]


def remove_entry(conn: Connection, head: dict, *, operator: str, role: Role, entry_id: int, reason: str) -> dict:
    e = schema.block_entries.c
    row = conn.execute(_entry_query().where(e.id == entry_id)).mappings().one_or_none()
    if row is None:
        raise NotFound(f"block entry {entry_id} does not exist")
    before = _entry_out(row)
    if before["removed_at"] is not None or before["expired_at"] is not None:
        raise Conflict(f"block entry {entry_id} is no longer active (removed or expired)")
    if before["emergency"] and not role.allows(Role.ADMIN):
        raise Forbidden("removing an emergency block needs the admin role")
    now = utcnow()
    conn.execute(update(schema.block_entries).where(e.id == entry_id).values(removed_at=now, removed_by=operator))
    audit.record(conn, head, operator=operator, action="block.remove", tenant_id=before["tenant_id"],
                 target=f"block entry {entry_id}", reason=reason, before=before, after=None)
    revision = make_revision(conn, head, operator=operator, reason=reason)
    return {"entry": dict(before, removed_at=now), "revision": revision}


def remove_batch(conn: Connection, head: dict, *, operator: str, role: Role, batch_id: int, reason: str) -> dict:
    b, e = schema.block_batches.c, schema.block_entries.c
    batch = conn.execute(select(schema.block_batches).where(b.id == batch_id)).mappings().one_or_none()
    if batch is None:
        raise NotFound(f"block batch {batch_id} does not exist")
    if batch["emergency"] and not role.allows(Role.ADMIN):
        raise Forbidden("removing an emergency block needs the admin role")
    now = utcnow()
    removed = conn.execute(update(schema.block_entries).where(e.batch_id == batch_id, e.removed_at.is_(None))
                           .values(removed_at=now, removed_by=operator)).rowcount
    if not removed:
        raise Conflict(f"block batch {batch_id} has no active entries left")
    audit.record(conn, head, operator=operator, action="block.remove_batch", tenant_id=batch["tenant_id"],
                 target=f"block batch {batch_id}", reason=reason,
                 before={"batch": batch_id, "active_entries": removed, "source": batch["source"],
                         "reason": batch["reason"]}, after=None)
    revision = make_revision(conn, head, operator=operator, reason=reason)
    return {"batch_id": batch_id, "removed": removed, "revision": revision}

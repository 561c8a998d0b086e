"""The audit trail: every change with who, when, what (before and after) and
why, hash-chained so that a changed, removed or reordered entry is found by
verify(). Entries are appended inside the change's own transaction."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from controller import schema
from controller.store import GENESIS_HASH, utcnow

FIELDS = ("seq", "at", "operator", "action", "tenant_id", "target", "before", "after", "reason", "prev_hash")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def entry_hash(row: dict) -> str:
    """sha256 over the entry's fields as stored, its sequence number and the previous hash included."""
    material = canonical_json([row[f] for f in FIELDS])
    return hashlib.sha256(material.encode()).hexdigest()


def record(conn: Connection, head: dict, *, operator: str, action: str, target: str, reason: str,
           before: Any = None, after: Any = None, tenant_id: int | None = None) -> int:
    """Append one entry to the chain; `head` is the row locked by store.writing()."""
    row = {
        "seq": head["audit_seq"] + 1,
        "at": utcnow().isoformat(timespec="microseconds") + "Z",
        "operator": operator, "action": action, "tenant_id": tenant_id, "target": target,
        "before": canonical_json(before), "after": canonical_json(after), "reason": reason,
        "prev_hash": head["audit_hash"],
    }
    row["hash"] = entry_hash(row)
    conn.execute(insert(schema.audit).values(**row))
    head["audit_seq"], head["audit_hash"] = row["seq"], row["hash"]
    return row["seq"]


@dataclass
class VerifyReport:
    entries: int
    problems: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"entries": self.entries, "intact": self.intact, "problems": self.problems}


def verify(conn: Connection) -> VerifyReport:
    """Walk the chain in sequence order. A changed entry no longer matches its
    hash; a removed one leaves a gap in the sequence and a broken link; a
    reordered one breaks the links around it. The head row holds the last
    hash, so a removed tail is found too."""
    problems: list[str] = []
    expected_prev, expected_seq, count = GENESIS_HASH, 1, 0
    rows = conn.execute(select(schema.audit).order_by(schema.audit.c.seq)).mappings()
    for row in rows:
        count += 1
        row = dict(row)
        where = f"audit entry {row['seq']}"
        if row["seq"] != expected_seq:
            problems.append(f"{where}: expected entry {expected_seq} here; entries "
                            f"{expected_seq}..{row['seq'] - 1} are missing" if row["seq"] > expected_seq
                            else f"{where}: sequence goes backwards")
        if row["prev_hash"] != expected_prev:
            problems.append(f"{where}: does not link to the entry before it (removed or reordered entries)")
        if entry_hash(row) != row["hash"]:
            problems.append(f"{where}: its content does not match its hash (the entry was changed)")
        expected_prev, expected_seq = row["hash"], row["seq"] + 1
    head = conn.execute(select(schema.head).where(schema.head.c.id == 1)).mappings().one()
    if head["audit_seq"] != expected_seq - 1 or head["audit_hash"] != expected_prev:
        problems.append(f"the chain ends at entry {expected_seq - 1}, but the controller head records entry "
                        f"{head['audit_seq']}: entries at the end were removed or changed")
    return VerifyReport(count, problems)


def entry_as_dict(row) -> dict:
    out = dict(row)
    out["before"] = json.loads(out["before"])
    out["after"] = json.loads(out["after"])
    return out


def list_entries(conn: Connection, *, tenant_id: int | None = None, operator: str | None = None,
                 since: dt.datetime | None = None, until: dt.datetime | None = None,
                 limit: int = 100, after_seq: int = 0) -> list[dict]:
    a = schema.audit.c
    query = select(schema.audit).where(a.seq > after_seq)
    if tenant_id is not None:
        query = query.where(a.tenant_id == tenant_id)
    if operator is not None:
        query = query.where(a.operator == operator)
    if since is not None:
        query = query.where(a.at >= _iso(since))
    if until is not None:
        query = query.where(a.at < _iso(until))
    return [entry_as_dict(r) for r in conn.execute(query.order_by(a.seq).limit(limit)).mappings()]


def _iso(when: dt.datetime) -> str:
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when.isoformat(timespec="microseconds") + "Z"

"""Policy revisions: the registry and the block lists compiled into the policy
document that agents enforce (agent.policy), validated as a whole before it
is stored, so a revision an agent would refuse is never made. Also the
expiry of block entries (each its own revision) and diffs between revisions."""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections import defaultdict

from sqlalchemy import Connection, Engine, and_, insert, select, update

from agent._prefixes import PrefixSet
from agent.policy import PolicyError, policy_from_document, policy_to_document
from controller import audit, schema
from controller.errors import Invalid, NotFound, Problem
from controller.prefixes import TextsCache, prefix_set, prefix_set_of_lines, prefix_texts
from controller.store import reading, utcnow, writing

SYSTEM_OPERATOR = "controller"
# A terminated tenant (clause 八) leaves every agent's policy; its records,
# lists and audit stay in the registry.
POLICY_STATE = {"active": "active", "suspended": "suspended"}


def _active_entries(kind: str):
    e, b = schema.block_entries.c, schema.block_batches.c
    return (select(e.tenant_id, e.prefix, e.protocol, e.first_port, e.last_port)
            .select_from(schema.block_entries.join(schema.block_batches, e.batch_id == b.id))
            .where(e.kind == kind, e.removed_at.is_(None), b.expired_at.is_(None)))


ACTIVE_SOURCES_SQL = ("SELECT e.tenant_id, e.prefix FROM block_entries e JOIN block_batches b ON e.batch_id = b.id "
                      "WHERE e.kind = 'source' AND e.removed_at IS NULL AND b.expired_at IS NULL")

# each scope's active source prefixes as one text, a prefix a line (in no particular order)
ACTIVE_SOURCES_BY_SCOPE_SQL = {
    dialect: (f"SELECT e.tenant_id, {joined} FROM block_entries e JOIN block_batches b ON e.batch_id = b.id "
              "WHERE e.kind = 'source' AND e.removed_at IS NULL AND b.expired_at IS NULL GROUP BY e.tenant_id")
    for dialect, joined in (("sqlite", "group_concat(e.prefix, char(10))"),
                            ("postgresql", "string_agg(e.prefix, E'\\n')"))}


def compile_document(conn: Connection, revision: int) -> tuple[dict, dict]:
    """The policy document of the registry as it is in this transaction, with
    the source lists left empty, and those lists as compiled PrefixSets by
    tenant id (None: the global list)."""
    # a million rows: joined into one text per scope by the database (the
    # list parser's input as it is), straight from the driver's cursor; a
    # row per prefix through Python was ~1.9 s of a revision on a 1M list
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(ACTIVE_SOURCES_BY_SCOPE_SQL[conn.dialect.name])
        sources = dict(cursor.fetchall())
    finally:
        cursor.close()
    ports: dict[int | None, set[str]] = defaultdict(set)
    for tenant_id, _, protocol, first, last in conn.execute(_active_entries("port")):
        ports[tenant_id].add(f"{protocol}/{first}" if first == last else f"{protocol}/{first}-{last}")
    tenants = []
    for row in conn.execute(select(schema.tenants).where(schema.tenants.c.state != "terminated")
                            .order_by(schema.tenants.c.id)).mappings():
        doc = {"id": row["id"], "name": row["name"], "state": POLICY_STATE[row["state"]],
               "vips": json.loads(row["vips"]),
               # global port blocks apply to every tenant
               "blocked_ports": sorted(ports[row["id"]] | ports[None]), "blocked_sources": []}
        flood = json.loads(row["flood"])
        if flood:
            doc["flood"] = flood
        if row["watch"]:   # the watch list (controller.workflow), for the agents' sampling
            doc["watch"] = True
        tenants.append(doc)
    sets = {scope: prefix_set_of_lines(text) for scope, text in sources.items()}
    return {"revision": revision, "global": {"blocked_sources": []}, "tenants": tenants}, sets


_LOCATION = re.compile(r"^tenants\[(\d+)\](?: \('[^']*'\))?(\.[^:]*)?: (.*)$", re.S)


def policy_problems(err: PolicyError, tenant_ids: list[int]) -> list[Problem]:
    """Map agent.policy's 'location: what' errors onto the registry's fields."""
    problems = []
    for text in err.errors:
        m = _LOCATION.match(text)
        if m:
            index, path, rule = int(m.group(1)), (m.group(2) or "").lstrip("."), m.group(3)
            tenant = tenant_ids[index] if index < len(tenant_ids) else index
            problems.append(Problem(f"tenant {tenant}" + (f".{path}" if path else ""), rule))
        else:
            field, _, rule = text.partition(": ")
            problems.append(Problem(field, rule or text))
    return problems


# each scope's list texts from this process's last compile, edited to the next
_TEXTS = TextsCache()


def validated_document(conn: Connection, revision: int) -> dict:
    """The registry compiled into agent.policy's model, validated by it, and
    written out as its canonical document. The source lists are the native
    list parser's compiled sets, valid by construction, and go into the
    document as that set's CIDR texts: parsing a million of them again into
    ipaddress objects would be nearly all the time a revision takes (the
    tests hold every stored revision to policy_from_document)."""
    doc, sets = compile_document(conn, revision)
    try:
        policy = policy_from_document(doc, f"revision {revision}")
    except PolicyError as err:
        raise Invalid(policy_problems(err, [t["id"] for t in doc["tenants"]]),
                      "the change would make a policy the agents refuse; nothing was changed") from None
    out = policy_to_document(policy)
    empty = PrefixSet()
    out["global"]["blocked_sources"] = _TEXTS.texts(None, sets.get(None, empty))
    for tenant in out["tenants"]:
        tenant["blocked_sources"] = _TEXTS.texts(tenant["id"], sets.get(tenant["id"], empty))
    return out


def _digest(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "revision"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_MARK = re.compile(rb'"\\u0000edgewarden-sources-(\d+)\\u0000"')


def _digest_and_json(doc: dict) -> tuple[str, bytes]:
    """(_digest(doc), the document's stored JSON), with each source list
    written to JSON once for both (a 1M list is ~130 ms a time): the lists
    are dumped on their own and spliced into the two dumps of the rest,
    which hold a marker in their place. A list of strings dumps the same
    sorted or not, so the bytes are those of the two plain dumps; if a
    marker is not found exactly once (a text holding one), the plain dumps."""
    lists: list[bytes] = []

    def hollow(table: dict) -> dict:
        sources = table.get("blocked_sources")
        if not sources:
            return table
        lists.append(json.dumps(sources, separators=(",", ":")).encode())
        return {**table, "blocked_sources": f"\0edgewarden-sources-{len(lists) - 1}\0"}

    skeleton = {**doc, "global": hollow(doc["global"]), "tenants": [hollow(t) for t in doc["tenants"]]}
    body = {k: v for k, v in skeleton.items() if k != "revision"}
    spliced = []
    for text in (json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
                 json.dumps(skeleton, separators=(",", ":")).encode()):
        parts = _MARK.split(text)
        if sorted(int(i) for i in parts[1::2]) != list(range(len(lists))):
            return _digest(doc), json.dumps(doc, separators=(",", ":")).encode()
        spliced.append(b"".join(lists[int(p)] if i % 2 else p for i, p in enumerate(parts)))
    return hashlib.sha256(spliced[0]).hexdigest(), spliced[1]


def make_revision(conn: Connection, head: dict, *, operator: str, reason: str) -> int | None:
    """Compile, validate and store a new revision if the policy changed; the
    new revision number, or None when the change left the policy as it was.
    Call after the change's audit entry, inside its transaction."""
    revision = head["revision"] + 1
    doc = validated_document(conn, revision)
    digest, stored = _digest_and_json(doc)
    if head["revision"]:
        last = conn.execute(select(schema.revisions.c.digest).where(
            schema.revisions.c.revision == head["revision"])).scalar_one()
        if last == digest:
            return None
    conn.execute(insert(schema.revisions).values(
        revision=revision, created_at=utcnow(), operator=operator, reason=reason, audit_seq=head["audit_seq"],
        tenants=len(doc["tenants"]), global_sources=len(doc["global"]["blocked_sources"]), digest=digest,
        document=zlib.compress(stored, 3)))
    head["revision"] = revision
    return revision


def load_document(conn: Connection, revision: int) -> dict:
    blob = conn.execute(select(schema.revisions.c.document).where(schema.revisions.c.revision == revision)).scalar()
    if blob is None:
        raise NotFound(f"policy revision {revision} does not exist")
    return json.loads(zlib.decompress(blob))


def revision_info(row) -> dict:
    return {k: row[k] for k in ("revision", "created_at", "operator", "reason", "audit_seq", "tenants",
                                "global_sources")}


def list_revisions(conn: Connection, limit: int = 50) -> list[dict]:
    r = schema.revisions.c
    query = select(*[getattr(r, k) for k in ("revision", "created_at", "operator", "reason", "audit_seq", "tenants",
                                             "global_sources")]).order_by(r.revision.desc()).limit(limit)
    return [revision_info(row) for row in conn.execute(query).mappings()]


def _source_diff(old: list[str], new: list[str]) -> dict:
    added, removed = prefix_set(old).diff(prefix_set(new))
    return {"added": prefix_texts(added), "removed": prefix_texts(removed)}


def diff_documents(old: dict, new: dict) -> dict:
    """What changed from `old` to `new`: prefix sets diffed natively, tenants field by field."""
    out = {"from": old["revision"], "to": new["revision"],
           "global_sources": _source_diff(old["global"]["blocked_sources"], new["global"]["blocked_sources"]),
           "tenants_added": [], "tenants_removed": [], "tenants_changed": {}}
    old_tenants = {t["id"]: t for t in old["tenants"]}
    new_tenants = {t["id"]: t for t in new["tenants"]}
    out["tenants_added"] = sorted(set(new_tenants) - set(old_tenants))
    out["tenants_removed"] = sorted(set(old_tenants) - set(new_tenants))
    for tid in sorted(set(old_tenants) & set(new_tenants)):
        a, b = old_tenants[tid], new_tenants[tid]
        changes = {}
        for key in sorted(set(a) | set(b)):
            if key == "blocked_sources":
                d = _source_diff(a.get(key, []), b.get(key, []))
                if d["added"] or d["removed"]:
                    changes[key] = d
            elif a.get(key) != b.get(key):
                changes[key] = {"before": a.get(key), "after": b.get(key)}
        if changes:
            out["tenants_changed"][str(tid)] = changes
    return out


def expire_due(engine: Engine) -> list[int]:
    """Take every block batch whose expiry has come out of the policy, one
    batch per transaction, each its own audit entry and revision. Returns the
    revisions made. The compile leaves out only batches marked expired here,
    so no other change's revision carries an expiry with it."""
    made = []
    b = schema.block_batches.c
    due = and_(b.expired_at.is_(None), b.expires_at.is_not(None), b.expires_at <= utcnow())
    with reading(engine) as conn:   # the loop runs every second: take the write lock only when there is work
        if conn.execute(select(b.id).where(due).limit(1)).first() is None:
            return made
    while True:
        with writing(engine) as (conn, head):
            row = conn.execute(select(schema.block_batches).where(
                and_(b.expired_at.is_(None), b.expires_at.is_not(None), b.expires_at <= utcnow()))
                .order_by(b.expires_at, b.id).limit(1)).mappings().one_or_none()
            if row is None:
                return made
            conn.execute(update(schema.block_batches).where(b.id == row["id"]).values(expired_at=utcnow()))
            scope = "global" if row["tenant_id"] is None else f"tenant {row['tenant_id']}"
            reason = f"expired at {row['expires_at']:%Y-%m-%d %H:%M:%S} UTC (added by {row['operator']}: {row['reason']})"
            audit.record(conn, head, operator=SYSTEM_OPERATOR, action="block.expire", tenant_id=row["tenant_id"],
                         target=f"block batch {row['id']} ({scope})", reason=reason,
                         before={"batch": row["id"], "expires_at": row["expires_at"]}, after=None)
            revision = make_revision(conn, head, operator=SYSTEM_OPERATOR, reason=reason)
            if revision is not None:
                made.append(revision)

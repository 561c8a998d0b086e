"""The tenant registry: tenants with their domains, ICP filing, VIPs, flood
settings and security contacts, their state history, optimistic concurrency
on the tenant's version, and the export for the authorities (clause 六)."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy import Connection, delete, func, insert, select, update

from agent.policy import PolicyError, policy_from_document
from controller import audit, schema
from controller.errors import Conflict, Forbidden, Invalid, NotFound, Problem
from controller.models import TenantCreate, TenantPatch
from controller.revisions import make_revision, policy_problems
from controller.store import utcnow
from controller.tokens import Role


def _vip_docs(vips) -> list:
    return [v if isinstance(v, str) else v.model_dump() for v in vips]


def _check_policy_fields(tenant_id: int, name: str, vips: list, flood: dict) -> None:
    """The tenant alone through agent.policy's validation, errors named by field."""
    doc = {"tenants": [{"id": tenant_id, "name": name, "vips": vips, "flood": flood}]}
    try:
        policy_from_document(doc, "tenant")
    except PolicyError as err:
        problems = [Problem(p.field.split(".", 1)[1] if "." in p.field else "tenant", p.rule)
                    for p in policy_problems(err, [tenant_id])]
        raise Invalid(problems) from None


def _check_domains_free(conn: Connection, domains: list[str], tenant_id: int) -> None:
    d = schema.tenant_domains.c
    if not domains:
        return
    taken = dict(conn.execute(select(d.domain, d.tenant_id).where(d.domain.in_(domains), d.tenant_id != tenant_id)).all())
    problems = [Problem(f"domains[{i}]", f"{name!r} is registered to tenant {taken[name]} already")
                for i, name in enumerate(domains) if name in taken]
    if problems:
        raise Invalid(problems)


def _check_name_free(conn: Connection, name: str, tenant_id: int) -> None:
    t = schema.tenants.c
    other = conn.execute(select(t.id).where(t.name == name, t.id != tenant_id)).scalar()
    if other is not None:
        raise Invalid(Problem("name", f"{name!r} is the name of tenant {other} already"))


def get_tenant(conn: Connection, tenant_id: int) -> dict:
    row = conn.execute(select(schema.tenants).where(schema.tenants.c.id == tenant_id)).mappings().one_or_none()
    if row is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    return _tenant_record(conn, row)


def _tenant_record(conn: Connection, row) -> dict:
    d, c = schema.tenant_domains.c, schema.contacts.c
    domains = sorted(conn.execute(select(d.domain).where(d.tenant_id == row["id"])).scalars())
    contacts = [dict(r) for r in conn.execute(select(c.name, c.email, c.phone, c.webhook_url)
                                              .where(c.tenant_id == row["id"]).order_by(c.position)).mappings()]
    return {"id": row["id"], "name": row["name"], "state": row["state"], "icp_filing": row["icp_filing"],
            "domains": domains, "vips": json.loads(row["vips"]), "flood": json.loads(row["flood"]),
            "contacts": contacts, "watch": bool(row["watch"]), "version": row["version"], "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


def list_tenants(conn: Connection) -> list[dict]:
    return [_tenant_record(conn, row) for row in
            conn.execute(select(schema.tenants).order_by(schema.tenants.c.id)).mappings()]


def _audit_view(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("created_at", "updated_at")}


def _write_children(conn: Connection, tenant_id: int, domains: list[str] | None, contacts: list | None) -> None:
    if domains is not None:
        conn.execute(delete(schema.tenant_domains).where(schema.tenant_domains.c.tenant_id == tenant_id))
        if domains:
            conn.execute(insert(schema.tenant_domains), [{"tenant_id": tenant_id, "domain": d} for d in domains])
    if contacts is not None:
        conn.execute(delete(schema.contacts).where(schema.contacts.c.tenant_id == tenant_id))
        conn.execute(insert(schema.contacts), [dict(c.model_dump(), tenant_id=tenant_id, position=i)
                                               for i, c in enumerate(contacts)])


def _history(conn: Connection, tenant_id: int, state: str, operator: str, reason: str) -> None:
    conn.execute(insert(schema.state_history).values(tenant_id=tenant_id, at=utcnow(), state=state,
                                                     operator=operator, reason=reason))


def create_tenant(conn: Connection, head: dict, *, operator: str, data: TenantCreate) -> tuple[dict, int | None]:
    t = schema.tenants.c
    tenant_id = data.id
    if tenant_id is None:
        tenant_id = (conn.execute(select(func.max(t.id))).scalar() or 0) + 1
    elif conn.execute(select(t.id).where(t.id == tenant_id)).first():
        raise Conflict(f"tenant {tenant_id} exists already; change it with PATCH /tenants/{tenant_id}")
    vips = _vip_docs(data.vips)
    _check_policy_fields(tenant_id, data.name, vips, data.flood)
    _check_name_free(conn, data.name, tenant_id)
    _check_domains_free(conn, data.domains, tenant_id)
    now = utcnow()
    conn.execute(insert(schema.tenants).values(
        id=tenant_id, name=data.name, state=data.state, icp_filing=data.icp_filing, vips=json.dumps(vips),
        flood=json.dumps(data.flood), version=1, created_at=now, updated_at=now))
    _write_children(conn, tenant_id, data.domains, data.contacts)
    _history(conn, tenant_id, data.state, operator, data.reason)
    record = get_tenant(conn, tenant_id)
    audit.record(conn, head, operator=operator, action="tenant.create", tenant_id=tenant_id,
                 target=f"tenant {tenant_id}", reason=data.reason, after=_audit_view(record))
    revision = make_revision(conn, head, operator=operator, reason=data.reason)
    return record, revision


def update_tenant(conn: Connection, head: dict, *, operator: str, role: Role, tenant_id: int,
                  patch: TenantPatch, terminating: bool = False) -> tuple[dict, int | None]:
    """`terminating` is the confirmed termination of clause 八 (controller.workflow
    ladder.terminate, its only caller with it set): a patch alone never terminates."""
    before = get_tenant(conn, tenant_id)
    if patch.version != before["version"]:
        raise Conflict(f"tenant {tenant_id} is at version {before['version']}, you sent version {patch.version}: "
                       "someone changed it since you read it; read it again and reapply your change")
    changes = patch.model_dump(exclude_unset=True, exclude={"version", "reason"})
    changes = {k: v for k, v in changes.items() if v is not None}
    if "state" in changes and "terminated" in (changes["state"], before["state"]) \
            and changes["state"] != before["state"] and not role.allows(Role.ADMIN):
        raise Forbidden("terminating a tenant, or restoring a terminated one, needs the admin role")
    if changes.get("state") == "terminated" and before["state"] != "terminated" and not terminating:
        # termination closes the tenant's cases and notifies it; a field change would skip all that
        raise Conflict(f"tenant {tenant_id} is not terminated by changing its state: termination (clause 八) "
                       f"is the admin's confirmed step, which closes its cases and notifies it: "
                       f"edgewarden tenant terminate {tenant_id} --confirm --reason ... "
                       f"(API: POST /tenants/{tenant_id}/terminate with confirm: true); nothing was changed")
    vips = _vip_docs(patch.vips) if patch.vips is not None else before["vips"]
    name = changes.get("name", before["name"])
    flood = changes.get("flood", before["flood"])
    _check_policy_fields(tenant_id, name, vips, flood)
    _check_name_free(conn, name, tenant_id)
    if patch.domains is not None:
        _check_domains_free(conn, patch.domains, tenant_id)
    values = {k: changes[k] for k in ("name", "state", "icp_filing") if k in changes}
    if patch.vips is not None:
        values["vips"] = json.dumps(vips)
    if patch.flood is not None:
        values["flood"] = json.dumps(flood)
    t = schema.tenants.c
    result = conn.execute(update(schema.tenants).where(t.id == tenant_id, t.version == patch.version)
                          .values(**values, version=patch.version + 1, updated_at=utcnow()))
    if result.rowcount != 1:   # belt and braces: the head lock serialises writers already
        raise Conflict(f"tenant {tenant_id} changed while this change was applied; read it again")
    _write_children(conn, tenant_id, patch.domains, patch.contacts)
    if "state" in changes and changes["state"] != before["state"]:
        _history(conn, tenant_id, changes["state"], operator, patch.reason)
    after = get_tenant(conn, tenant_id)
    audit.record(conn, head, operator=operator, action="tenant.update", tenant_id=tenant_id,
                 target=f"tenant {tenant_id}", reason=patch.reason, before=_audit_view(before),
                 after=_audit_view(after))
    revision = make_revision(conn, head, operator=operator, reason=patch.reason)
    return after, revision


def state_history(conn: Connection, tenant_id: int) -> list[dict]:
    h = schema.state_history.c
    return [dict(r) for r in conn.execute(select(h.at, h.state, h.operator, h.reason)
                                          .where(h.tenant_id == tenant_id).order_by(h.id)).mappings()]


# --- export for the authorities ------------------------------------------------

def export_records(conn: Connection) -> list[dict]:
    records = []
    for record in list_tenants(conn):
        record = dict(record)
        record["state_history"] = state_history(conn, record["id"])
        records.append(record)
    return records


def _iso(value) -> str:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else ""


def export_json(records: list[dict]) -> str:
    return json.dumps(records, ensure_ascii=False, indent=2, default=_iso) + "\n"


CSV_COLUMNS = ["id", "name", "state", "icp_filing", "domains", "vips", "contacts", "state_history",
               "created_at", "updated_at"]


def export_csv(records: list[dict]) -> bytes:
    """One row a tenant; list fields joined with ' | '. UTF-8 with a BOM so a
    spreadsheet opens Chinese text correctly."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in records:
        contacts = " | ".join(f"{c['name']} <{c['email']}> {c['phone']}" + (f" {c['webhook_url']}" if c["webhook_url"] else "")
                              for c in r["contacts"])
        history = " | ".join(f"{_iso(h['at'])} {h['state']} by {h['operator']}: {h['reason']}" for h in r["state_history"])
        vips = " | ".join(v if isinstance(v, str) else f"{v['protocol']}/{v['address']}:{v['port']}" for v in r["vips"])
        writer.writerow([r["id"], r["name"], r["state"], r["icp_filing"], " | ".join(r["domains"]), vips, contacts,
                         history, _iso(r["created_at"]), _iso(r["updated_at"])])
    return out.getvalue().encode("utf-8-sig")

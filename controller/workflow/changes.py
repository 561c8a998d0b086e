"""The workflow's changes to the controller: suspend, resume and terminate a
tenant, block prefixes and ports for it, put it on or off the watch list.
Each goes through the controller's own code (registry, block lists, audit,
revisions), inside the caller's transaction, so it is audited and becomes a
policy revision exactly as an operator's change would; this module is the
one seam between the ladder and the registry."""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from controller import audit, blocklists, registry, schema
from controller.models import TenantPatch
from controller.revisions import SYSTEM_OPERATOR, make_revision
from controller.tokens import Role

# the workflow acts as the controller itself: it may do what the ladder says, and
# terminations it carries out only on an admin's confirmation (ladder.terminate)
WORKFLOW_ROLE = Role.OPERATOR


def tenant_state(conn: Connection, tenant_id: int) -> str:
    return registry.get_tenant(conn, tenant_id)["state"]


def set_state(conn: Connection, head: dict, *, tenant_id: int, state: str, operator: str, reason: str,
              role: Role = WORKFLOW_ROLE) -> int | None:
    """The tenant's state through the registry (optimistic version read in the
    same transaction, so it cannot be stale); returns the revision made."""
    current = registry.get_tenant(conn, tenant_id)
    if current["state"] == state:
        return None
    _, revision = registry.update_tenant(conn, head, operator=operator, role=role, tenant_id=tenant_id,
                                         patch=TenantPatch(version=current["version"], state=state, reason=reason),
                                         terminating=state == "terminated")
    return revision


def suspension_by(conn: Connection, tenant_id: int) -> dict | None:
    """Who put the tenant in its current suspension ({'operator', 'at', 'reason'}),
    or None if it is not suspended: the last entry of its state history, which
    the registry writes on every change of state."""
    if tenant_state(conn, tenant_id) != "suspended":
        return None
    history = registry.state_history(conn, tenant_id)
    return history[-1] if history else None


def set_watch(conn: Connection, head: dict, *, tenant_id: int, watch: bool, operator: str,
              reason: str) -> int | None:
    """The watch-list flag (clause 七.4); a policy revision carries it to the agents."""
    t = schema.tenants.c
    before = conn.execute(select(t.watch).where(t.id == tenant_id)).scalar_one()
    if bool(before) == watch:
        return None
    conn.execute(update(schema.tenants).where(t.id == tenant_id).values(watch=watch))
    audit.record(conn, head, operator=operator, action="tenant.watch", tenant_id=tenant_id,
                 target=f"tenant {tenant_id}", reason=reason, before={"watch": bool(before)}, after={"watch": watch})
    return make_revision(conn, head, operator=operator, reason=reason)


def block(conn: Connection, head: dict, *, tenant_id: int, sources: list[str], ports: list[str], operator: str,
          reason: str, evidence: str | None) -> dict:
    """One block batch on the tenant's list; {'batch_id', 'revision', ...}."""
    return blocklists.add_entries(conn, head, operator=operator, role=WORKFLOW_ROLE, tenant_id=tenant_id,
                                  sources=sources, ports=ports, reason=reason, evidence=evidence)


def unblock(conn: Connection, head: dict, *, batch_id: int, operator: str, reason: str) -> int | None:
    """Lift a batch this workflow added; None if nothing of it was active any more."""
    e = schema.block_entries.c
    active = conn.execute(select(e.id).where(e.batch_id == batch_id, e.removed_at.is_(None)).limit(1)).first()
    if active is None:
        return None
    return blocklists.remove_batch(conn, head, operator=operator, role=WORKFLOW_ROLE, batch_id=batch_id,
                                   reason=reason)["revision"]


__all__ = ["SYSTEM_OPERATOR", "WORKFLOW_ROLE", "block", "set_state", "set_watch", "suspension_by", "tenant_state",
           "unblock"]

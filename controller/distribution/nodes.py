"""The node registry: each edge node gets its own client certificate from
the fleet CA (never a shared credential), and can be revoked; the
distribution server asks `refusal(name)` before it lets a node in. Also the
one-time setup of the CA, the controller's server certificate and the
revision signing key."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Connection, Engine, insert, select, update

from agent.wire.tls import CertificateError, NodeAuthority
from controller import audit
from controller.distribution import schema
from controller.errors import Conflict, NotFound
from controller.store import reading, utcnow, writing

CONTROLLER_CERT = "controller"   # <ca_dir>/controller.pem and .key: the distribution server's certificate


def setup(ca_dir: str | Path, signing_key: str | Path, name: str, hosts: list[str]) -> list[str]:
    """Create what is missing of: the fleet CA, the controller's server certificate
    (for `hosts`), the Ed25519 signing key. Never overwrites; returns what it made."""
    from agent.wire.signing import keygen
    made = []
    ca_dir = Path(ca_dir)
    try:
        authority = NodeAuthority(ca_dir)
    except CertificateError:
        authority = NodeAuthority.create(ca_dir)
        made.append(f"fleet CA {authority.cert_path}")
    if not (ca_dir / f"{name}.pem").exists():
        issued = authority.issue_controller(name, hosts)
        made.append(f"controller certificate {issued.cert_path} for {', '.join(hosts)}")
    key = Path(signing_key)
    if not key.exists():
        key_id = keygen(key, key.with_suffix(".pub"))
        made.append(f"signing key {key} (public {key.with_suffix('.pub')}, key id {key_id}); "
                    f"put the public key into every agent's [controller] trusted_keys")
    return made


def add_node(engine: Engine, ca_dir: str | Path, name: str, *, operator: str, reason: str) -> dict:
    """Issue `name` its client certificate and register it; Conflict if the name is taken."""
    authority = NodeAuthority(ca_dir)
    with writing(engine) as (conn, head):
        if conn.execute(select(schema.nodes.c.name).where(schema.nodes.c.name == name)).first():
            raise Conflict(f"node {name!r} exists; revoke it and add it under a new name to reissue")
        issued = authority.issue_node(name)
        conn.execute(insert(schema.nodes).values(name=name, created_at=utcnow(), created_by=operator,
                                                 cert_serial=format(issued.serial, "x"), connected=False))
        audit.record(conn, head, operator=operator, action="node.add", tenant_id=None, target=f"node {name}",
                     reason=reason, before=None, after={"cert_serial": format(issued.serial, "x")})
    return {"node": name, "cert": str(issued.cert_path), "key": str(issued.key_path),
            "ca": str(authority.cert_path)}


def revoke_node(engine: Engine, name: str, *, operator: str, reason: str) -> dict:
    with writing(engine) as (conn, head):
        row = conn.execute(select(schema.nodes).where(schema.nodes.c.name == name)).mappings().one_or_none()
        if row is None:
            raise NotFound(f"node {name!r} is not registered")
        if row["revoked_at"] is not None:
            raise Conflict(f"node {name!r} was revoked at {row['revoked_at']:%Y-%m-%d %H:%M:%S} UTC")
        conn.execute(update(schema.nodes).where(schema.nodes.c.name == name).values(
            revoked_at=utcnow(), revoke_reason=reason))
        audit.record(conn, head, operator=operator, action="node.revoke", tenant_id=None, target=f"node {name}",
                     reason=reason, before={"revoked": False}, after={"revoked": True})
    return {"node": name, "revoked": True}


def refusal(conn: Connection, name: str) -> str | None:
    """None if `name` may connect, else why not (for the agent's close reason)."""
    row = conn.execute(select(schema.nodes.c.revoked_at, schema.nodes.c.revoke_reason)
                       .where(schema.nodes.c.name == name)).first()
    if row is None:
        return "not a registered node (edgewarden controller node add NAME)"
    if row.revoked_at is not None:
        return f"revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC: {row.revoke_reason}"
    return None


def node_rows(conn: Connection, name: str | None = None) -> list[dict]:
    query = select(schema.nodes).order_by(schema.nodes.c.name)
    if name is not None:
        query = query.where(schema.nodes.c.name == name)
    out = []
    for row in conn.execute(query).mappings():
        d = dict(row)
        d["attach_modes"] = json.loads(d["attach_modes"]) if d["attach_modes"] else {}
        out.append(d)
    return out


def list_nodes(engine: Engine) -> list[dict]:
    with reading(engine) as conn:
        return node_rows(conn)

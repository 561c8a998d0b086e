"""The fleet view: every node with its applied revision, its lag behind the
latest revision, when it was last seen, its last rejection, attach modes
and version (`edgewarden fleet status`, GET /fleet)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from controller import schema as cschema
from controller.distribution.nodes import node_rows
from controller.errors import NotFound
from controller.store import reading


def _iso(value):
    return value.isoformat(timespec="milliseconds") + "Z" if value is not None else None


def _view(row: dict, latest: int, live: dict) -> dict:
    applied = row["applied_revision"]
    state = live.get(row["name"])
    return {
        "node": row["name"],
        "revoked": row["revoked_at"] is not None,
        "connected": state is not None if live is not None else bool(row["connected"]),
        "applied_revision": applied,
        "lag": (latest - applied) if applied is not None else latest,
        "in_flight": state["in_flight"] if state else None,
        "last_seen": _iso(row["last_seen"]),
        "acked_at": _iso(row["acked_at"]),
        "agent_version": row["agent_version"],
        "attach_modes": row["attach_modes"],
        "last_rejection": None if row["rejected_revision"] is None else {
            "revision": row["rejected_revision"], "reason": row["rejected_reason"],
            "message": row["rejected_message"], "at": _iso(row["rejected_at"])},
    }


def fleet_status(engine: Engine, live: dict | None = None, node: str | None = None) -> dict:
    """`live`: the distribution server's connected sessions (None: take the store's word)."""
    with reading(engine) as conn:
        latest = conn.execute(select(cschema.head.c.revision).where(cschema.head.c.id == 1)).scalar_one()
        rows = node_rows(conn, node)
    if node is not None and not rows:
        raise NotFound(f"node {node!r} is not registered (edgewarden controller node add {node})")
    views = [_view(r, latest, live if live is not None else {r["name"]: {"in_flight": None} for r in rows
                                                             if r["connected"]}) for r in rows]
    return {"latest_revision": latest, "nodes": views,
            "up_to_date": sum(1 for v in views if v["lag"] == 0 and not v["revoked"]),
            "connected": sum(1 for v in views if v["connected"])}

"""What agents report, stored: incidents idempotently by the agent's id
(and handed to the enforcement workflow once), evidence manifests, and the
latest counter summary per node and tenant, summed into fleet-wide
per-tenant rates (`edgewarden tenant stats ID`)."""

from __future__ import annotations

import datetime as dt
import json
import logging

from sqlalchemy import Engine, delete, insert, select, update

from controller.distribution import schema
from controller.store import reading, utcnow, writing

log = logging.getLogger("edgewarden.distribution")
FRESH_SECONDS = 30.0     # a node's summary older than this no longer counts in the fleet's rates


def store_incident(engine: Engine, workflow, node: str, incident_id: str, report: dict) -> bool:
    """Store one agent incident; False if this id was stored before (a resend:
    acknowledge it again, do nothing else). A 'started' report is handed to
    the workflow (controller.workflow) as a network_attack incident."""
    with writing(engine) as (conn, _head):
        known = conn.execute(select(schema.agent_incidents.c.incident_id)
                             .where(schema.agent_incidents.c.incident_id == incident_id)).first()
        if known:
            return False
        conn.execute(insert(schema.agent_incidents).values(
            incident_id=incident_id, node=node, report=json.dumps(report, sort_keys=True), received_at=utcnow()))
    if workflow is None or report.get("report", "started") != "started":
        return True
    note, taken = None, None
    try:
        from controller.workflow.ladder import IncidentReport
        observed = report.get("started_at")
        summary = (f"{report.get('check', 'rate')} over {report.get('threshold')} on node {node} "
                   f"(peak {report.get('peak_value')}, interfaces {', '.join(report.get('interfaces', [])) or '-'}; "
                   f"agent incident {incident_id})")
        result = workflow.report(IncidentReport(
            tenant_id=int(report["tenant_id"]), kind="network_attack", summary=summary, source="agent",
            observed_at=dt.datetime.fromtimestamp(observed, dt.timezone.utc).replace(tzinfo=None) if observed else None),
            reported_by=f"node:{node}")
        taken = result.get("incident_id")
    except Exception as err:   # stored either way; the note says why the workflow did not take it
        note = f"{type(err).__name__}: {err}"
        log.warning("agent incident %s from %s not taken by the workflow: %s", incident_id, node, note)
    with writing(engine) as (conn, _head):
        conn.execute(update(schema.agent_incidents).where(schema.agent_incidents.c.incident_id == incident_id)
                     .values(workflow_incident=taken if isinstance(taken, int) else None, workflow_note=note))
    return True


def store_evidence(engine: Engine, node: str, evidence_id: str, incident_id: str, manifest: dict) -> bool:
    with writing(engine) as (conn, _head):
        if conn.execute(select(schema.evidence_manifests.c.evidence_id)
                        .where(schema.evidence_manifests.c.evidence_id == evidence_id)).first():
            return False
        conn.execute(insert(schema.evidence_manifests).values(
            evidence_id=evidence_id, node=node, incident_id=incident_id,
            manifest=json.dumps(manifest, sort_keys=True, default=str), received_at=utcnow()))
    return True


def store_counters(engine: Engine, node: str, interval_start: int, seconds: int, tenants: list) -> None:
    now = utcnow()
    rows = []
    for entry in tenants:
        if not isinstance(entry, dict) or type(entry.get("tenant_id")) is not int:
            continue
        counters = {k: v for k, v in entry.items() if k != "tenant_id" and isinstance(v, (int, float))}
        rows.append(dict(node=node, tenant_id=entry["tenant_id"], interval_start=interval_start,
                         seconds=max(1, seconds), counters=json.dumps(counters, sort_keys=True), received_at=now))
    c = schema.counter_summaries.c
    with writing(engine) as (conn, _head):
        conn.execute(delete(schema.counter_summaries).where(c.node == node))
        if rows:
            conn.execute(insert(schema.counter_summaries), rows)


def tenant_stats(engine: Engine, tenant_id: int) -> dict:
    """The tenant's rates across the fleet: each fresh node's latest summary
    divided by its interval, summed over the nodes."""
    c = schema.counter_summaries.c
    since = utcnow() - dt.timedelta(seconds=FRESH_SECONDS)
    rates: dict[str, float] = {}
    nodes = []
    with reading(engine) as conn:
        for row in conn.execute(select(schema.counter_summaries).where(c.tenant_id == tenant_id,
                                                                       c.received_at >= since)).mappings():
            node_rates = {k: v / row["seconds"] for k, v in json.loads(row["counters"]).items()}
            for key, value in node_rates.items():
                rates[key] = rates.get(key, 0.0) + value
            nodes.append({"node": row["node"], "interval_start": row["interval_start"], "seconds": row["seconds"],
                          "per_second": node_rates})
    return {"tenant_id": tenant_id, "nodes": len(nodes), "per_second": rates, "by_node": nodes}

"""Prometheus metrics on the configured address (prometheus-client).
Health of the agent, and per-tenant totals with a bounded label set: the
top N tenants by traffic plus one "other" series; a tenant label is a
tenant id, and no address or prefix is ever a label."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily

from agent import _counters
from agent.datapath import abi

OTHER = "other"
_LAYOUT = abi.COUNTER_LAYOUT


class TenantTotals:
    """A collector over the last scan: evaluated at scrape time, so the
    label set is exactly the current top N and "other"."""

    def __init__(self, top: int):
        self.top = top
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, float]] = {}

    def update(self, scans: dict) -> None:
        rows: dict[str, dict] = {}
        for scan in scans.values():
            everything = _counters.column_totals(scan)
            top = scan.top(self.top, by="bytes", use_rates=False)
            rest = list(everything)
            for tenant_id, _ in top:
                totals = scan.row(scan.tenant_ids.index(tenant_id))[0]
                _add(rows.setdefault(str(tenant_id), {}), totals)
                rest = [a - b for a, b in zip(rest, totals)]
            _add(rows.setdefault(OTHER, {}), rest)
        # Across interfaces the top sets may differ: keep the N largest plus other.
        ranked = sorted((k for k in rows if k != OTHER), key=lambda k: -rows[k]["bytes"])
        for extra in ranked[self.top:]:
            _merge(rows.setdefault(OTHER, {}), rows.pop(extra))
        with self._lock:
            self._rows = rows

    def collect(self):
        with self._lock:
            rows = dict(self._rows)
        packets = CounterMetricFamily("edgewarden_tenant_packets", "Packets seen per tenant (top N by bytes, and other)",
                                      labels=["tenant"])
        nbytes = CounterMetricFamily("edgewarden_tenant_bytes", "Bytes seen per tenant (top N by bytes, and other)",
                                     labels=["tenant"])
        drops = CounterMetricFamily("edgewarden_tenant_dropped_packets", "Packets dropped per tenant and verdict reason",
                                    labels=["tenant", "reason"])
        for tenant, row in rows.items():
            packets.add_metric([tenant], row["packets"])
            nbytes.add_metric([tenant], row["bytes"])
            for reason in abi.DROP_REASONS:
                if row["drops"].get(reason.name):
                    drops.add_metric([tenant, reason.name], row["drops"][reason.name])
        yield packets
        yield nbytes
        yield drops


def _add(row: dict, totals) -> None:
    rp, rb = _LAYOUT["reason_packets"], _LAYOUT["reason_bytes"]
    row["packets"] = row.get("packets", 0) + sum(totals[rp])
    row["bytes"] = row.get("bytes", 0) + sum(totals[rb])
    drops = row.setdefault("drops", {})
    for reason in abi.DROP_REASONS:
        drops[reason.name] = drops.get(reason.name, 0) + totals[rp.start + reason.value]


def _merge(into: dict, other: dict) -> None:
    into["packets"] = into.get("packets", 0) + other["packets"]
    into["bytes"] = into.get("bytes", 0) + other["bytes"]
    drops = into.setdefault("drops", {})
    for name, n in other["drops"].items():
        drops[name] = drops.get(name, 0) + n


class AgentMetrics:
    def __init__(self, top_tenants: int):
        r = self.registry = CollectorRegistry()
        self.scan_seconds = Gauge("edgewarden_scan_duration_seconds", "Duration of the last counter scan", registry=r)
        self.scanned_tenants = Gauge("edgewarden_scanned_tenants", "Tenants in the last counter scan", registry=r)
        self.map_fill = Gauge("edgewarden_map_fill_ratio", "Entries over capacity per map", ["interface", "map"],
                              registry=r)
        self.ring_lost = Counter("edgewarden_sample_ring_lost_samples", "Samples the datapath could not put into the "
                                 "ring buffer (full)", registry=r)
        self.evidence_bytes = Counter("edgewarden_evidence_written_bytes", "Bytes of evidence written", registry=r)
        self.evidence_stopped = Gauge("edgewarden_evidence_writing_stopped", "1 while evidence writing is stopped "
                                      "(disk full); enforcement goes on", registry=r)
        self.samples = Counter("edgewarden_samples", "Packet samples received from the datapath", registry=r)
        self.revision = Gauge("edgewarden_policy_revision", "Policy revision enforced", registry=r)
        self.attach_mode = Gauge("edgewarden_interface_attached", "1 per interface in its attach mode "
                                 "(native/generic, or dpdk for the DPDK engine); 0 when not enforced",
                                 ["interface", "mode"], registry=r)
        self.incidents_open = Gauge("edgewarden_incidents_open", "Incidents open now", registry=r)
        self.incidents = Counter("edgewarden_incidents", "Incidents raised", ["check"], registry=r)
        self.reloads = Counter("edgewarden_reloads", "Reloads (SIGHUP)", ["result"], registry=r)
        self.revision_apply_seconds = Gauge(
            "edgewarden_revision_apply_seconds", "Time the last controller revision took to reach the datapath, "
            "by path (delta: list entries written in place; full: policy and changed lists re-applied)",
            ["path"], registry=r)
        self.table_check_seconds = Gauge("edgewarden_table_check_seconds", "Time the last read-back of the "
                                         "block tables for the drift check took", registry=r)
        self.drift_detected = Counter("edgewarden_drift_detected", "Digest checks that found the block tables "
                                      "differing from what the agent wrote", registry=r)
        self.tenants = TenantTotals(top_tenants)
        r.register(self.tenants)
        self._server = None

    def serve(self, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)

    def set_interfaces(self, states) -> None:
        self.attach_mode.clear()
        for state in states:
            for mode in ("native", "generic", "dpdk"):
                self.attach_mode.labels(state.name, mode).set(1 if state.attached and state.mode == mode else 0)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

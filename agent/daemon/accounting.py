"""The accounting loop's scan: per-tenant rates from the live counters
(Cython core, agent._counters), checked against every tenant's thresholds
in one pass (rates_over), so 100,000 tenants scan without a Python loop
over them. What is over feeds the incident tracker; the scans feed the
metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent import _counters
from agent.daemon.config import AgentConfig, Thresholds
from agent.datapath import abi
from agent.datapath.counters import CounterMonitor

_LAYOUT = abi.COUNTER_LAYOUT
_PACKETS = [_LAYOUT["reason_packets"].start + r.value for r in abi.VerdictReason]
_BYTES = [_LAYOUT["reason_bytes"].start + r.value for r in abi.VerdictReason]
_DROPS = [_LAYOUT["reason_packets"].start + r.value for r in abi.DROP_REASONS]
_SYNS = [_LAYOUT["class_packets"].start + abi.TrafficClass.tcp_syn.value]


def check_fields(name: str) -> tuple[list[int], float]:
    """The counter fields a threshold sums, and the scale (bytes -> bits)."""
    if name == "packets_per_second":
        return _PACKETS, 1.0
    if name == "bits_per_second":
        return _BYTES, 8.0
    if name == "syns_per_second":
        return _SYNS, 1.0
    if name == "drops_per_second":
        return _DROPS, 1.0
    reason = abi.VerdictReason[name]          # drop_<reason>: that reason's packets
    return [_LAYOUT["reason_packets"].start + reason.value], 1.0


@dataclass
class ScanResult:
    started_at: float
    seconds: float
    scans: dict[str, object] = field(default_factory=dict)      # ifname -> CounterScan
    over: dict[tuple[int, str], tuple[float, float, list[str]]] = field(default_factory=dict)


class Accounting:
    def __init__(self, config: AgentConfig):
        self.monitors: dict[str, CounterMonitor] = {}
        self.configure(config)

    def configure(self, config: AgentConfig) -> None:
        names = set(config.thresholds.checks())
        for _, own in config.tenant_thresholds:
            names |= set(own.checks())
        self.checks = sorted(names)
        groups = [check_fields(n) for n in self.checks]
        self.groups = [g for g, _ in groups]
        self.scales = [s for _, s in groups]
        self.limits = self._limits(config.thresholds)
        self.overrides = {tenant_id: self._limits(own) for tenant_id, own in config.tenant_thresholds}

    def _limits(self, thresholds: Thresholds) -> list[float]:
        checks = thresholds.checks()
        return [checks.get(n, 0.0) for n in self.checks]

    def watch(self, ifname: str, maps) -> None:
        self.monitors[ifname] = CounterMonitor(maps)

    def forget(self, ifname: str) -> None:
        self.monitors.pop(ifname, None)

    def scan(self) -> ScanResult:
        started, t0 = time.time(), time.perf_counter()
        result = ScanResult(started, 0.0)
        for ifname, monitor in list(self.monitors.items()):
            scan = monitor.scan()
            result.scans[ifname] = scan
            if not self.checks or scan.interval_seconds <= 0:
                continue
            for row, g, value in _counters.rates_over(scan, self.groups, self.scales, self.limits,
                                                       self.overrides or None):
                key = (scan.tenant_ids[row], self.checks[g])
                limit = self.overrides.get(key[0], self.limits)[g]
                # The same tenant over on two interfaces: one incident, the larger rate.
                previous = result.over.get(key)
                if previous is None:
                    result.over[key] = (value, limit, [ifname])
                else:
                    result.over[key] = (max(previous[0], value), limit, previous[2] + [ifname])
        result.seconds = time.perf_counter() - t0
        return result


# Hash maps whose fill is worth watching; the LRU source buckets are full by
# design and too large to count every time.
FILL_MAPS = ("ew_vips_v4", "ew_vips_v6", "ew_vip_ports_v4", "ew_vip_ports_v6", "ew_tenants", "ew_port_blocks")


def map_fill(maps) -> dict[str, float]:
    """Entries over capacity per map (the counter array by tenant slots used)."""
    fill = {name: len(maps[name].items()) / maps[name].max_entries for name in FILL_MAPS}
    fill["ew_counters"] = (len(maps["ew_tenants"].items()) + 1) / maps["ew_counters"].max_entries
    return fill

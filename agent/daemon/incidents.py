"""Incidents from per-tenant rates: a tenant whose rate for one check (pps,
bps, SYN rate, drops per reason) goes over its threshold opens an incident,
which keeps its start, follows its peak and ends once the rate has stayed
under the threshold for `end_after` seconds. One incident per tenant and
check while the attack lasts, however many scans see it (de-duplication).
Pure logic: the accounting loop feeds it, the spool stores what it emits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Incident:
    id: str
    tenant_id: int
    check: str
    threshold: float
    started_at: float
    peak_value: float
    peak_at: float
    last_over_at: float
    interfaces: list[str] = field(default_factory=list)
    ended_at: float | None = None

    def as_record(self) -> dict:
        record = asdict(self)
        record.pop("last_over_at")
        return record


@dataclass(frozen=True)
class IncidentEvent:
    kind: str          # started | ended
    incident: Incident


class IncidentTracker:
    def __init__(self, node: str, end_after: float):
        self.node = node
        self.end_after = end_after
        self.open: dict[tuple[int, str], Incident] = {}

    def adopt(self, records: list[dict]) -> None:
        """Open incidents from the spool (a restarted agent carries them on,
        instead of opening a duplicate)."""
        for r in records:
            self.open[(r["tenant_id"], r["check"])] = Incident(
                r["id"], r["tenant_id"], r["check"], r["threshold"], r["started_at"], r["peak_value"], r["peak_at"],
                r["peak_at"], list(r.get("interfaces", [])))

    def observe(self, now: float, over: dict[tuple[int, str], tuple[float, float, list[str]]]) -> list[IncidentEvent]:
        """`over`: (tenant, check) -> (rate, threshold, interfaces) for every
        pair over its threshold in this scan."""
        events = []
        for key, (value, threshold, interfaces) in over.items():
            incident = self.open.get(key)
            if incident is None:
                tenant_id, check = key
                incident = Incident(f"{self.node}:{tenant_id}:{check}:{int(now * 1000)}", tenant_id, check, threshold,
                                    now, value, now, now, sorted(interfaces))
                self.open[key] = incident
                events.append(IncidentEvent("started", incident))
                continue
            incident.last_over_at = now
            incident.interfaces = sorted(set(incident.interfaces) | set(interfaces))
            if value > incident.peak_value:
                incident.peak_value, incident.peak_at = value, now
        for key in [k for k, i in self.open.items() if k not in over and now - i.last_over_at >= self.end_after]:
            incident = self.open.pop(key)
            incident.ended_at = incident.last_over_at
            events.append(IncidentEvent("ended", incident))
        return events

    def tenants_under_incident(self) -> set[int]:
        return {tenant_id for tenant_id, _ in self.open}

"""The agent's configuration file (TOML, see configs/agent.toml): what it
enforces where, how it accounts, where it keeps state. Validated as a whole;
every error names its key, and a bad file changes nothing."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ATTACH_MODES = ("native", "generic", "auto")
# Drops per reason are thresholded under these names: drop_<reason>.
THRESHOLD_KEYS = ("packets_per_second", "bits_per_second", "syns_per_second", "drops_per_second")


class ConfigError(ValueError):
    """A configuration file that cannot be used: says where and what."""


@dataclass(frozen=True)
class InterfaceConfig:
    name: str
    mode: str = "native"          # native | generic | auto
    allow_generic: bool = False   # fall back to generic mode if native fails

    @property
    def attach_mode(self) -> str:
        return "auto" if self.mode == "native" and self.allow_generic else self.mode


@dataclass(frozen=True)
class Thresholds:
    """Rates above which a tenant is under attack; 0 = not checked.
    drops_by_reason: verdict reason name -> packets per second."""

    packets_per_second: float = 0
    bits_per_second: float = 0
    syns_per_second: float = 0
    drops_per_second: float = 0
    drops_by_reason: tuple[tuple[str, float], ...] = ()

    def checks(self) -> dict[str, float]:
        named = {k: getattr(self, k) for k in THRESHOLD_KEYS if getattr(self, k) > 0}
        named.update({f"drop_{r}" if not r.startswith("drop_") else r: v for r, v in self.drops_by_reason if v > 0})
        return named


@dataclass(frozen=True)
class EvidenceConfig:
    directory: Path = Path("/var/lib/edgewarden/evidence")
    max_file_bytes: int = 16 * 1024 * 1024
    max_file_seconds: float = 300.0
    retention_days: float = 30.0
    retention_bytes: int = 1024 * 1024 * 1024
    samples_per_second: int = 100     # per tenant, enforced in the datapath
    min_free_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class AgentConfig:
    source: str
    node: str
    interfaces: tuple[InterfaceConfig, ...]
    policy_file: Path
    state_dir: Path = Path("/var/lib/edgewarden")
    control_socket: Path = Path("/run/edgewarden/agent.sock")
    accounting_interval: float = 1.0
    incident_end_after: float = 5.0      # quiet seconds before an incident ends
    thresholds: Thresholds = Thresholds()
    tenant_thresholds: tuple[tuple[int, Thresholds], ...] = ()
    watch_list: tuple[int, ...] = ()
    metrics_address: str = "127.0.0.1:9101"
    metrics_top_tenants: int = 20
    detach_on_stop: bool = False
    evidence: EvidenceConfig = EvidenceConfig()
    engine: str = "xdp"                  # xdp | dpdk (agent.daemon.engine_config)
    dpdk: Any = None                     # agent.dpdk.config.DpdkConfig with engine = "dpdk"

    def thresholds_for(self, tenant_id: int) -> Thresholds:
        return dict(self.tenant_thresholds).get(tenant_id, self.thresholds)

    @property
    def spool_path(self) -> Path:
        return self.state_dir / "incidents.sqlite"

    @property
    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_address.rpartition(":")
        return host.strip("[]"), int(port)


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _take(table: dict, key: str, kind, default, where: str, errs: _Errors):
    if key not in table:
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        errs.add(f"{where}.{key}", f"must be {name}, not {value!r}")
        return default
    return value


def _check_keys(table: dict, allowed: set[str], where: str, errs: _Errors) -> None:
    for key in sorted(set(table) - allowed):
        errs.add(f"{where}.{key}" if where else key, f"unknown key (known: {', '.join(sorted(allowed))})")


def _thresholds(table: Any, where: str, errs: _Errors) -> Thresholds:
    if not isinstance(table, dict):
        errs.add(where, "must be a table")
        return Thresholds()
    _check_keys(table, {*THRESHOLD_KEYS, "drops_by_reason", "tenant"}, where, errs)
    values = {k: float(_take(table, k, (int, float), 0, where, errs)) for k in THRESHOLD_KEYS}
    by_reason = _take(table, "drops_by_reason", dict, {}, where, errs)
    from agent.datapath.abi import DROP_REASONS
    known = {r.name for r in DROP_REASONS}
    reasons = []
    for reason, rate in by_reason.items():
        name = reason if reason.startswith("drop_") else f"drop_{reason}"
        if name not in known:
            errs.add(f"{where}.drops_by_reason.{reason}", f"unknown drop reason (known: {', '.join(sorted(known))})")
        elif not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate < 0:
            errs.add(f"{where}.drops_by_reason.{reason}", "must be a rate >= 0")
        else:
            reasons.append((name, float(rate)))
    for k, v in values.items():
        if v < 0:
            errs.add(f"{where}.{k}", "must be >= 0")
    return Thresholds(**values, drops_by_reason=tuple(reasons))


def config_from_document(doc: dict, source: str, base: Path | None = None) -> AgentConfig:
    """Relative paths are relative to the config file's directory."""
    errs = _Errors()
    base = base or Path.cwd()
    _check_keys(doc, {"node", "policy_file", "state_dir", "control_socket", "detach_on_stop", "interfaces",
                      "accounting", "thresholds", "watch", "metrics", "evidence", "engine", "dpdk"}, "", errs)
    from agent.daemon.engine_config import engine_section
    engine, dpdk = engine_section(doc, base, errs)

    def path(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p

    interfaces = []
    raw_ifaces = doc.get("interfaces", [])
    if engine == "dpdk":
        raw_ifaces = []          # the engine's ports are in [dpdk]
    elif not isinstance(raw_ifaces, list) or not raw_ifaces:
        errs.add("interfaces", "must list at least one interface ([[interfaces]] name = \"eth1\")")
        raw_ifaces = []
    seen = set()
    for i, table in enumerate(raw_ifaces):
        where = f"interfaces[{i}]"
        if not isinstance(table, dict):
            errs.add(where, "must be a table")
            continue
        _check_keys(table, {"name", "mode", "allow_generic"}, where, errs)
        name = _take(table, "name", str, "", where, errs)
        if not name or len(name) > 15:
            errs.add(f"{where}.name", f"must be an interface name (1..15 characters), not {name!r}")
        elif name in seen:
            errs.add(f"{where}.name", f"{name} is listed twice")
        seen.add(name)
        mode = _take(table, "mode", str, "native", where, errs)
        if mode not in ATTACH_MODES:
            errs.add(f"{where}.mode", f"must be one of {', '.join(ATTACH_MODES)}, not {mode!r}")
        interfaces.append(InterfaceConfig(name, mode, bool(_take(table, "allow_generic", bool, False, where, errs))))

    policy_file = _take(doc, "policy_file", str, "", "", errs)
    if not policy_file:
        errs.add("policy_file", "is required: the policy document (TOML) the agent enforces")

    accounting = _take(doc, "accounting", dict, {}, "", errs)
    _check_keys(accounting, {"interval_seconds", "incident_end_after_seconds"}, "accounting", errs)
    interval = float(_take(accounting, "interval_seconds", (int, float), 1.0, "accounting", errs))
    end_after = float(_take(accounting, "incident_end_after_seconds", (int, float), 5.0, "accounting", errs))
    if not 0.05 <= interval <= 3600:
        errs.add("accounting.interval_seconds", "must be between 0.05 and 3600")
    if end_after < interval:
        errs.add("accounting.incident_end_after_seconds", "must be at least the interval")

    raw_thresholds = _take(doc, "thresholds", dict, {}, "", errs)
    thresholds = _thresholds({k: v for k, v in raw_thresholds.items() if k != "tenant"}, "thresholds", errs)
    per_tenant = []
    for i, table in enumerate(raw_thresholds.get("tenant", []) if isinstance(raw_thresholds.get("tenant", []), list) else []):
        where = f"thresholds.tenant[{i}]"
        if not isinstance(table, dict) or not isinstance(table.get("id"), int):
            errs.add(where, "must be a table with an integer id")
            continue
        # A tenant's own thresholds override the defaults key by key.
        merged = {**{k: v for k, v in raw_thresholds.items() if k != "tenant"},
                  **{k: v for k, v in table.items() if k != "id"}}
        per_tenant.append((table["id"], _thresholds(merged, where, errs)))

    watch = _take(doc, "watch", dict, {}, "", errs)
    _check_keys(watch, {"tenants"}, "watch", errs)
    watch_list = _take(watch, "tenants", list, [], "watch", errs)
    if not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in watch_list):
        errs.add("watch.tenants", "must be a list of tenant ids (integers > 0)")
        watch_list = []

    metrics = _take(doc, "metrics", dict, {}, "", errs)
    _check_keys(metrics, {"address", "top_tenants"}, "metrics", errs)
    address = _take(metrics, "address", str, "127.0.0.1:9101", "metrics", errs)
    try:
        host, _, port = address.rpartition(":")
        ipaddress.ip_address(host.strip("[]"))
        if not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        errs.add("metrics.address", f"must be ADDRESS:PORT (e.g. 127.0.0.1:9101), not {address!r}")
    top = _take(metrics, "top_tenants", int, 20, "metrics", errs)
    if not 1 <= top <= 1000:
        errs.add("metrics.top_tenants", "must be between 1 and 1000 (each is a label value)")

    ev = _take(doc, "evidence", dict, {}, "", errs)
    ev_keys = {"directory": str, "max_file_bytes": int, "max_file_seconds": (int, float), "retention_days": (int, float),
               "retention_bytes": int, "samples_per_second": int, "min_free_bytes": int}
    _check_keys(ev, set(ev_keys), "evidence", errs)
    defaults = EvidenceConfig()
    ev_values = {k: _take(ev, k, kind, getattr(defaults, k), "evidence", errs) for k, kind in ev_keys.items()}
    ev_values["directory"] = path(ev_values["directory"]) if "directory" in ev else defaults.directory
    for k in ("max_file_bytes", "max_file_seconds", "retention_days", "retention_bytes", "samples_per_second"):
        if ev_values[k] <= 0:
            errs.add(f"evidence.{k}", "must be > 0")

    node = _take(doc, "node", str, "", "", errs)
    if errs.items:
        raise ConfigError(f"{source}: " + "; ".join(errs.items))
    import socket
    return AgentConfig(
        source=source, node=node or socket.gethostname(), interfaces=tuple(interfaces),
        policy_file=path(policy_file),
        state_dir=path(_take(doc, "state_dir", str, "/var/lib/edgewarden", "", errs)),
        control_socket=path(doc["control_socket"]) if isinstance(doc.get("control_socket"), str) else _default_socket(),
        accounting_interval=interval, incident_end_after=end_after, thresholds=thresholds,
        tenant_thresholds=tuple(per_tenant), watch_list=tuple(watch_list), metrics_address=address,
        metrics_top_tenants=top, detach_on_stop=bool(_take(doc, "detach_on_stop", bool, False, "", errs)),
        evidence=EvidenceConfig(**ev_values), engine=engine, dpdk=dpdk,
    )


def _default_socket() -> Path:
    from agent.daemon.control import default_socket_path
    return default_socket_path()


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the agent config ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return config_from_document(doc, str(path), path.resolve().parent)


DEFAULT_CONFIG = Path("/etc/edgewarden/agent.toml")

"""Reading and writing the policy document (TOML for people, a plain dict for
msgpack on the wire), with validation that reports every error with its
location and produces nothing unless the whole document is valid."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from agent.policy.model import (
    AMPLIFICATION_PORTS, MAX_RATE, PROTOCOL_NUMBERS, FloodPolicy, FragmentPolicy, Policy, PortRule, Rate, SynAckPolicy, Tenant, TenantState, Vip,
)

MAX_TENANT_ID = 2**32 - 1
MAX_REVISION = 2**64 - 1   # ew_config.policy_revision is a __u64
MAX_PORTS_PER_RULE = 4096

TOP_LEVEL_KEYS = {"revision", "global", "tenants"}
GLOBAL_KEYS = {"blocked_sources"}
TENANT_KEYS = {"id", "name", "state", "vips", "blocked_ports", "blocked_sources", "flood", "watch"}
RATE_KEYS = {              # document key pair -> FloodPolicy field
    ("packets_per_second", "packet_burst"): "packets",
    ("bits_per_second", "bit_burst"): "bits",
    ("syns_per_second", "syn_burst"): "syns",
    ("fragments_per_second", "fragment_burst"): "fragment_rate",
    ("source_packets_per_second", "source_packet_burst"): "per_source",
}
SOURCE_PREFIX_KEYS = {"source_prefix_v4": (8, 32), "source_prefix_v6": (16, 128)}
FLOOD_KEYS = ({"amplification", "allow_amplification_ports", "fragments", "syn_cookies", "syn_ack"} | {k for pair in RATE_KEYS for k in pair}
              | set(SOURCE_PREFIX_KEYS))
VIP_KEYS = {"address", "protocol", "port"}


class PolicyError(ValueError):
    """The document is invalid; `errors` lists every problem as 'location: what is wrong'."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {source}: {e}" for e in errors)
        super().__init__(f"policy {source} is invalid ({len(errors)} error(s)); nothing was applied:\n{lines}")


class _Collector:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}" if where else message)


def _check_keys(table: dict, allowed: set[str], where: str, errs: _Collector) -> None:
    for key in sorted(set(table) - allowed):
        errs.add(where, f"unknown key {key!r} (expected one of: {', '.join(sorted(allowed))})")


def _parse_network(text: Any, where: str, errs: _Collector):
    if not isinstance(text, str):
        errs.add(where, f"expected a CIDR string, got {type(text).__name__}")
        return None
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        errs.add(where, f"{text!r} is not an IP address or CIDR prefix")
        return None


def _parse_sources(values: Any, where: str, errs: _Collector) -> tuple:
    if not isinstance(values, list):
        errs.add(where, "expected a list of CIDR strings")
        return ()
    nets = (_parse_network(v, f"{where}[{i}]", errs) for i, v in enumerate(values))
    return tuple(n for n in nets if n is not None)


def _parse_port(value: Any, where: str, errs: _Collector) -> int | None:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        errs.add(where, f"port {value!r} is not in 1..65535")
        return None
    return value


def _parse_protocol(value: Any, where: str, errs: _Collector) -> str | None:
    if not isinstance(value, str) or value.lower() not in PROTOCOL_NUMBERS:
        errs.add(where, f"protocol {value!r} is not one of: {', '.join(PROTOCOL_NUMBERS)}")
        return None
    return value.lower()


def _parse_vip(value: Any, where: str, errs: _Collector) -> Vip | None:
    if isinstance(value, str):
        value = {"address": value}
    if not isinstance(value, dict):
        errs.add(where, "a VIP is an address string or a table {address, protocol, port}")
        return None
    _check_keys(value, VIP_KEYS, where, errs)
    try:
        address = ipaddress.ip_address(str(value.get("address", "")).strip())
    except ValueError:
        errs.add(where, f"address {value.get('address')!r} is not an IP address")
        return None
    if getattr(address, "scope_id", None):
        # The datapath matches addresses only; a zone would make two spellings of one VIP.
        errs.add(where, f"address {value.get('address')!r} has a zone index; give the address alone")
        return None
    has_proto, has_port = "protocol" in value, "port" in value
    if has_proto != has_port:
        errs.add(where, "protocol and port go together: give both, or neither for every port")
        return None
    if not has_proto:
        return Vip(address)
    protocol = _parse_protocol(value["protocol"], where, errs)
    port = _parse_port(value["port"], where, errs)
    return Vip(address, protocol, port) if protocol and port else None


def _parse_port_rule(value: Any, where: str, errs: _Collector) -> PortRule | None:
    """'tcp/25' or 'udp/6000-6010'."""
    if not isinstance(value, str) or "/" not in value:
        errs.add(where, f"{value!r} is not a port rule like 'tcp/25' or 'udp/6000-6010'")
        return None
    proto_text, _, span = value.partition("/")
    protocol = _parse_protocol(proto_text.strip(), where, errs)
    first_text, dash, last_text = span.strip().partition("-")
    first = _parse_port(first_text, where, errs)
    last = _parse_port(last_text, where, errs) if dash else first
    if protocol is None or first is None or last is None:
        return None
    if last < first:
        errs.add(where, f"port range {span!r} runs backwards")
        return None
    if last - first + 1 > MAX_PORTS_PER_RULE:
        errs.add(where, f"port range {span!r} covers more than {MAX_PORTS_PER_RULE} ports")
        return None
    return PortRule(protocol, first, last)


def _parse_rate(table: dict, keys: tuple[str, str], where: str, errs: _Collector) -> Rate | None:
    values = []
    for key in keys:
        value = table.get(key, 0)
        limit = MAX_RATE * (8 if key.startswith("bit") else 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            errs.add(where, f"{key} = {value!r} must be an integer in 0..{limit}")
            return None
        values.append(value)
    per_second, burst = values
    if keys[0].startswith("bit") and (per_second % 8 or burst % 8):
        # the datapath counts bytes: a remainder would be lost, and a burst
        # under 8 bits would compile to a bucket that holds nothing
        errs.add(where, f"{keys[0]} and {keys[1]} must be multiples of 8 (whole bytes)")
        return None
    if per_second and not burst:
        errs.add(where, f"{keys[0]} needs {keys[1]} of at least 1 (a bucket that holds nothing passes nothing)")
        return None
    return Rate(per_second, burst)


def _parse_flood(table: Any, where: str, errs: _Collector) -> FloodPolicy | None:
    if not isinstance(table, dict):
        errs.add(where, "expected a table")
        return None
    _check_keys(table, FLOOD_KEYS, where, errs)
    amplification = table.get("amplification", "drop")
    if amplification not in ("drop", "pass"):
        errs.add(where, f"amplification = {amplification!r} is not one of: drop, pass")
    allowed = table.get("allow_amplification_ports", [])
    if not isinstance(allowed, list):
        errs.add(where, "allow_amplification_ports must be a list of ports")
        allowed = []
    def is_amplification_port(port) -> bool:
        return isinstance(port, int) and not isinstance(port, bool) and port in AMPLIFICATION_PORTS

    for port in allowed:
        if not is_amplification_port(port):
            errs.add(where, f"allow_amplification_ports: {port!r} is not an amplification port "
                            f"({', '.join(str(p) for p in sorted(AMPLIFICATION_PORTS))})")
    try:
        fragments = FragmentPolicy(table.get("fragments", "pass"))
    except ValueError:
        errs.add(where, f"fragments = {table.get('fragments')!r} is not one of: "
                        f"{', '.join(f.value for f in FragmentPolicy)}")
        fragments = None
    syn_cookies = table.get("syn_cookies", False)
    if not isinstance(syn_cookies, bool):
        errs.add(where, f"syn_cookies = {syn_cookies!r} must be true or false")
    try:
        syn_ack = SynAckPolicy(table.get("syn_ack", SynAckPolicy.DROP.value))
    except ValueError:
        errs.add(where, f"syn_ack = {table.get('syn_ack')!r} is not one of: {', '.join(p.value for p in SynAckPolicy)}")
        syn_ack = None
    rates = {field: _parse_rate(table, keys, where, errs) for keys, field in RATE_KEYS.items()}
    if fragments is FragmentPolicy.LIMIT and rates["fragment_rate"] is not None and rates["fragment_rate"].unlimited:
        errs.add(where, 'fragments = "limit" needs fragments_per_second and fragment_burst')
    prefixes = {}
    for key, (low, high) in SOURCE_PREFIX_KEYS.items():
        value = table.get(key, getattr(FloodPolicy(), key))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            errs.add(where, f"{key} = {value!r} must be an integer in {low}..{high}")
            value = None
        prefixes[key] = value
    if amplification not in ("drop", "pass") or fragments is None or None in rates.values() or \
            None in prefixes.values() or not all(is_amplification_port(p) for p in allowed) or \
            not isinstance(syn_cookies, bool) or syn_ack is None:
        return None
    return FloodPolicy(amplification == "drop", tuple(sorted(set(allowed))), fragments, **rates, **prefixes,
                       syn_cookies=syn_cookies, syn_ack=syn_ack)


def _parse_tenant(table: Any, where: str, errs: _Collector) -> Tenant | None:
    if not isinstance(table, dict):
        errs.add(where, "expected a table")
        return None
    _check_keys(table, TENANT_KEYS, where, errs)
    tenant_id = table.get("id")
    if isinstance(tenant_id, bool) or not isinstance(tenant_id, int) or not 1 <= tenant_id <= MAX_TENANT_ID:
        errs.add(where, f"id {tenant_id!r} must be an integer in 1..{MAX_TENANT_ID} (0 is the unassigned tenant)")
        tenant_id = None
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        errs.add(where, "name must be a non-empty string")
        name = None
    state_text = table.get("state", "active")
    try:
        state = TenantState(state_text)
    except ValueError:
        errs.add(where, f"state {state_text!r} is not one of: {', '.join(s.value for s in TenantState)}")
        state = None
    vips_in = table.get("vips", [])
    ports_in = table.get("blocked_ports", [])
    if not isinstance(vips_in, list):
        errs.add(f"{where}.vips", "expected a list")
        vips_in = []
    if not isinstance(ports_in, list):
        errs.add(f"{where}.blocked_ports", "expected a list")
        ports_in = []
    vips = [_parse_vip(v, f"{where}.vips[{i}]", errs) for i, v in enumerate(vips_in)]
    ports = [_parse_port_rule(p, f"{where}.blocked_ports[{i}]", errs) for i, p in enumerate(ports_in)]
    sources = _parse_sources(table.get("blocked_sources", []), f"{where}.blocked_sources", errs)
    flood = _parse_flood(table.get("flood", {}), f"{where}.flood", errs)
    watch = table.get("watch", False)
    if not isinstance(watch, bool):
        errs.add(where, f"watch {watch!r} must be true or false")
        watch = None
    if tenant_id is None or name is None or state is None or None in vips or None in ports or flood is None \
            or watch is None:
        return None
    return Tenant(tenant_id, name.strip(), state, tuple(vips), tuple(ports), sources, flood, watch)


def policy_from_document(doc: Any, source: str = "<document>") -> Policy:
    """Validate a whole document; raise PolicyError listing every problem."""
    errs = _Collector()
    if not isinstance(doc, dict):
        raise PolicyError(source, ["top level: the document must be a table"])
    _check_keys(doc, TOP_LEVEL_KEYS, "top level", errs)
    revision = doc.get("revision", 0)
    if isinstance(revision, bool) or not isinstance(revision, int) or not 0 <= revision <= MAX_REVISION:
        errs.add("revision", f"{revision!r} must be an integer in 0..{MAX_REVISION}")
    global_table = doc.get("global", {})
    if not isinstance(global_table, dict):
        errs.add("global", "expected a table")
        global_table = {}
    _check_keys(global_table, GLOBAL_KEYS, "global", errs)
    global_sources = _parse_sources(global_table.get("blocked_sources", []), "global.blocked_sources", errs)

    tenants_in = doc.get("tenants", [])
    if not isinstance(tenants_in, list):
        errs.add("tenants", "expected an array of tables ([[tenants]])")
        tenants_in = []
    tenants = []
    seen_ids: dict[int, str] = {}
    seen_names: dict[str, str] = {}
    vip_owner: dict[Vip, str] = {}
    for i, table in enumerate(tenants_in):
        where = f"tenants[{i}]"
        tenant = _parse_tenant(table, where, errs)
        if tenant is None:
            continue
        where = f"tenants[{i}] ({tenant.name!r})"
        if tenant.id in seen_ids:
            errs.add(where, f"id {tenant.id} is already used by {seen_ids[tenant.id]}")
        if tenant.name in seen_names:
            errs.add(where, f"name {tenant.name!r} is already used by {seen_names[tenant.name]}")
        seen_ids[tenant.id] = seen_names[tenant.name] = where
        for vip in tenant.vips:
            if vip in vip_owner:
                errs.add(where, f"VIP {vip} is already assigned to {vip_owner[vip]}")
            vip_owner[vip] = where
        tenants.append(tenant)
    if errs.errors:
        raise PolicyError(source, errs.errors)
    return Policy(revision=revision, tenants=tuple(tenants), blocked_sources=global_sources)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise PolicyError(str(path), [f"cannot read: {err.strerror}"]) from None
    except UnicodeDecodeError as err:
        raise PolicyError(str(path), [f"not UTF-8 text (byte {err.start}); TOML documents are UTF-8"]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(str(path), [f"not valid TOML: {err}"]) from None
    return policy_from_document(doc, str(path))


def policy_to_document(policy: Policy) -> dict:
    """The canonical document; policy_from_document(policy_to_document(p)) == p."""

    def vip_doc(vip: Vip):
        if vip.protocol is None:
            return str(vip.address)
        return {"address": str(vip.address), "protocol": vip.protocol, "port": vip.port}

    def flood_doc(flood: FloodPolicy) -> dict:
        doc = {"amplification": "drop" if flood.drop_amplification else "pass",
               "allow_amplification_ports": list(flood.allow_amplification_ports),
               "fragments": flood.fragments.value,
               "syn_cookies": flood.syn_cookies, "syn_ack": flood.syn_ack.value}
        for (rate_key, burst_key), field in RATE_KEYS.items():
            doc[rate_key], doc[burst_key] = getattr(flood, field).per_second, getattr(flood, field).burst
        for key in SOURCE_PREFIX_KEYS:
            doc[key] = getattr(flood, key)
        return doc

    def tenant_doc(t: Tenant) -> dict:
        doc = {
            "id": t.id,
            "name": t.name,
            "state": t.state.value,
            "vips": [vip_doc(v) for v in t.vips],
            "blocked_ports": [str(r) for r in t.blocked_ports],
            "blocked_sources": [str(n) for n in t.blocked_sources],
        }
        if t.flood != FloodPolicy():
            doc["flood"] = flood_doc(t.flood)
        if t.watch:   # written only when set, so documents without a watch list read as before
            doc["watch"] = True
        return doc

    return {
        "revision": policy.revision,
        "global": {"blocked_sources": [str(n) for n in policy.blocked_sources]},
        "tenants": [tenant_doc(t) for t in policy.tenants],
    }


def policy_to_toml(policy: Policy) -> str:
    return tomli_w.dumps(policy_to_document(policy))


def save_policy(policy: Policy, path: str | Path) -> None:
    """Write atomically: a crash leaves the old document or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as out:
        out.write(policy_to_toml(policy))
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)

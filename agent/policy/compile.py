"""Compiles a validated policy into the exact contents of the datapath maps
(keys and values as bytes in the ABI layouts), so applying a policy is a
diff between two sets of map entries."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from agent._libbpf import ffi
from agent.blocklist import compile_prefixes
from agent.datapath import abi
from agent.policy.model import PROTOCOL_NUMBERS, Policy, Tenant, Vip

GLOBAL_LIST_ID = 0  # list id of entries from the policy's own block lists


def _pack(c_type: str, init) -> bytes:
    return bytes(ffi.buffer(ffi.new(c_type + " *", init)))


def pack_u32(value: int) -> bytes:
    return _pack("__u32", value)


def vip_key(vip: Vip) -> bytes:
    family = abi.FAMILY_IPV4 if vip.address.version == 4 else abi.FAMILY_IPV6
    return _pack("struct ew_vip_key", {
        "addr": list(vip.address.packed.ljust(16, b"\0")),
        "port": socket.htons(vip.port or 0),
        "proto": PROTOCOL_NUMBERS[vip.protocol] if vip.protocol else 0,
        "family": family,
    })


def tenant_value(tenant: Tenant) -> bytes:
    flags = 0
    if tenant.suspended:
        flags |= abi.TENANT_SUSPENDED
    if tenant.blocked_sources:
        flags |= abi.TENANT_HAS_SOURCE_BLOCKS
    if tenant.blocked_ports:
        flags |= abi.TENANT_HAS_PORT_BLOCKS
    return _pack("struct ew_tenant", {"flags": flags})


def port_key(tenant_id: int, protocol: str, port: int) -> bytes:
    return _pack("struct ew_port_key", {
        "tenant_id": tenant_id, "port": socket.htons(port), "proto": PROTOCOL_NUMBERS[protocol],
    })


def block_value(list_id: int = GLOBAL_LIST_ID) -> bytes:
    return _pack("struct ew_block_value", {"list_id": list_id})


def global_block_key(net) -> tuple[str, bytes]:
    if net.version == 4:
        return "ew_gblock_v4", _pack("struct ew_lpm_v4_key", {"prefixlen": net.prefixlen, "addr": list(net.network_address.packed)})
    return "ew_gblock_v6", _pack("struct ew_lpm_v6_key", {"prefixlen": net.prefixlen, "addr": list(net.network_address.packed)})


def tenant_block_key(tenant_id: int, net) -> tuple[str, bytes]:
    tenant_be = list(tenant_id.to_bytes(4, "big"))
    if net.version == 4:
        return "ew_tblock_v4", _pack("struct ew_tenant_lpm_v4_key", {
            "prefixlen": 32 + net.prefixlen, "tenant_id": tenant_be, "addr": list(net.network_address.packed)})
    return "ew_tblock_v6", _pack("struct ew_tenant_lpm_v6_key", {
        "prefixlen": 32 + net.prefixlen, "tenant_id": tenant_be, "addr": list(net.network_address.packed)})


def config_value(revision: int, flags: int) -> bytes:
    return _pack("struct ew_config", {"policy_revision": revision, "flags": flags})


@dataclass
class CompiledPolicy:
    """Desired contents of every policy map; counters are not policy and are not here."""

    revision: int
    maps: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    tenant_ids: frozenset[int] = frozenset()

    def entry_counts(self) -> dict[str, int]:
        return {name: len(entries) for name, entries in self.maps.items()}


POLICY_MAPS = ("ew_gblock_v4", "ew_gblock_v6", "ew_tblock_v4", "ew_tblock_v6",
               "ew_port_blocks", "ew_tenants", "ew_vips", "ew_config")


def compile_policy(policy: Policy) -> CompiledPolicy:
    maps: dict[str, dict[bytes, bytes]] = {name: {} for name in POLICY_MAPS}
    for net in compile_prefixes(policy.blocked_sources):
        name, key = global_block_key(net)
        maps[name][key] = block_value()
    for tenant in policy.tenants:
        maps["ew_tenants"][pack_u32(tenant.id)] = tenant_value(tenant)
        for vip in tenant.vips:
            maps["ew_vips"][vip_key(vip)] = pack_u32(tenant.id)
        for rule in tenant.blocked_ports:
            for port in rule.ports():
                maps["ew_port_blocks"][port_key(tenant.id, rule.protocol, port)] = b"\x01"
        for net in compile_prefixes(tenant.blocked_sources):
            name, key = tenant_block_key(tenant.id, net)
            maps[name][key] = block_value()
    flags = (abi.CONFIG_GLOBAL_V4_BLOCKS if maps["ew_gblock_v4"] else 0) | (
        abi.CONFIG_GLOBAL_V6_BLOCKS if maps["ew_gblock_v6"] else 0)
    maps["ew_config"][pack_u32(0)] = config_value(policy.revision, flags)
    return CompiledPolicy(policy.revision, maps, frozenset(t.id for t in policy.tenants))


def decode_global_block_key(name: str, key: bytes):
    """Inverse of global_block_key, for listing what is in a live map."""
    struct = ffi.from_buffer("struct ew_lpm_v4_key *" if name.endswith("v4") else "struct ew_lpm_v6_key *", key)
    return ipaddress.ip_network((bytes(struct.addr), struct.prefixlen))


def decode_tenant_block_key(name: str, key: bytes):
    struct = ffi.from_buffer("struct ew_tenant_lpm_v4_key *" if name.endswith("v4") else "struct ew_tenant_lpm_v6_key *", key)
    return int.from_bytes(bytes(struct.tenant_id), "big"), ipaddress.ip_network((bytes(struct.addr), struct.prefixlen - 32))

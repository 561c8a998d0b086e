"""Python view of native/include/edgewarden_abi.h: traffic classes, verdict
reasons and constants, all read from the compiled cffi module so the header
stays the only definition."""

import enum
from dataclasses import dataclass

from agent._libbpf import ffi, lib
from agent.policy import model


def _enum_from_c(name: str, c_type: str, prefix: str, *, skip: tuple[str, ...] = ()) -> type[enum.IntEnum]:
    members = {
        c_name[len(prefix):].lower(): value
        for value, c_name in sorted(ffi.typeof(c_type).elements.items())
        if c_name not in skip
    }
    return enum.IntEnum(name, members)


TrafficClass = _enum_from_c("TrafficClass", "enum ew_traffic_class", "EW_CLASS_", skip=("EW_CLASS_COUNT",))
VerdictReason = _enum_from_c(
    "VerdictReason", "enum ew_verdict_reason", "EW_REASON_", skip=("EW_REASON_COUNT", "EW_REASON_SLOTS")
)

CLASS_COUNT = lib.EW_CLASS_COUNT
REASON_SLOTS = lib.EW_REASON_SLOTS
DROP_REASONS = frozenset(r for r in VerdictReason if r.name.startswith("drop_"))
# The packet was answered from XDP (XDP_TX) instead of passed or dropped.
ANSWER_REASONS = frozenset(r for r in VerdictReason if r.name.startswith("answer_"))


def xdp_action(reason: "VerdictReason") -> int:
    """The XDP return code of a verdict reason (bpf/verdict.h reason_action)."""
    if reason in DROP_REASONS:
        return lib.XDP_DROP
    if reason in ANSWER_REASONS:
        return lib.XDP_TX
    return lib.XDP_PASS


def action_name(reason: "VerdictReason") -> str:
    return {lib.XDP_DROP: "drop", lib.XDP_TX: "answer", lib.XDP_PASS: "pass"}[xdp_action(reason)]

TENANT_UNASSIGNED = lib.EW_TENANT_UNASSIGNED
TENANT_SUSPENDED = lib.EW_TENANT_SUSPENDED
TENANT_HAS_SOURCE_BLOCKS = lib.EW_TENANT_HAS_SOURCE_BLOCKS
TENANT_HAS_PORT_BLOCKS = lib.EW_TENANT_HAS_PORT_BLOCKS
CONFIG_GLOBAL_V4_BLOCKS = lib.EW_CONFIG_GLOBAL_V4_BLOCKS
CONFIG_GLOBAL_V6_BLOCKS = lib.EW_CONFIG_GLOBAL_V6_BLOCKS
FAMILY_IPV4 = lib.EW_FAMILY_IPV4
FAMILY_IPV6 = lib.EW_FAMILY_IPV6
MAX_VLAN_TAGS = lib.EW_MAX_VLAN_TAGS
MAX_IPV6_EXT_HEADERS = lib.EW_MAX_IPV6_EXT_HEADERS

COUNTER_FIELDS = ffi.sizeof("struct ew_counters") // 8

BLOCK_NODE_FULL = lib.EW_BLOCK_NODE_FULL
BLOCK_LEVEL_16 = lib.EW_BLOCK_LEVEL_16
BLOCK_LEVEL_24 = lib.EW_BLOCK_LEVEL_24
VIP_HAS_PORT_VIPS = lib.EW_VIP_HAS_PORT_VIPS
MAX_TENANTS = lib.EW_MAX_TENANTS
TENANT_HAS_FLOOD_POLICY = lib.EW_TENANT_HAS_FLOOD_POLICY
TENANT_PORT_RANGES = lib.EW_TENANT_PORT_RANGES
VIP_PORT_RANGES = lib.EW_VIP_PORT_RANGES
PREFILTER_V4_ENTRIES = lib.EW_PREFILTER_V4_ENTRIES
HOST_BITS_V4_ENTRIES = lib.EW_HOST_BITS_V4_ENTRIES
HOST_BITS_VALID = lib.EW_HOST_BITS_VALID
HOST_BITS_TENANT_SPREAD = lib.EW_HOST_BITS_TENANT_SPREAD
TENANT_SAMPLED = lib.EW_TENANT_SAMPLED
SAMPLE_BYTES = lib.EW_SAMPLE_BYTES
FLOOD_DROP_AMPLIFICATION = lib.EW_FLOOD_DROP_AMPLIFICATION
FLOOD_DROP_FRAGMENTS = lib.EW_FLOOD_DROP_FRAGMENTS
FLOOD_LIMIT_FRAGMENTS = lib.EW_FLOOD_LIMIT_FRAGMENTS
FLOOD_HAS_LIMITS = lib.EW_FLOOD_HAS_LIMITS
FLOOD_SYN_COOKIES = lib.EW_FLOOD_SYN_COOKIES
FLOOD_SYN_ACK_DROP = lib.EW_FLOOD_SYN_ACK_DROP
FLOOD_SYN_ACK_TRACK = lib.EW_FLOOD_SYN_ACK_TRACK
FLOOD_COARSE_CLOCK = lib.EW_FLOOD_COARSE_CLOCK
COARSE_CLOCK_NS = lib.EW_COARSE_CLOCK_NS
SYNACK_TCP_LEN = lib.EW_SYNACK_TCP_LEN
SYNACK_TCP_LEN_TS = lib.EW_SYNACK_TCP_LEN_TS
SYNACK_TTL = lib.EW_SYNACK_TTL
SYNPROXY_WSCALE = lib.EW_SYNPROXY_WSCALE
BucketKind = _enum_from_c("BucketKind", "enum ew_bucket_kind", "EW_BUCKET_", skip=("EW_BUCKET_KINDS",))
BUCKET_KINDS = lib.EW_BUCKET_KINDS
# Amplification source port -> its bit in ew_flood_policy.amplification_allowed
# (derived from the header in the pure-Python policy package, which needs it).
AMPLIFICATION_PORTS = model.AMPLIFICATION_PORTS

# Map name -> (key C type, value C type), as declared in bpf/maps.h.
MAP_LAYOUTS: dict[str, tuple[str, str]] = {
    "ew_vips_v4": ("__u32", "struct ew_vip"),
    "ew_vips_v6": ("struct ew_vip_v6_key", "struct ew_vip"),
    "ew_vip_ports_v4": ("struct ew_vip_port_v4_key", "struct ew_vip"),
    "ew_vip_ports_v6": ("struct ew_vip_port_v6_key", "struct ew_vip"),
    "ew_tenants": ("__u32", "struct ew_tenant"),
    "ew_port_blocks": ("struct ew_port_key", "__u8"),
    "ew_gblock_v4": ("__u32", "__u32"),
    "ew_tblock_v4": ("__u32", "__u32"),
    "ew_gblock_v6": ("__u32", "__u32"),
    "ew_tblock_v6": ("__u32", "__u32"),
    "ew_counters": ("__u32", "struct ew_counters"),
    "ew_config": ("__u32", "struct ew_config"),
    "ew_flood_policies": ("__u32", "struct ew_flood_policy"),
    "ew_buckets": ("__u32", "struct ew_bucket"),
    "ew_bucket_shares": ("__u32", "struct ew_bucket_share"),
    "ew_source_buckets": ("struct ew_source_key", "struct ew_source_bucket"),
    "ew_source_ways_v4": ("__u32", "struct ew_source_way_v4"),
    "ew_sample_config": ("__u32", "struct ew_sample_config"),
    "ew_sample_budget": ("__u32", "struct ew_sample_budget"),
    "ew_prefilter_v4": ("__u32", "struct ew_prefilter_v4"),
    "ew_vip_heads_v4": ("__u32", "struct ew_vip_head_bucket"),
    "ew_slot_tenants": ("__u32", "struct ew_slot_tenant"),
    "ew_host_bits_v4": ("__u32", "struct ew_host_bits_v4"),
    "ew_thost_bits_v4": ("__u32", "struct ew_host_bits_v4"),
}
# Maps pinned beside those above that have no key/value layout (the sample ring buffer).
RING_MAPS = ("ew_samples",)
# Array maps hold every index; "removing" an entry means writing zeroes.
ARRAY_MAPS = frozenset({"ew_flood_policies"})
# ew_config and ew_flood_policies are pinned as single-slot map-in-maps whose
# inner array holds the entries of MAP_LAYOUTS (agent.datapath.policy_arrays):
# POLICY_ARRAYS, below, says the inner arrays.
PERCPU_MAPS = frozenset({"ew_counters", "ew_sample_budget", "ew_bucket_shares"})


@dataclass(frozen=True)
class InnerTable:
    """The inner map behind one slot of a swappable (map-in-map) table; must
    match the template in bpf/maps.h, or the kernel refuses the swap."""

    map_type: int
    key_type: str
    value_type: str
    max_entries: int
    map_flags: int = lib.BPF_F_NO_PREALLOC


SWAPPABLE_TABLES: dict[str, InnerTable] = {
    "ew_gblock_v4": InnerTable(lib.BPF_MAP_TYPE_HASH, "__u32", "struct ew_block_node", lib.EW_MAX_BLOCK_NODES_V4),
    "ew_tblock_v4": InnerTable(lib.BPF_MAP_TYPE_HASH, "struct ew_tenant_block_key", "struct ew_block_node",
                               lib.EW_MAX_TENANT_BLOCK_NODES_V4),
    "ew_gblock_v6": InnerTable(lib.BPF_MAP_TYPE_LPM_TRIE, "struct ew_lpm_v6_key", "struct ew_block_value",
                               lib.EW_MAX_SOURCE_BLOCKS_V6),
    "ew_tblock_v6": InnerTable(lib.BPF_MAP_TYPE_LPM_TRIE, "struct ew_tenant_lpm_v6_key", "struct ew_block_value",
                               lib.EW_MAX_SOURCE_BLOCKS_V6),
}


def _counter_layout() -> dict[str, slice]:
    """Field name -> slice of u64 indexes inside struct ew_counters."""
    layout = {}
    for name, field in ffi.typeof("struct ew_counters").fields:
        start = field.offset // 8
        layout[name] = slice(start, start + field.type.length)
    return layout


COUNTER_LAYOUT = _counter_layout()


# The policy arrays' inner maps (bpf/maps.h EW_INNER_ARRAY_TEMPLATE): arrays
# take no flags, and the flood table's entries are the loader's tenant
# capacity (EW_MAX_TENANTS by default).
POLICY_ARRAYS: dict[str, InnerTable] = {
    "ew_config": InnerTable(lib.BPF_MAP_TYPE_ARRAY, "__u32", "struct ew_config", 1, 0),
    "ew_flood_policies": InnerTable(lib.BPF_MAP_TYPE_ARRAY, "__u32", "struct ew_flood_policy", lib.EW_MAX_TENANTS, 0),
}

"""Pure-Python reference model of the datapath: how a frame is parsed,
which tenant it belongs to, which verdict reason it gets and what it adds
to the counters. It works from the policy document itself, not from the
compiled maps, so tests that hold the XDP program to it check the compiler,
the map layouts and the program together. Precedence of reasons:
global source block > tenant suspended > tenant source block > malformed >
blocked destination port > amplification source port > dropped fragment >
SYN-ACK without connection > segment without connection or cookie (SYN-cookie
mode) > per-source rate > SYN rate > fragment rate > byte/packet rate > SYN
answered with a cookie > pass. Token buckets are state: ReferenceBuckets
holds it, with the datapath's exact arithmetic. Which connections conntrack
knows and which cookies the kernel would accept are the kernel's secrets:
TcpState says them (by default: none, as in BPF_PROG_TEST_RUN on frames
with made-up addresses; a conntrack that cannot answer, absent or failing,
counts as knowing the connection: the datapath leaves such segments to the
kernel). Headers end where the IP length says: Ethernet padding after the
datagram is never parsed as a header."""

from __future__ import annotations

import ipaddress
import struct
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.datapath.abi import (
    AMPLIFICATION_PORTS, DROP_REASONS, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, TENANT_UNASSIGNED, TrafficClass,
    VerdictReason, xdp_action,
)
from agent.policy.model import PROTOCOL_NUMBERS, FragmentPolicy, Policy, Rate, SynAckPolicy

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8)
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
IPV6_EXTENSION_HEADERS = (0, 43, 44, 60)   # hop-by-hop, routing, fragment, destination options


@dataclass(frozen=True)
class PacketFacts:
    """What the parser learned; `family` 0 means no usable IP header."""

    length: int
    family: int = 0
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    l4_proto: int = 0
    dport: int | None = None        # TCP/UDP destination port when the header was read
    sport: int | None = None
    fragment: str = "none"          # "none" | "first" | "nonfirst"
    malformed: bool = False
    l4_parsed: bool = False
    tcp_flags: int = 0
    non_ip: bool = False            # well-formed frame of another ethertype
    ipv6_extension_headers: int = 0

    @property
    def traffic_class(self) -> TrafficClass:
        if self.family == 0 or self.malformed:
            return TrafficClass.other
        if self.fragment != "none":
            return TrafficClass.fragment
        if not self.l4_parsed:
            return TrafficClass.other
        if self.l4_proto == TCP:
            syn_only = (self.tcp_flags & 0x12) == 0x02
            return TrafficClass.tcp_syn if syn_only else TrafficClass.tcp_other
        if self.l4_proto == UDP:
            return TrafficClass.udp
        return TrafficClass.icmp


def parse_frame(frame: bytes) -> PacketFacts:
    n = len(frame)
    if n < 14:
        return PacketFacts(n)
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    offset = 14
    for _ in range(MAX_VLAN_TAGS):
        if ethertype not in VLAN_TPIDS:
            break
        if offset + 4 > n:
            return PacketFacts(n)
        ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
        offset += 4
    if ethertype in VLAN_TPIDS:         # deeper stack than we inspect
        return PacketFacts(n)
    if ethertype == ETH_P_IP:
        return _parse_ipv4(frame, offset)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(frame, offset)
    return PacketFacts(n, non_ip=True)


def _parse_ipv4(frame: bytes, offset: int) -> PacketFacts:
    n = len(frame)
    if offset + 20 > n or frame[offset] >> 4 != 4:
        return PacketFacts(n)
    ihl = (frame[offset] & 0x0F) * 4
    total_length = struct.unpack_from("!H", frame, offset + 2)[0]
    proto = frame[offset + 9]
    frag_field = struct.unpack_from("!H", frame, offset + 6)[0]
    base = dict(length=n, family=4, l4_proto=proto,
                src=ipaddress.IPv4Address(frame[offset + 12:offset + 16]),
                dst=ipaddress.IPv4Address(frame[offset + 16:offset + 20]))
    # The datagram ends where tot_len says: what follows is Ethernet padding.
    if ihl < 20 or total_length < ihl or offset + total_length > n:
        return PacketFacts(**base, malformed=True)
    end = offset + total_length
    if frag_field & 0x1FFF:
        fragment = "nonfirst"
    elif frag_field & 0x2000:
        fragment = "first"
    else:
        fragment = "none"
    return _parse_l4(frame, offset + ihl, end, base, fragment)


def _parse_ipv6(frame: bytes, offset: int) -> PacketFacts:
    n = len(frame)
    if offset + 40 > n or frame[offset] >> 4 != 6:
        return PacketFacts(n)
    base = dict(length=n, family=6,
                src=ipaddress.IPv6Address(frame[offset + 8:offset + 24]),
                dst=ipaddress.IPv6Address(frame[offset + 24:offset + 40]))
    next_header = frame[offset + 6]
    pos = offset + 40
    end = pos + struct.unpack_from("!H", frame, offset + 4)[0]    # payload_len: padding follows
    if end > n:
        return PacketFacts(**base, malformed=True)
    fragment = "none"
    for walked in range(MAX_IPV6_EXT_HEADERS):
        if next_header not in IPV6_EXTENSION_HEADERS:
            break
        base["ipv6_extension_headers"] = walked + 1
        if pos + 8 > end:      # every extension header is at least 8 bytes
            return PacketFacts(**base, l4_proto=next_header, malformed=True)
        if next_header == 44:
            following = frame[pos]
            frag_field = struct.unpack_from("!H", frame, pos + 2)[0]
            pos += 8
            if frag_field & 0xFFF8:
                return PacketFacts(**base, l4_proto=following, fragment="nonfirst")
            if frag_field & 1:
                fragment = "first"
            next_header = following
        else:
            if pos + (frame[pos + 1] + 1) * 8 > end:
                return PacketFacts(**base, l4_proto=next_header, malformed=True)
            following = frame[pos]
            pos += (frame[pos + 1] + 1) * 8
            next_header = following
    if next_header in IPV6_EXTENSION_HEADERS:   # chain longer than we walk
        return PacketFacts(**base, l4_proto=next_header, fragment=fragment, malformed=True)
    return _parse_l4(frame, pos, end, dict(base, l4_proto=next_header), fragment)


def _parse_l4(frame: bytes, pos: int, end: int, base: dict, fragment: str) -> PacketFacts:
    """The transport header at `pos`, which must fit in the datagram (up to `end`)."""
    n = end
    proto, family = base["l4_proto"], base["family"]
    if fragment == "nonfirst":
        return PacketFacts(**base, fragment=fragment)
    if proto == TCP:
        if pos + 20 > n:
            return PacketFacts(**base, fragment=fragment, malformed=True)
        data_offset = (frame[pos + 12] >> 4) * 4
        if data_offset < 20 or pos + data_offset > n:
            return PacketFacts(**base, fragment=fragment, malformed=True)
        sport, dport = struct.unpack_from("!HH", frame, pos)
        return PacketFacts(**base, fragment=fragment, l4_parsed=True, dport=dport, sport=sport,
                           tcp_flags=frame[pos + 13])
    if proto == UDP:
        if pos + 8 > n:
            return PacketFacts(**base, fragment=fragment, malformed=True)
        sport, dport = struct.unpack_from("!HH", frame, pos)
        return PacketFacts(**base, fragment=fragment, l4_parsed=True, dport=dport, sport=sport)
    if (proto == ICMP and family == 4) or (proto == ICMPV6 and family == 6):
        if pos + 4 > n:
            return PacketFacts(**base, fragment=fragment, malformed=True)
        return PacketFacts(**base, fragment=fragment, l4_parsed=True)
    return PacketFacts(**base, fragment=fragment)


def find_tenant(policy: Policy, facts: PacketFacts) -> int:
    if facts.family == 0:
        return TENANT_UNASSIGNED
    port_known = facts.l4_parsed and facts.l4_proto in (TCP, UDP)
    any_port_owner = TENANT_UNASSIGNED
    for tenant in policy.tenants:
        for vip in tenant.vips:
            if vip.address != facts.dst:
                continue
            if vip.protocol is None:
                any_port_owner = tenant.id
            elif port_known and PROTOCOL_NUMBERS[vip.protocol] == facts.l4_proto and vip.port == facts.dport:
                return tenant.id
    return any_port_owner


def _source_in(networks, address) -> bool:
    return any(address.version == net.version and address in net for net in networks)


NS_PER_SECOND = 10**9


@dataclass
class TokenBucket:
    """The datapath's bucket (bpf/token_bucket.h token_take, bucket_take):
    tokens in unit-nanoseconds; never used (last_ns 0) means full."""

    tokens: int = 0
    last_ns: int = 0

    def refill(self, rate: int, burst: int, now_ns: int) -> int:
        """The tokens after refilling to now_ns (token_refill); the clock is kept, the tokens are not."""
        capacity = burst * NS_PER_SECOND
        tokens = min(self.tokens, capacity)
        if self.last_ns == 0:
            tokens, self.last_ns = capacity, now_ns
        elif now_ns > self.last_ns:
            elapsed, room = now_ns - self.last_ns, capacity - tokens
            tokens = capacity if rate and elapsed >= -(-room // rate) else tokens + elapsed * rate
            self.last_ns = now_ns
        return tokens

    def take(self, rate: int, burst: int, now_ns: int, units: int) -> bool:
        cost = units * NS_PER_SECOND
        tokens = self.refill(rate, burst, now_ns)
        allowed = tokens >= cost
        self.tokens = tokens - cost if allowed else tokens
        return allowed


SHARE_BATCH_SHIFT = 8       # bpf/token_bucket.h EW_SHARE_BATCH_SHIFT


def share_batch(rate: int, burst: int) -> int:
    """Unit-ns a CPU takes from the shared bucket at least: rate / 2^8 units, at least 1, at most the burst."""
    return min(max(rate >> SHARE_BATCH_SHIFT, 1), burst) * NS_PER_SECOND


@dataclass
class BucketShare:
    """One CPU's share of a tenant-wide bucket (struct ew_bucket_share)."""

    tokens: int = 0
    dry_ns: int = 0
    dry_tokens: int = 0


REFILL_MULTIPLY_NS = 1 << 30    # bpf/token_bucket.h EW_REFILL_MULTIPLY_NS


@dataclass
class SharedBucket:
    """A tenant-wide limit as the datapath keeps it (bpf/token_bucket.h
    share_take): a shared bucket, and per CPU the tokens taken from it in
    batches and not yet spent. Over any interval the tenant passes no more
    than the limit lets through (rate x time + burst: a token leaves the
    shared bucket once), and at most ncpus x share_batch units fewer than one
    exact TokenBucket (the tokens CPUs hold unspent). It may pass a few more
    than the exact bucket, never more than the limit: the exact one loses its
    refill while full, the shared one refills while CPUs hold taken tokens."""

    bucket: TokenBucket = field(default_factory=TokenBucket)
    shares: dict[int, BucketShare] = field(default_factory=dict)

    def take(self, rate: int, burst: int, now_ns: int, units: int, cpu: int = 0) -> bool:
        share = self.shares.setdefault(cpu, BucketShare())
        cost = units * NS_PER_SECOND
        if share.tokens >= cost:
            share.tokens -= cost
            return True
        deficit = cost - share.tokens
        if share.dry_ns:
            # The shared bucket holds at most what it held when it ran dry plus the refill since.
            since = max(now_ns - share.dry_ns, 0)
            if since < REFILL_MULTIPLY_NS and share.dry_tokens + since * rate < deficit:
                return False
        want = max(share_batch(rate, burst), deficit)
        shared = self.bucket.refill(rate, burst, now_ns)
        got = min(shared, want) if shared >= deficit else 0
        self.bucket.tokens = shared - got
        if got:
            share.tokens += got - cost
            share.dry_ns = 0
            return True
        share.dry_ns, share.dry_tokens = now_ns, shared
        return False


class ReferenceBuckets:
    """Bucket state per (tenant, kind). apply() mirrors the datapath's policy
    generations: a tenant whose flood policy changed, or that is new, starts
    with fresh buckets. (One case differs: a tenant removed and re-added with
    the same flood policy gets its old generation back, and the datapath may
    find its old, refilling buckets; tests do not re-add tenants.)

    Per-source buckets here are never evicted. The datapath keeps them in a
    bounded store and evicts, the evicted prefix starting over full: IPv4
    in 4-way sets of ew_source_ways_v4 (a prefix is evicted when four more
    recently refilled ones share its set), IPv6 in an LRU of
    EW_MAX_SOURCE_BUCKETS. So the two agree while no set holds more than
    four live prefixes and the LRU is not full, which tests keep to;
    tests/test_flood.py shows the eviction itself."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[int, object], TokenBucket | SharedBucket] = {}
        self.floods: dict[int, object] = {}

    def apply(self, policy: Policy) -> None:
        floods = {t.id: t.flood for t in policy.tenants}
        for key in list(self.buckets):
            if floods.get(key[0]) != self.floods.get(key[0]):
                del self.buckets[key]
        self.floods = floods

    def take(self, tenant_id: int, kind, rate, now_ns: int, units: int, cpu: int = 0) -> bool:
        """Per-source kinds ("source", prefix) are plain buckets; tenant-wide
        ones are shared by the CPUs (SharedBucket); `cpu` says whose share."""
        if rate.unlimited:
            return True
        if isinstance(kind, tuple):
            return self.buckets.setdefault((tenant_id, kind), TokenBucket()).take(
                rate.per_second, rate.burst, now_ns, units)
        bucket = self.buckets.setdefault((tenant_id, kind), SharedBucket())
        return bucket.take(rate.per_second, rate.burst, now_ns, units, cpu)


TCP_SYN, TCP_ACK, TCP_FIN, TCP_RST = 0x02, 0x10, 0x01, 0x04


@dataclass(frozen=True)
class TcpState:
    """The kernel state the TCP defences consult: does conntrack know the
    segment's connection, does the ACK carry a cookie the kernel issued."""

    connection_known: Callable[[PacketFacts], bool] = lambda facts: False
    cookie_valid: Callable[[PacketFacts], bool] = lambda facts: False


NO_TCP_STATE = TcpState()


def tcp_state_reason(flood, facts: PacketFacts, tcp: TcpState) -> VerdictReason | None:
    """bpf/tcp_state.h tcp_state_verdict: the drops of the TCP state policies."""
    flags = facts.tcp_flags
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
        if flood.syn_ack is SynAckPolicy.DROP or \
                (flood.syn_ack is SynAckPolicy.TRACK and not tcp.connection_known(facts)):
            return VerdictReason.drop_syn_ack
        return None
    if not flood.syn_cookies:
        return None
    if flags & TCP_SYN:
        return VerdictReason.drop_bad_cookie if flags & (TCP_RST | TCP_FIN) else None
    if tcp.connection_known(facts):
        return None
    if flags & TCP_ACK and not flags & TCP_RST and tcp.cookie_valid(facts):
        return None
    return VerdictReason.drop_bad_cookie


def syn_cookie_answer(flood, facts: PacketFacts) -> VerdictReason | None:
    """The SYN answered with a cookie, or why it cannot be (bpf/tcp_state.h answer_syn_with_cookie)."""
    if not (flood.syn_cookies and facts.l4_parsed and facts.l4_proto == TCP and
            facts.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN):
        return None
    if facts.fragment != "none" or facts.ipv6_extension_headers:
        return VerdictReason.drop_bad_cookie
    return VerdictReason.answer_syn_cookie


def flood_reason(tenant, facts: PacketFacts, buckets: ReferenceBuckets | None, now_ns: int,
                 tcp: TcpState = NO_TCP_STATE) -> VerdictReason | None:
    flood = tenant.flood
    if flood.drop_amplification and facts.l4_parsed and facts.l4_proto == UDP and \
            facts.sport in AMPLIFICATION_PORTS and facts.sport not in flood.allow_amplification_ports:
        return VerdictReason.drop_amplification
    nonfirst = facts.fragment == "nonfirst"
    if nonfirst and flood.fragments is FragmentPolicy.DROP:
        return VerdictReason.drop_fragment
    if facts.l4_proto == TCP and (facts.l4_parsed or nonfirst):
        syn_ack = facts.l4_parsed and facts.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
        if syn_ack and (reason := tcp_state_reason(flood, facts, tcp)) is not None:
            return reason
        # Cookie mode: no server needs a TCP fragment before a connection exists.
        if flood.syn_cookies and facts.fragment != "none":
            return VerdictReason.drop_bad_cookie
        if facts.l4_parsed and (reason := tcp_state_reason(flood, facts, tcp)) is not None:
            return reason
    limits = (flood.syns, flood.fragment_rate, flood.packets, flood.bits, flood.per_source)
    if all(r.unlimited for r in limits):
        return syn_cookie_answer(flood, facts)
    if buckets is None:
        raise ValueError("a policy with rate limits needs ReferenceBuckets to be judged")
    # Per-source tokens first (a prefix over its own limit spends none of the
    # tenant's), bytes before packets (a packet the byte limit drops spends no
    # packet token).
    prefixlen = flood.source_prefix_v4 if facts.family == 4 else flood.source_prefix_v6
    source_prefix = ipaddress.ip_network((facts.src, prefixlen), strict=False)
    if not buckets.take(tenant.id, ("source", source_prefix), flood.per_source, now_ns, 1):
        return VerdictReason.drop_source_rate
    if facts.traffic_class is TrafficClass.tcp_syn and not buckets.take(tenant.id, "syn", flood.syns, now_ns, 1):
        return VerdictReason.drop_syn_rate
    if nonfirst and flood.fragments is FragmentPolicy.LIMIT and \
            not buckets.take(tenant.id, "fragments", flood.fragment_rate, now_ns, 1):
        return VerdictReason.drop_fragment
    byte_rate = Rate(flood.bits.per_second // 8, flood.bits.burst // 8)
    if not buckets.take(tenant.id, "bytes", byte_rate, now_ns, facts.length) or \
            not buckets.take(tenant.id, "packets", flood.packets, now_ns, 1):
        return VerdictReason.drop_rate_limit
    return syn_cookie_answer(flood, facts)


def decide(policy: Policy, facts: PacketFacts, buckets: ReferenceBuckets | None = None,
           now_ns: int = 1, tcp: TcpState = NO_TCP_STATE) -> tuple[int, VerdictReason]:
    """(tenant id, verdict reason) for one parsed frame. `now_ns` is the
    clock for rate limits; like the kernel's it is never 0."""
    if facts.non_ip:
        return TENANT_UNASSIGNED, VerdictReason.pass_non_ip
    if facts.family == 0:
        return TENANT_UNASSIGNED, VerdictReason.drop_malformed
    tenant_id = find_tenant(policy, facts)
    tenant = policy.tenant(tenant_id)
    if _source_in(policy.blocked_sources, facts.src):
        return tenant_id, VerdictReason.drop_global_block
    if tenant is not None and tenant.suspended:
        return tenant_id, VerdictReason.drop_tenant_suspended
    if tenant is not None and _source_in(tenant.blocked_sources, facts.src):
        return tenant_id, VerdictReason.drop_tenant_block
    if facts.malformed:
        return tenant_id, VerdictReason.drop_malformed
    if tenant is not None and facts.l4_parsed and facts.l4_proto in (TCP, UDP):
        for rule in tenant.blocked_ports:
            if PROTOCOL_NUMBERS[rule.protocol] == facts.l4_proto and rule.first <= facts.dport <= rule.last:
                return tenant_id, VerdictReason.drop_port_block
    if tenant is not None:
        reason = flood_reason(tenant, facts, buckets, now_ns, tcp)
        if reason is not None:
            return tenant_id, reason
    return tenant_id, VerdictReason.pass_allowed


@dataclass(frozen=True)
class Verdict:
    tenant_id: int
    reason: VerdictReason
    traffic_class: TrafficClass
    length: int

    @property
    def dropped(self) -> bool:
        return self.reason in DROP_REASONS

    @property
    def action(self) -> int:
        """The XDP return code."""
        return xdp_action(self.reason)


def judge(policy: Policy, frame: bytes, buckets: ReferenceBuckets | None = None, now_ns: int = 1,
          tcp: TcpState = NO_TCP_STATE) -> Verdict:
    facts = parse_frame(frame)
    tenant_id, reason = decide(policy, facts, buckets, now_ns, tcp)
    return Verdict(tenant_id, reason, facts.traffic_class, facts.length)


class ReferenceCounters:
    """What the counters map should hold after the judged frames: tenant -> field -> value."""

    def __init__(self) -> None:
        self.by_tenant: dict[int, dict[str, dict[str, int]]] = defaultdict(
            lambda: {"class_packets": defaultdict(int), "class_bytes": defaultdict(int),
                     "reason_packets": defaultdict(int), "reason_bytes": defaultdict(int)})

    def count(self, verdict: Verdict) -> None:
        t = self.by_tenant[verdict.tenant_id]
        t["class_packets"][verdict.traffic_class.name] += 1
        t["class_bytes"][verdict.traffic_class.name] += verdict.length
        t["reason_packets"][verdict.reason.name] += 1
        t["reason_bytes"][verdict.reason.name] += verdict.length

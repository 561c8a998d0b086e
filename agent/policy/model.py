"""The policy document: tenants with their VIPs, state and block rules, the
global block list, and a revision. Immutable values; built and validated by
agent.policy.document, compiled into map contents by agent.datapath.compile (outside this
package, which stays pure Python so a controller validates policies without libbpf)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, replace
from functools import cached_property

from agent import abi_constants

# Amplification source port -> its bit in ew_flood_policy.amplification_allowed.
AMPLIFICATION_PORTS: dict[int, int] = {
    int(name.removeprefix("EW_AMP_PORT_")): bit
    for name, bit in abi_constants.EW_AMPLIFICATION_PORT.items() if name != "EW_AMP_PORT_COUNT"
}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17}
# Per second and per burst (bits: 8 x this): keeps the datapath's token
# arithmetic inside 64 bits (burst x 1e9 ns, and elapsed x rate for up to
# 2^30 ns: bpf/token_bucket.h). Enforced on every FloodPolicy, however it is
# built, not only by the document's validator.
MAX_RATE = 10**10


class TenantState(str, enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


@dataclass(frozen=True, order=True)
class Vip:
    """A destination that belongs to a tenant: an address, optionally narrowed to protocol and port."""

    address: IPAddress
    protocol: str | None = None   # "tcp" | "udp" | None (any)
    port: int | None = None       # with protocol, or None (any)

    def __str__(self) -> str:
        if self.protocol is None:
            return str(self.address)
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.protocol}/{host}:{self.port}"


@dataclass(frozen=True, order=True)
class PortRule:
    """Blocked destination ports of one protocol, first..last inclusive."""

    protocol: str
    first: int
    last: int

    def ports(self) -> range:
        return range(self.first, self.last + 1)

    def __str__(self) -> str:
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.protocol}/{span}"


class FragmentPolicy(str, enum.Enum):
    PASS = "pass"
    DROP = "drop"      # non-first fragments
    LIMIT = "limit"    # non-first fragments at most fragments_per_second


class SynAckPolicy(str, enum.Enum):
    """What happens to a SYN-ACK arriving for a tenant's VIP."""

    DROP = "drop"      # the VIPs never connect out: every SYN-ACK is a reflection
    TRACK = "track"    # drop unless conntrack knows the connection it answers
    PASS = "pass"


@dataclass(frozen=True)
class Rate:
    """A token-bucket limit: `per_second` units a second, `burst` at once.
    Both 0: no limit. A burst with rate 0 is a hard cap of `burst` units."""

    per_second: int = 0
    burst: int = 0

    @property
    def unlimited(self) -> bool:
        return self.per_second == 0 and self.burst == 0


@dataclass(frozen=True)
class FloodPolicy:
    """A tenant's flood defences (see the README): amplification source ports
    dropped unless allowed, fragment handling, SYN cookies, SYN-ACKs without
    a connection, token-bucket limits."""

    drop_amplification: bool = True
    allow_amplification_ports: tuple[int, ...] = ()
    fragments: FragmentPolicy = FragmentPolicy.PASS
    packets: Rate = Rate()
    bits: Rate = Rate()
    syns: Rate = Rate()
    fragment_rate: Rate = Rate()
    per_source: Rate = Rate()         # packets per source prefix
    source_prefix_v4: int = 24
    source_prefix_v6: int = 64
    syn_cookies: bool = False
    syn_ack: SynAckPolicy = SynAckPolicy.DROP

    def __post_init__(self) -> None:
        for name in ("packets", "bits", "syns", "fragment_rate", "per_source"):
            limit = MAX_RATE * (8 if name == "bits" else 1)
            rate = getattr(self, name)
            for field_name in ("per_second", "burst"):
                value = getattr(rate, field_name)
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
                    raise ValueError(f"flood.{name}.{field_name} = {value!r} must be an integer in 0..{limit} "
                                     "(the datapath's token arithmetic is 64-bit)")
        for name, longest in (("source_prefix_v4", 32), ("source_prefix_v6", 128)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= longest:
                raise ValueError(f"flood.{name} = {value!r} must be a prefix length in 0..{longest}")


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    state: TenantState = TenantState.ACTIVE
    vips: tuple[Vip, ...] = ()
    blocked_ports: tuple[PortRule, ...] = ()
    blocked_sources: tuple[IPNetwork, ...] = ()
    flood: FloodPolicy = FloodPolicy()
    watch: bool = False               # on the watch list (clause 七.4): agents sample its traffic
    # Runtime state set by the agent (under incident or on the watch list),
    # never part of the document: its packets are sampled as evidence.
    sampled: bool = False

    @property
    def suspended(self) -> bool:
        return self.state is TenantState.SUSPENDED


@dataclass(frozen=True)
class Policy:
    revision: int = 0
    tenants: tuple[Tenant, ...] = ()
    blocked_sources: tuple[IPNetwork, ...] = ()

    @cached_property
    def _tenants_by_id(self) -> dict[int, Tenant]:
        return {t.id: t for t in self.tenants}

    def tenant(self, tenant_id: int) -> Tenant | None:
        return self._tenants_by_id.get(tenant_id)

    def replace_tenant(self, tenant: Tenant) -> "Policy":
        return replace(self, tenants=tuple(tenant if t.id == tenant.id else t for t in self.tenants))

"""The policy document: tenants with their VIPs, state and block rules, the
global block list, and a revision. Immutable values; built and validated by
agent.policy.document, compiled into map contents by agent.policy.compile."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, replace
from functools import cached_property

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17}


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


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    state: TenantState = TenantState.ACTIVE
    vips: tuple[Vip, ...] = ()
    blocked_ports: tuple[PortRule, ...] = ()
    blocked_sources: tuple[IPNetwork, ...] = ()

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

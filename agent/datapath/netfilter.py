"""The kernel half of the TCP state defences (bpf/tcp_state.h): one nftables
table per interface, `inet edgewarden_<ifname>`, kept equal to what the
policy needs.

- SYN cookies: XDP answers a tenant's SYNs with kernel cookies and passes the
  ACK that returns one. nftables' synproxy checks that cookie again, opens
  the connection to the server and splices the two, so the server's backlog
  only ever sees clients that completed a handshake. The table sends TCP for
  the cookie VIPs that conntrack finds invalid or untracked (the cookie ACK:
  conntrack never saw its SYN) to synproxy, and marks inbound SYNs to them
  untracked, so a flood that gets past XDP (generic mode, a reload) creates
  no conntrack state either. It sets net.netfilter.nf_conntrack_tcp_loose=0
  in the namespace: with loose pickup, conntrack would adopt the cookie ACK
  as an established connection and synproxy would never see it.
- SYN-ACK tracking (syn_ack = "track"): XDP asks conntrack whether a SYN-ACK
  answers a connection. The table's conntrack expressions are what turn
  conntrack on in the namespace.

A policy that needs neither has no table. The agent running in a network
namespace manages that namespace's table (nft acts where it runs)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.datapath import abi
from agent.policy.model import Policy, SynAckPolicy

TCP_LOOSE_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_tcp_loose")
# What synproxy offers a client whose SYN reached it rather than XDP. Its
# window scale is also the one XDP's cookie SYN-ACKs announce (one constant):
# synproxy scales the window it later tells the client by it.
SYNPROXY_OPTIONS = f"mss 1460 wscale {abi.SYNPROXY_WSCALE} timestamp sack-perm"


class NetfilterError(RuntimeError):
    pass


@dataclass(frozen=True)
class TcpStateNeeds:
    """Destinations the kernel half must cover: addresses (all ports) and
    (address, port) pairs for TCP port VIPs."""

    cookie_addresses: frozenset = frozenset()
    cookie_ports: frozenset = frozenset()       # (address, port)
    tracked: bool = False                       # some tenant tracks SYN-ACKs in conntrack

    @property
    def empty(self) -> bool:
        return not (self.cookie_addresses or self.cookie_ports or self.tracked)

    def __or__(self, other: "TcpStateNeeds") -> "TcpStateNeeds":
        return TcpStateNeeds(self.cookie_addresses | other.cookie_addresses, self.cookie_ports | other.cookie_ports,
                             self.tracked or other.tracked)


def needs_of(policy: Policy) -> TcpStateNeeds:
    addresses, ports, tracked = set(), set(), False
    for tenant in policy.tenants:
        tracked |= tenant.flood.syn_ack is SynAckPolicy.TRACK
        if not tenant.flood.syn_cookies:
            continue
        for vip in tenant.vips:
            if vip.protocol is None:
                addresses.add(vip.address)
            elif vip.protocol == "tcp":
                ports.add((vip.address, vip.port))
    return TcpStateNeeds(frozenset(addresses), frozenset(ports), tracked)


def table_name(ifname: str) -> str:
    """nft identifiers are letters, digits and underscores; interface names may hold more."""
    return "edgewarden_" + re.sub(r"[^A-Za-z0-9_]", "_", ifname)


def _elements(items) -> str:
    return f" elements = {{ {', '.join(items)} }};" if items else ""


def render(ifname: str, needs: TcpStateNeeds) -> str:
    """The nft script that replaces the interface's table in one transaction."""
    name = table_name(ifname)
    iif = f'iifname "{ifname}"'
    by_family = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
    sets, raw_rules, cookie_rules = [], [], []
    for version, (l3, addr_type) in by_family.items():
        addresses = sorted(str(a) for a in needs.cookie_addresses if a.version == version)
        ports = sorted(f"{a} . {p}" for a, p in needs.cookie_ports if a.version == version)
        sets.append(f"    set cookie_v{version} {{ type {addr_type};{_elements(addresses)} }}")
        sets.append(f"    set cookie_v{version}_ports {{ type {addr_type} . inet_service;{_elements(ports)} }}")
        for match in (f"{l3} daddr @cookie_v{version}", f"{l3} daddr . tcp dport @cookie_v{version}_ports"):
            raw_rules.append(f"        {iif} tcp flags & (syn | ack) == syn {match} notrack")
            cookie_rules.append(f"        {match} ct state invalid,untracked synproxy {SYNPROXY_OPTIONS}")
    lines = [
        f"table inet {name} {{}}",
        f"delete table inet {name}",
        f"table inet {name} {{",
        *sets,
        "    chain raw {",
        "        type filter hook prerouting priority raw; policy accept;",
        *raw_rules,
        "    }",
        "    chain cookies {",
        *cookie_rules,
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        f"        {iif} meta l4proto tcp jump cookies",
        "    }",
        "    chain input {",
        "        type filter hook input priority filter; policy accept;",
        f"        {iif} meta l4proto tcp jump cookies",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _nft(script: str) -> None:
    try:
        result = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NetfilterError("nft is not installed (apt-get install nftables); SYN cookies and SYN-ACK "
                             "tracking need it") from None
    if result.returncode != 0:
        raise NetfilterError(f"nft refused the edgewarden table: {result.stderr.strip()}")


def table_exists(ifname: str) -> bool:
    try:
        result = subprocess.run(["nft", "list", "table", "inet", table_name(ifname)], capture_output=True,
                                text=True, timeout=30)
    except FileNotFoundError:
        return False        # without nft there is no table: policies that need none still apply
    return result.returncode == 0


def sync(ifname: str, needs: TcpStateNeeds) -> None:
    """Make the interface's table say exactly `needs` (no table when empty)."""
    if needs.empty:
        remove(ifname)
        return
    if needs.cookie_addresses or needs.cookie_ports:
        TCP_LOOSE_SYSCTL.write_text("0\n")
    _nft(render(ifname, needs))


def remove(ifname: str) -> None:
    if table_exists(ifname):
        _nft(f"delete table inet {table_name(ifname)}\n")

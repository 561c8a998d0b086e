#!/usr/bin/env python3
"""Writes expected/<capture>.csv.gz: for every packet of every capture, what
tshark's dissection says about it and the tenant and verdict reason the
README's rules ("What the datapath does", the Decide table) give it under
each policy in policies/. It runs tshark, reads the policies with tomllib and
imports nothing from the project, so the expectations share none of the
datapath's or the reference model's assumptions.

    .venv/bin/python tests/data/captures/make_expected.py

It judges only what these captures and policies hold, and stops with an
error on anything else (IPv6 extension headers, more than one VLAN tag, rate
limits other than hard caps, syn_ack = "track"), rather than guess."""

from __future__ import annotations

import csv
import gzip
import io
import ipaddress
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAPTURES = ["pkt.TCP.synflood.spoofed.pcap", "amp.UDP.snmp.src161.pcapng",
            "amp.dns.RRSIG.fragmented.pcap", "amp.TCP.reflection.SYNACK.pcap"]
POLICIES = ["blocks", "cookies", "caps"]

# README: "UDP from an amplification source port (19, 53, ...) that the tenant does not allow"
AMPLIFICATION_PORTS = {19, 53, 111, 123, 137, 161, 389, 500, 1900, 3283, 3702, 5353, 10001, 11211, 37810}
SYN, RST, FIN, ACK = 0x02, 0x04, 0x01, 0x10

FIELDS = ["frame.number", "frame.cap_len", "frame.protocols", "eth.type",
          "ip.src", "ip.dst", "ip.hdr_len", "ip.len", "ip.proto", "ip.flags.mf", "ip.frag_offset",
          "ipv6.src", "ipv6.dst", "ipv6.plen", "ipv6.nxt",
          "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.hdr_len", "udp.srcport", "udp.dstport"]
TSHARK = ["tshark", "-n", "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE",
          "-o", "tcp.desegment_tcp_streams:FALSE", "-o", "tcp.analyze_sequence_numbers:FALSE",
          "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]


class Unjudged(Exception):
    """A packet or policy these rules were not written for."""


@dataclass(frozen=True)
class Facts:
    """One packet as tshark dissects it; only the outer headers count."""

    index: int
    non_ip: bool = False
    family: int = 0
    src: str = ""
    dst: str = ""
    l4: str = "other"           # tcp | udp | icmp | other: the protocol the outer IP header names
    header_ok: bool = True      # IP and L4 headers whole within the IP length, IP length within the frame
    fragment: str = "none"      # none | first | nonfirst
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None


def dissect(path: Path) -> list[Facts]:
    args = TSHARK + ["-r", str(path)] + [a for f in FIELDS for a in ("-e", f)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [facts_of(dict(zip(FIELDS, line.split("\t")))) for line in out.splitlines()]


def facts_of(row: dict[str, str]) -> Facts:
    index = int(row["frame.number"]) - 1
    layers = row["frame.protocols"].split(":")
    tags = sum(layer in ("vlan", "ieee8021ad") for layer in layers)
    if tags > 1:
        raise Unjudged(f"packet {index}: {tags} VLAN tags")
    ip_layer = next((i for i, layer in enumerate(layers) if layer in ("ip", "ipv6")), None)
    if ip_layer is None:
        if row["eth.type"].lower() in ("0x0800", "0x86dd", "0x00000800", "0x000086dd"):
            raise Unjudged(f"packet {index}: an IP ethertype tshark did not dissect as IP")
        return Facts(index, non_ip=True)
    l3_length = int(row["frame.cap_len"]) - 14 - 4 * tags
    after_ip = layers[ip_layer + 1] if ip_layer + 1 < len(layers) else ""
    if layers[ip_layer] == "ip":
        family, src, dst = 4, row["ip.src"], row["ip.dst"]
        header, total = int(row["ip.hdr_len"]), int(row["ip.len"])
        proto = int(row["ip.proto"])
        offset = int(row["ip.frag_offset"] or 0)
        more = row["ip.flags.mf"] in ("1", "True")
        fragment = "nonfirst" if offset else "first" if more else "none"
        fits = 20 <= header <= total <= l3_length
    else:
        if after_ip.startswith("ipv6."):
            raise Unjudged(f"packet {index}: IPv6 extension header {after_ip}")
        family, src, dst = 6, row["ipv6.src"], row["ipv6.dst"]
        header, total = 40, 40 + int(row["ipv6.plen"])
        proto, fragment = int(row["ipv6.nxt"]), "none"
        fits = total <= l3_length
    l4 = {6: "tcp", 17: "udp", 1 if family == 4 else 58: "icmp"}.get(proto, "other")
    base = dict(index=index, family=family, src=src, dst=dst, l4=l4, fragment=fragment)
    if not fits:
        return Facts(**base, header_ok=False)
    if fragment == "nonfirst" or l4 == "other":
        return Facts(**base)
    room = total - header            # the L4 bytes inside the IP packet (padding is not part of it)
    # The first tcp/udp layer is the outer one only if it comes right after IP
    # (an ICMP error's quoted header comes after "icmp:ip").
    if l4 == "tcp":
        if after_ip != "tcp" or not row["tcp.hdr_len"] or room < int(row["tcp.hdr_len"]):
            return Facts(**base, header_ok=False)
        return Facts(**base, sport=int(row["tcp.srcport"]), dport=int(row["tcp.dstport"]),
                     tcp_flags=int(row["tcp.flags"], 16))
    if l4 == "udp":
        if after_ip != "udp" or room < 8:
            return Facts(**base, header_ok=False)
        return Facts(**base, sport=int(row["udp.srcport"]), dport=int(row["udp.dstport"]))
    return Facts(**base, header_ok=room >= 4)       # ICMP: type, code, checksum


class Policy:
    """The parts of a policy document these rules read (README, "Policies")."""

    def __init__(self, path: Path):
        doc = tomllib.loads(path.read_text())
        self.name = path.stem
        self.global_blocks = [ipaddress.ip_network(p) for p in doc.get("global", {}).get("blocked_sources", [])]
        self.tenants = {t["id"]: Tenant(t) for t in doc.get("tenants", [])}


class Tenant:
    def __init__(self, doc: dict):
        self.id = doc["id"]
        self.suspended = doc.get("state", "active") == "suspended"
        self.any_port = [ipaddress.ip_address(v) for v in doc.get("vips", []) if isinstance(v, str)]
        self.port_vips = [(ipaddress.ip_address(v["address"]), v["protocol"], v["port"])
                          for v in doc.get("vips", []) if isinstance(v, dict)]
        self.blocks = [ipaddress.ip_network(p) for p in doc.get("blocked_sources", [])]
        self.blocked_ports = []
        for rule in doc.get("blocked_ports", []):
            protocol, ports = rule.split("/")
            first, _, last = ports.partition("-")
            self.blocked_ports.append((protocol, int(first), int(last or first)))
        flood = doc.get("flood", {})
        self.amplification_drop = flood.get("amplification", "drop") == "drop"
        self.allowed_amplification = set(flood.get("allow_amplification_ports", []))
        self.fragments = flood.get("fragments", "pass")
        self.syn_ack = flood.get("syn_ack", "drop")
        self.cookies = flood.get("syn_cookies", False)
        if self.syn_ack == "track" or self.fragments == "limit":
            raise Unjudged(f"tenant {self.id}: syn_ack = track / fragments = limit need state these rules lack")
        if self.cookies and self.syn_ack == "pass":
            raise Unjudged(f"tenant {self.id}: cookies with syn_ack = pass: the README does not say which wins")
        self.caps = {}
        for kind, rate, burst in (("syn", "syns_per_second", "syn_burst"),
                                  ("source", "source_packets_per_second", "source_packet_burst"),
                                  ("packets", "packets_per_second", "packet_burst"),
                                  ("bits", "bits_per_second", "bit_burst")):
            if flood.get(rate, 0) or flood.get(burst, 0):
                if flood.get(rate, 0) or kind == "bits":
                    raise Unjudged(f"tenant {self.id}: {rate} needs a clock; only packet hard caps are judged here")
                self.caps[kind] = flood[burst]
        if sum(k in self.caps for k in ("syn", "source", "packets")) > 1:
            raise Unjudged(f"tenant {self.id}: whether one cap spends another's tokens is not in the README")
        self.source_prefix_v4 = flood.get("source_prefix_v4", 24)
        self.source_prefix_v6 = flood.get("source_prefix_v6", 64)


def in_any(networks, address) -> bool:
    return any(address.version == n.version and address in n for n in networks)


class Judge:
    """The README's Decide table, first match wins, for one policy; the hard
    caps' state is kept across the packets of one capture."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.spent: dict[tuple, int] = {}

    def tenant_of(self, facts: Facts) -> Tenant | None:
        dst = ipaddress.ip_address(facts.dst)
        ports_known = facts.dport is not None         # TCP/UDP header read: not a non-first fragment
        owner = None
        for tenant in self.policy.tenants.values():
            if ports_known and any(a == dst and p == facts.l4 and port == facts.dport
                                   for a, p, port in tenant.port_vips):
                return tenant                           # (VIP, protocol, port) first
            if dst in tenant.any_port:
                owner = tenant                          # then (VIP, any port)
        return owner

    def take(self, tenant: Tenant, kind: str, key=()) -> bool:
        if kind not in tenant.caps:
            return True
        spent = self.spent.get((tenant.id, kind, key), 0)
        if spent >= tenant.caps[kind]:
            return False
        self.spent[(tenant.id, kind, key)] = spent + 1
        return True

    def __call__(self, facts: Facts) -> tuple[int, str]:
        if facts.non_ip:
            return 0, "pass_non_ip"
        tenant = self.tenant_of(facts)
        tid = tenant.id if tenant else 0
        src = ipaddress.ip_address(facts.src)
        if in_any(self.policy.global_blocks, src):
            return tid, "drop_global_block"
        if tenant and tenant.suspended:
            return tid, "drop_tenant_suspended"
        if tenant and in_any(tenant.blocks, src):
            return tid, "drop_tenant_block"
        if not facts.header_ok:
            return tid, "drop_malformed"
        if tenant is None:
            return 0, "pass_allowed"                    # traffic to no tenant's VIP gets no flood policy
        if facts.dport is not None and any(p == facts.l4 and first <= facts.dport <= last
                                           for p, first, last in tenant.blocked_ports):
            return tid, "drop_port_block"
        if facts.l4 == "udp" and facts.sport is not None and tenant.amplification_drop and \
                facts.sport in AMPLIFICATION_PORTS and facts.sport not in tenant.allowed_amplification:
            return tid, "drop_amplification"
        if facts.fragment == "nonfirst" and tenant.fragments == "drop":
            return tid, "drop_fragment"
        flags = facts.tcp_flags
        if flags is not None and flags & (SYN | ACK) == SYN | ACK and tenant.syn_ack == "drop":
            return tid, "drop_syn_ack"
        syn_only = flags is not None and flags & (SYN | ACK) == SYN
        if tenant.cookies and facts.l4 == "tcp":
            # No segment of these captures belongs to a connection this host
            # knows or returns a cookie it issued; TCP fragments are never
            # answered (issue 8), nor is a SYN with RST or FIN.
            if not (syn_only and not flags & (RST | FIN) and facts.fragment == "none"):
                return tid, "drop_bad_cookie"
        if syn_only and facts.fragment == "none" and not self.take(tenant, "syn"):
            return tid, "drop_syn_rate"
        prefix = tenant.source_prefix_v4 if facts.family == 4 else tenant.source_prefix_v6
        if not self.take(tenant, "source", ipaddress.ip_network((src, prefix), strict=False)):
            return tid, "drop_source_rate"
        if not self.take(tenant, "packets"):
            return tid, "drop_rate_limit"
        if tenant.cookies and syn_only:
            return tid, "answer_syn_cookie"
        return tid, "pass_allowed"


def main() -> int:
    policies = [Policy(HERE / "policies" / f"{name}.toml") for name in POLICIES]
    (HERE / "expected").mkdir(exist_ok=True)
    for capture in CAPTURES:
        packets = dissect(HERE / capture)
        judges = [Judge(p) for p in policies]
        text = io.StringIO()
        out = csv.writer(text, lineterminator="\n")
        out.writerow(["index", "src", "dst", "l4", "sport", "dport", "tcp_flags", "fragment", "headers_whole"]
                     + [f"{p.name}_{col}" for p in policies for col in ("tenant", "reason")])
        for facts in packets:
            row = [facts.index, facts.src, facts.dst, "non_ip" if facts.non_ip else facts.l4,
                   "" if facts.sport is None else facts.sport, "" if facts.dport is None else facts.dport,
                   "" if facts.tcp_flags is None else f"0x{facts.tcp_flags:03x}", facts.fragment,
                   int(facts.header_ok)]
            for judge in judges:
                row += judge(facts)
            out.writerow(row)
        target = HERE / "expected" / f"{capture}.csv.gz"
        with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write(text.getvalue().encode())
        print(f"{target.relative_to(HERE)}: {len(packets)} packets")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Unjudged as err:
        sys.exit(f"make_expected.py: {err}")

"""Kernel-side packet counts in a lab namespace, for tests that must prove
that nothing of a kind arrived. nftables counters at prerouting (priority
-450, before conntrack and anything that could drop a packet) count every
matching packet; a capture cannot promise that on a starved CPU, where it
loses packets and would hide the very one a test looks for. The table lives
in the lab's namespace and goes with it."""

from __future__ import annotations

import json
import subprocess

from agent.lab import in_namespace

TABLE = "edgewarden_test_audit"
SYN = "tcp flags & (syn | ack) == syn"


class PacketAudit:
    """`matches` maps a counter's name to an nftables match expression; a
    packet is counted by every rule it matches."""

    def __init__(self, namespace: str, matches: dict[str, str]):
        self.namespace = namespace
        counters = "\n".join(f"counter {name} {{}}" for name in matches)
        rules = "\n".join(f"{match} counter name {name}" for name, match in matches.items())
        self._nft(["-f", "-"], f"table inet {TABLE} {{\n{counters}\n"
                               f"chain prerouting {{\ntype filter hook prerouting priority -450;\n{rules}\n}}\n}}\n")

    def read(self) -> dict[str, int]:
        out = self._nft(["-j", "list", "counters", "table", "inet", TABLE])
        return {item["counter"]["name"]: item["counter"]["packets"]
                for item in json.loads(out)["nftables"] if "counter" in item}

    def _nft(self, args: list[str], script: str | None = None) -> str:
        done = subprocess.run(in_namespace(self.namespace, ["nft", *args]), input=script, text=True,
                              capture_output=True, timeout=30)
        if done.returncode != 0:
            raise AssertionError(f"nft {' '.join(args)} in {self.namespace}: {done.stderr.strip()}")
        return done.stdout


def syns_by_source(namespace: str, client: str) -> PacketAudit:
    """SYNs from `client` and SYNs from any other address, IPv4 or IPv6."""
    family, other = ("ip6", "ipv4") if ":" in client else ("ip", "ipv6")
    return PacketAudit(namespace, {
        "from_client": f"{family} saddr {client} {SYN}",
        "from_others": f"{family} saddr != {client} {SYN}",
        "from_other_family": f"meta nfproto {other} {SYN}",
    })

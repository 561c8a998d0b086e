"""Throwaway network-namespace topologies for the demo and live tests: a
peer namespace joined to an edge namespace by a veth pair (EdgeLab), and the
four-namespace flood lab (FloodLab), both built by agent.lab.topology. The
flood generator, capture replay and the demo live beside them; nothing in
the agent daemon imports this package."""

from __future__ import annotations

import secrets
import subprocess
import sys
from dataclasses import dataclass, field

from agent.lab.topology import LAB_PEER_OBJECT, NETNS_DIR, Topology, TopologyLab, cli_in, in_namespace, in_netns, remove_namespace, run
from agent.policy import policy_from_document, policy_to_toml

__all__ = ["EdgeLab", "FloodLab", "LAB_PEER_OBJECT", "NETNS_DIR", "VICTIM_VIP", "VICTIM_VIP_V6", "cli_in",
           "in_namespace", "remove_namespace", "run", "victim_policy"]

VICTIM_VIP = "203.0.113.10"
VICTIM_VIP_V6 = "2001:db8:10::10"


def victim_policy(revision: int = 1, **flood) -> str:
    """A policy document (TOML) with one tenant, "victim", on the flood lab's
    VIPs (IPv4 and IPv6) and the given [tenants.flood] settings."""
    return policy_to_toml(policy_from_document({"revision": revision, "tenants": [
        {"id": 1, "name": "victim", "vips": [VICTIM_VIP, VICTIM_VIP_V6], "flood": flood}]}, "lab victim policy"))


@dataclass
class EdgeLab(TopologyLab):
    """peer namespace --veth--> edge namespace (XDP goes on `edge_if`).

    The peer owns the source addresses traffic is sent from; the edge owns
    the VIPs and routes back to the peer. Addresses are documentation ranges.
    """

    peer_sources: tuple[str, ...] = ("198.51.100.1",)
    peer_sources_v6: tuple[str, ...] = ("2001:db8:1::1",)
    vips: tuple[str, ...] = ("203.0.113.10",)
    vips_v6: tuple[str, ...] = ()
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    edge_link_v4: str = "198.51.100.254"
    edge_link_v6: str = "2001:db8:1::fe"

    def __post_init__(self) -> None:
        self.topology = Topology(self.tag, ("peer", "edge"))
        self.peer_ns, self.edge_ns = self.topology.ns["peer"], self.topology.ns["edge"]
        self.peer_if = f"ewp{self.tag}"     # <= 15 characters
        self.edge_if = f"ewe{self.tag}"
        t = self.topology
        t.veth("peer", self.peer_if, "edge", self.edge_if)
        t.address("edge", self.edge_if, f"{self.edge_link_v4}/24")
        t.address("edge", self.edge_if, f"{self.edge_link_v6}/64")
        for vip in self.vips:
            t.address("edge", "lo", f"{vip}/32")
        for vip in self.vips_v6:
            t.address("edge", "lo", f"{vip}/128")
        t.link_up("edge", self.edge_if)
        for src in self.peer_sources:
            t.address("peer", self.peer_if, f"{src}/24")
        for src in self.peer_sources_v6:
            t.address("peer", self.peer_if, f"{src}/64")
        t.link_up("peer", self.peer_if)
        t.peer_program("peer", self.peer_if, "lab_peer_pass")
        t.route("peer", "203.0.113.0/24", self.edge_link_v4)
        if self.vips_v6:
            t.route("peer", "2001:db8:10::/48", self.edge_link_v6)

    # -- acting inside ---------------------------------------------------------
    @staticmethod
    def ns(namespace: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        return in_netns(namespace, cmd, **kwargs)

    def edgewarden(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The CLI inside the edge namespace."""
        return cli_in(self.edge_ns, *args, check=check)

    def ping(self, source: str, target: str, count: int = 3) -> bool:
        """True if every echo got a reply."""
        cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-I", source, target]
        if ":" in target:
            cmd.insert(1, "-6")
        return self.ns(self.peer_ns, cmd, check=False).returncode == 0

    def tcp_exchange(self, source: str, target: str, port: int, payload: bytes = b"hello edge\n") -> bool:
        """One request/response over a real TCP connection to an echo server
        started for it in the edge namespace; True if the echo came back."""
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.edge_ns, sys.executable, "-c", _ECHO_SERVER, target, str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = server.stdout.readline().strip()
            if ready != "ready":
                raise RuntimeError(f"echo server did not start: {server.stderr.read()}")
            client = self.ns(self.peer_ns, [sys.executable, "-c", _ECHO_CLIENT, source, target, str(port), payload.hex()],
                             check=False, timeout=15)
            return client.returncode == 0 and client.stdout.strip() == "ok"
        finally:
            server.kill()
            server.wait()




# Bounded in time: the server serves one connection or gives up after 6 s.
_ECHO_SERVER = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(8); s.settimeout(6)
print('ready', flush=True)
try:
    c, _ = s.accept()
    c.settimeout(3)
    c.sendall(c.recv(4096))
    c.close()
except OSError:
    pass
"""

_ECHO_CLIENT = """
import socket, sys
src, host, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
s.settimeout(3)
try:
    s.bind((src, 0)); s.connect((host, port)); s.sendall(payload)
    print('ok' if s.recv(4096) == payload else 'mismatch')
except OSError as e:
    print('failed', e)
"""


@dataclass
class FloodLab(TopologyLab):
    """attacker ns --veth--> edge ns --veth--> server ns, and client ns --veth--> edge ns.

    The edge routes between them with edgewarden attached (native) on its
    attacker- and client-facing interfaces; the victim VIP lives on the
    server, behind the edge. Spoofed sources are forwarded (rp_filter off).
    IPv4 and IPv6 throughout. All addresses are documentation ranges; every
    name carries `tag`."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    vip: str = VICTIM_VIP
    vip_v6: str = VICTIM_VIP_V6
    attacker_link: tuple[str, str] = ("198.51.100.129", "198.51.100.130")   # edge, attacker (/25)
    client_link: tuple[str, str] = ("198.51.100.1", "198.51.100.2")         # edge, client (/25)
    server_link: tuple[str, str] = ("192.0.2.1", "192.0.2.10")              # edge, server (/24)
    links_v6: dict = field(default_factory=lambda: {                        # edge, far end (/64)
        "attacker": ("2001:db8:a::1", "2001:db8:a::2"), "client": ("2001:db8:c::1", "2001:db8:c::2"),
        "server": ("2001:db8:5::1", "2001:db8:5::10")})

    def __post_init__(self) -> None:
        self.topology = t = Topology(self.tag, ("attacker", "client", "edge", "server"))
        self.ns = t.ns
        # edge-side interface and far-side peer per link
        self.links = {role: (f"ew{role[0]}{self.tag}", f"ew{role[0]}{self.tag}p") for role in ("attacker", "client", "server")}
        v4_links = {"attacker": self.attacker_link, "client": self.client_link, "server": self.server_link}
        for role, (edge_if, far_if) in self.links.items():
            t.veth("edge", edge_if, role, far_if)
            (edge_v4, far_v4), (edge_v6, far_v6) = v4_links[role], self.links_v6[role]
            plen = "24" if role == "server" else "25"
            t.address("edge", edge_if, f"{edge_v4}/{plen}")
            t.address("edge", edge_if, f"{edge_v6}/64")
            t.link_up("edge", edge_if)
            t.address(role, far_if, f"{far_v4}/{plen}")
            t.address(role, far_if, f"{far_v6}/64")
            t.link_up(role, far_if)
            t.route(role, "default", edge_v4)
            t.route(role, "default", edge_v6)
            if role != "server":
                # the attacker's veth drops the edge's cookie answers, the client's passes them
                t.peer_program(role, far_if, "lab_peer_drop" if role == "attacker" else "lab_peer_pass")
        t.address("server", "lo", f"{self.vip}/32")
        t.address("server", "lo", f"{self.vip_v6}/128")
        t.route("edge", f"{self.vip}/32", self.server_link[1])
        t.route("edge", f"{self.vip_v6}/128", self.links_v6["server"][1])
        t.sysctl("edge", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0",
                 "net.ipv4.conf.default.rp_filter=0",
                 *(f"net.ipv4.conf.{edge_if}.rp_filter=0" for edge_if, _ in self.links.values()))

    @property
    def edge_ingress(self) -> list[str]:
        return [self.links["attacker"][0], self.links["client"][0]]

    def mac_of(self, role: str, interface: str) -> str:
        return self.topology.run_in(role, ["cat", f"/sys/class/net/{interface}/address"]).stdout.strip()

    def cli(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The CLI inside one of the lab's namespaces (attacker, client, edge, server)."""
        return cli_in(self.ns[role], *args, check=check)

    def edgewarden(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.cli("edge", *args, check=check)

    def attach(self, policy_file: str) -> None:
        for interface in self.edge_ingress:
            self.edgewarden("attach", interface, "--mode", "native", "--policy", policy_file)

    def detach(self) -> None:
        for interface in self.edge_ingress:
            self.edgewarden("detach", interface, check=False)

"""Throwaway network-namespace topologies for the demo and live tests: a
peer namespace joined to an edge namespace by a veth pair, with the edge
owning the tenants' VIPs. Every name carries a unique prefix, and
everything is removed on exit, also after an error."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent.datapath.interfaces import forget_namespace
from agent.policy import policy_from_document, policy_to_toml

NETNS_DIR = "/var/run/netns"
LAB_PEER_OBJECT = str(Path(__file__).resolve().parent / "datapath" / "lab_peer.bpf.o")
VICTIM_VIP = "203.0.113.10"
VICTIM_VIP_V6 = "2001:db8:10::10"


def victim_policy(revision: int = 1, **flood) -> str:
    """A policy document (TOML) with one tenant, "victim", on the flood lab's
    VIPs (IPv4 and IPv6) and the given [tenants.flood] settings."""
    return policy_to_toml(policy_from_document({"revision": revision, "tenants": [
        {"id": 1, "name": "victim", "vips": [VICTIM_VIP, VICTIM_VIP_V6], "flood": flood}]}, "lab victim policy"))


def run(cmd: list[str], *, check: bool = True, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result


def in_namespace(namespace: str, cmd: list[str]) -> list[str]:
    """`cmd` inside a network namespace. nsenter --net, not ip netns exec,
    which remounts /sys and hides bpffs and the pinned maps."""
    return ["nsenter", f"--net={NETNS_DIR}/{namespace}", *cmd]


def remove_namespace(namespace: str) -> None:
    """Delete a network namespace with the edgewarden pins and state kept
    for it, which would otherwise hold its maps in the kernel forever."""
    forget_namespace(namespace)
    if os.path.exists(f"{NETNS_DIR}/{namespace}"):
        run(["ip", "netns", "del", namespace], check=False)


def cli_in(namespace: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """The edgewarden CLI inside a network namespace."""
    return run(in_namespace(namespace, [sys.executable, "-m", "agent.cli", *args]), check=check, timeout=timeout)


@dataclass
class EdgeLab:
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
        self.peer_ns = f"ew-{self.tag}-peer"
        self.edge_ns = f"ew-{self.tag}-edge"
        self.peer_if = f"ewp{self.tag}"     # <= 15 characters
        self.edge_if = f"ewe{self.tag}"
        self._up = False

    # -- lifecycle ---------------------------------------------------------
    def up(self) -> "EdgeLab":
        try:
            for ns in (self.peer_ns, self.edge_ns):
                run(["ip", "netns", "add", ns])
                self.ns(ns, ["ip", "link", "set", "lo", "up"])
            self._up = True
            run(["ip", "link", "add", self.peer_if, "netns", self.peer_ns, "type", "veth",
                 "peer", "name", self.edge_if, "netns", self.edge_ns])
            self._configure_edge()
            self._configure_peer()
        except Exception:
            self.down()
            raise
        return self

    def _configure_edge(self) -> None:
        e = lambda *cmd: self.ns(self.edge_ns, list(cmd))
        e("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
        e("ip", "addr", "add", f"{self.edge_link_v4}/24", "dev", self.edge_if)
        e("ip", "-6", "addr", "add", f"{self.edge_link_v6}/64", "dev", self.edge_if, "nodad")
        for vip in self.vips:
            e("ip", "addr", "add", f"{vip}/32", "dev", "lo")
        for vip in self.vips_v6:
            e("ip", "-6", "addr", "add", f"{vip}/128", "dev", "lo", "nodad")
        e("ip", "link", "set", self.edge_if, "up")

    def _configure_peer(self) -> None:
        p = lambda *cmd: self.ns(self.peer_ns, list(cmd))
        p("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
        for i, src in enumerate(self.peer_sources):
            p("ip", "addr", "add", f"{src}/24", "dev", self.peer_if)
        for src in self.peer_sources_v6:
            p("ip", "-6", "addr", "add", f"{src}/64", "dev", self.peer_if, "nodad")
        p("ip", "link", "set", self.peer_if, "up")
        # so that the edge's XDP_TX answers (SYN cookies) reach the peer; see FloodLab
        p("ip", "link", "set", "dev", self.peer_if, "xdpdrv", "obj", LAB_PEER_OBJECT, "program", "lab_peer_pass")
        p("ip", "route", "add", "203.0.113.0/24", "via", self.edge_link_v4)
        if self.vips_v6:
            p("ip", "-6", "route", "add", "2001:db8:10::/48", "via", self.edge_link_v6)

    def down(self) -> None:
        for ns in (self.peer_ns, self.edge_ns):
            remove_namespace(ns)
        self._up = False

    def __enter__(self) -> "EdgeLab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- acting inside ---------------------------------------------------------
    @staticmethod
    def ns(namespace: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", namespace, *cmd], **kwargs)

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
class FloodLab:
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
        self.ns = {role: f"ew-{self.tag}-{role}" for role in ("attacker", "client", "edge", "server")}
        # edge-side interface and far-side peer per link
        self.links = {role: (f"ew{role[0]}{self.tag}", f"ew{role[0]}{self.tag}p") for role in ("attacker", "client", "server")}

    @property
    def edge_ingress(self) -> list[str]:
        return [self.links["attacker"][0], self.links["client"][0]]

    def up(self) -> "FloodLab":
        try:
            for namespace in self.ns.values():
                run(["ip", "netns", "add", namespace])
                EdgeLab.ns(namespace, ["ip", "link", "set", "lo", "up"])
            e = lambda *cmd: EdgeLab.ns(self.ns["edge"], list(cmd))
            e("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
            for role, (edge_if, far_if) in self.links.items():
                run(["ip", "link", "add", edge_if, "netns", self.ns["edge"], "type", "veth",
                     "peer", "name", far_if, "netns", self.ns[role]])
            for role, (edge_addr, far_addr) in (("attacker", self.attacker_link), ("client", self.client_link),
                                                ("server", self.server_link)):
                edge_if, far_if = self.links[role]
                plen = "24" if role == "server" else "25"
                e("ip", "addr", "add", f"{edge_addr}/{plen}", "dev", edge_if)
                e("ip", "link", "set", edge_if, "up")
                f = lambda *cmd, role=role: EdgeLab.ns(self.ns[role], list(cmd))
                f("ip", "addr", "add", f"{far_addr}/{plen}", "dev", far_if)
                edge_v6, far_v6 = self.links_v6[role]
                f("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
                e("ip", "-6", "addr", "add", f"{edge_v6}/64", "dev", edge_if, "nodad")
                f("ip", "-6", "addr", "add", f"{far_v6}/64", "dev", far_if, "nodad")
                f("ip", "link", "set", far_if, "up")
                f("ip", "route", "add", "default", "via", edge_addr)
                f("ip", "-6", "route", "add", "default", "via", edge_v6)
                if role != "server":
                    # XDP_TX from the edge (SYN-cookie answers) reaches a veth
                    # only while it runs an XDP program (GRO did not suffice on
                    # 6.18); the attacker's drops them, the client's passes them.
                    f("ip", "link", "set", "dev", far_if, "xdpdrv", "obj", LAB_PEER_OBJECT,
                      "program", "lab_peer_drop" if role == "attacker" else "lab_peer_pass")
            EdgeLab.ns(self.ns["server"], ["ip", "addr", "add", f"{self.vip}/32", "dev", "lo"])
            EdgeLab.ns(self.ns["server"], ["ip", "-6", "addr", "add", f"{self.vip_v6}/128", "dev", "lo", "nodad"])
            e("ip", "route", "add", f"{self.vip}/32", "via", self.server_link[1])
            e("ip", "-6", "route", "add", f"{self.vip_v6}/128", "via", self.links_v6["server"][1])
            for setting in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0",
                            "net.ipv4.conf.default.rp_filter=0"):
                e("sysctl", "-qw", setting)
            for edge_if, _ in self.links.values():
                e("sysctl", "-qw", f"net.ipv4.conf.{edge_if}.rp_filter=0")
        except Exception:
            self.down()
            raise
        return self

    def down(self) -> None:
        for namespace in self.ns.values():
            remove_namespace(namespace)

    def __enter__(self) -> "FloodLab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def mac_of(self, role: str, interface: str) -> str:
        out = EdgeLab.ns(self.ns[role], ["cat", f"/sys/class/net/{interface}/address"]).stdout
        return out.strip()

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

"""The one builder of the lab's throwaway topologies: network namespaces
named after a unique tag, veth pairs between them, addresses, routes,
sysctls and the XDP programs the far ends run. A topology is described as
steps first and built by up(); down() removes every namespace it made
(with the edgewarden pins and state kept for them), also after an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.datapath.scope import forget_namespace

NETNS_DIR = "/var/run/netns"
LAB_PEER_OBJECT = str(Path(__file__).resolve().parent / "lab_peer.bpf.o")


def run(cmd: list[str], *, check: bool = True, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result


def in_namespace(namespace: str, cmd: list[str]) -> list[str]:
    """`cmd` inside a network namespace. nsenter --net, not ip netns exec,
    which remounts /sys and hides bpffs and the pinned maps."""
    return ["nsenter", f"--net={NETNS_DIR}/{namespace}", *cmd]


def in_netns(namespace: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a plain command (ip, sysctl, ping) in a namespace."""
    return run(["ip", "netns", "exec", namespace, *cmd], **kwargs)


def remove_namespace(namespace: str) -> None:
    """Delete a network namespace with the edgewarden pins and state kept
    for it, which would otherwise hold its maps in the kernel forever."""
    forget_namespace(namespace)
    if os.path.exists(f"{NETNS_DIR}/{namespace}"):
        run(["ip", "netns", "del", namespace], check=False)


def cli_in(namespace: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """The edgewarden CLI inside a network namespace."""
    return run(in_namespace(namespace, [sys.executable, "-m", "agent.cli", *args]), check=check, timeout=timeout)


class Topology:
    """Namespaces `ew-<tag>-<role>` and the steps that wire them."""

    def __init__(self, tag: str, roles: tuple[str, ...]):
        self.tag = tag
        self.ns = {role: f"ew-{tag}-{role}" for role in roles}
        self._steps: list[tuple[str, list[str]]] = []
        self._veths: list[tuple[str, str, str, str]] = []

    # -- description ---------------------------------------------------------
    def veth(self, role_a: str, if_a: str, role_b: str, if_b: str) -> None:
        self._veths.append((role_a, if_a, role_b, if_b))

    def address(self, role: str, ifname: str, cidr: str) -> None:
        if ":" in cidr:
            self.step(role, "ip", "-6", "addr", "add", cidr, "dev", ifname, "nodad")
        else:
            self.step(role, "ip", "addr", "add", cidr, "dev", ifname)

    def route(self, role: str, destination: str, via: str) -> None:
        self.step(role, "ip", *(["-6"] if ":" in via else []), "route", "add", destination, "via", via)

    def sysctl(self, role: str, *settings: str) -> None:
        for setting in settings:
            self.step(role, "sysctl", "-qw", setting)

    def link_up(self, role: str, ifname: str) -> None:
        self.step(role, "ip", "link", "set", ifname, "up")

    def peer_program(self, role: str, ifname: str, program: str) -> None:
        """An XDP program from bpf/lab/lab_peer.bpf.c on a far end: a veth
        receives the edge's XDP_TX answers (SYN cookies) only while it runs
        one (GRO did not suffice on 6.18)."""
        self.step(role, "ip", "link", "set", "dev", ifname, "xdpdrv", "obj", LAB_PEER_OBJECT, "program", program)

    def step(self, role: str, *cmd: str) -> None:
        self._steps.append((role, list(cmd)))

    # -- lifecycle ---------------------------------------------------------
    def up(self) -> None:
        try:
            for namespace in self.ns.values():
                run(["ip", "netns", "add", namespace])
                in_netns(namespace, ["ip", "link", "set", "lo", "up"])
                in_netns(namespace, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"])
            for role_a, if_a, role_b, if_b in self._veths:
                run(["ip", "link", "add", if_a, "netns", self.ns[role_a], "type", "veth",
                     "peer", "name", if_b, "netns", self.ns[role_b]])
            for role, cmd in self._steps:
                in_netns(self.ns[role], cmd)
        except Exception:
            self.down()
            raise

    def down(self) -> None:
        for namespace in self.ns.values():
            remove_namespace(namespace)

    def run_in(self, role: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        return in_netns(self.ns[role], cmd, **kwargs)


class TopologyLab:
    """Lifecycle of a lab built on a Topology (set as `self.topology`):
    up() builds it, down() removes it; a context manager."""

    topology: Topology

    def up(self):
        self.topology.up()
        return self

    def down(self) -> None:
        self.topology.down()

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

"""The push benchmark's two real lab agents: a controller namespace linked by
veths to two edge namespaces, each edge running a real agent daemon in
controller mode with XDP on its peer-facing veth (the shape of
tests/test_distribution_lab.py), and a way for the benchmark's own process
and its simulated agents to sit in the controller's namespace, where the
controller's loopback is theirs."""

from __future__ import annotations

import ctypes
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from agent.lab.topology import Topology, TopologyLab, in_netns
from agent.policy import policy_from_document, policy_to_toml
from daemon_harness import DaemonProcess, write_config

VIP = "203.0.113.10"
PEER = "198.51.100.1"          # each peer namespace's address: a block of it stops that edge's ping
EDGES = (1, 2)
CLONE_NEWNET = 0x40000000
EMPTY_POLICY = policy_to_toml(policy_from_document({"revision": 0, "global": {}, "tenants": []}, "empty"))


def controller_address(n: int) -> str:
    """Where edge n dials the controller: the controller's end of their /30."""
    return f"192.0.2.{4 * n - 3}"


class PushLab(TopologyLab):
    """ctl (controller and simulated agents) --veth-- edgeN --veth-- peerN, for N = 1, 2."""

    def __init__(self):
        self.tag = secrets.token_hex(2)
        t = self.topology = Topology(self.tag, ("ctl", *(f"{role}{n}" for n in EDGES for role in ("edge", "peer"))))
        self.edge_if: dict[int, str] = {}
        for n in EDGES:
            peer_if, edge_if = f"ebp{n}{self.tag}", f"ebe{n}{self.tag}"
            ctl_side, edge_side = f"ebc{n}{self.tag}", f"ebk{n}{self.tag}"
            self.edge_if[n] = edge_if
            t.veth(f"peer{n}", peer_if, f"edge{n}", edge_if)
            t.veth("ctl", ctl_side, f"edge{n}", edge_side)
            t.address(f"edge{n}", edge_if, "198.51.100.254/24")
            t.address(f"edge{n}", "lo", f"{VIP}/32")
            t.link_up(f"edge{n}", edge_if)
            t.address(f"peer{n}", peer_if, f"{PEER}/24")
            t.link_up(f"peer{n}", peer_if)
            t.peer_program(f"peer{n}", peer_if, "lab_peer_pass")
            t.route(f"peer{n}", "203.0.113.0/24", "198.51.100.254")
            t.address("ctl", ctl_side, f"{controller_address(n)}/30")
            t.address(f"edge{n}", edge_side, f"192.0.2.{4 * n - 2}/30")
            t.link_up("ctl", ctl_side)
            t.link_up(f"edge{n}", edge_side)

    def ns(self, role: str) -> str:
        return self.topology.ns[role]

    def ping(self, n: int) -> bool:
        """Does the peer of edge n reach the VIP through edge n's XDP (two echoes, 1 s to answer)?"""
        return in_netns(self.ns(f"peer{n}"), ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-I", PEER, VIP],
                        check=False).returncode == 0


def node_name(n: int) -> str:
    return f"edge-{n}"


def start_lab_agent(lab: PushLab, controller, directory: Path, n: int) -> DaemonProcess:
    """`edgewarden agent` in edge n's namespace, in controller mode, XDP (generic) on its peer-facing veth."""
    ca = controller.ca_dir
    name = node_name(n)
    extra = (f'[controller]\naddress = "{controller_address(n)}:{controller.agent_port}"\nca = "{ca / "ca.pem"}"\n'
             f'cert = "{ca / f"{name}.pem"}"\nkey = "{ca / f"{name}.key"}"\n'
             f'trusted_keys = ["{controller.public_key}"]\nreport_interval_seconds = 5\n')
    config = write_config(directory / name, [lab.edge_if[n]], EMPTY_POLICY, extra=extra)
    config.write_text(config.read_text().replace('node = "test-node"', f'node = "{name}"'))
    return DaemonProcess(lab.ns(f"edge{n}"), config)


def acked_at(daemon: DaemonProcess, revision: int, timeout: float) -> float | None:
    """When the daemon logged the revision applied (its journal's time, written right after its Ack), or None."""
    try:
        return daemon.wait_log("revision_applied", timeout=timeout, revision=revision)["ts"]
    except AssertionError:
        return None


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


@contextmanager
def inside(namespace: str):
    """This thread in `namespace`'s network (processes it starts meanwhile too), then back where it was."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)

"""The push benchmark's two real lab agents: a controller namespace linked by
veths to two edge namespaces, each edge running a real agent daemon in
controller mode with XDP on its peer-facing veth (the shape of
tests/test_distribution_lab.py), and a way for the benchmark's own process
and its simulated agents to sit in the controller's namespace, where the
controller's loopback is theirs."""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from pathlib import Path

from agent.policy import policy_from_document, policy_to_toml
from daemon_harness import DaemonProcess, write_config
from fleet_support import LAB_EDGES, FleetLab, controller_address  # noqa: F401 (controller_address: for bench_push)

EDGES = LAB_EDGES
CLONE_NEWNET = 0x40000000
EMPTY_POLICY = policy_to_toml(policy_from_document({"revision": 0, "global": {}, "tenants": []}, "empty"))
# ctl (controller and simulated agents) --veth-- edgeN --veth-- peerN: the tests' two-edge lab
PushLab = FleetLab


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

"""The datapath works end to end with the capabilities of a hardened
service, CAP_BPF CAP_NET_ADMIN CAP_SYS_RESOURCE and nothing else (no
CAP_SYS_ADMIN, no CAP_PERFMON): every CLI command runs under setpriv with
that bounding set, in a throwaway network namespace with a veth pair, and
the kernel enforces what they set up.

Before the fix the verifier refused the program without CAP_PERFMON
(packet pointer arithmetic), and attach needed CAP_SYS_ADMIN (inner block
tables opened by id)."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.datapath.scope import forget_namespace

REPO = Path(__file__).resolve().parent.parent
# The bounding set of the systemd unit (README); capability numbers from linux/capability.h.
HARDENED = {"net_admin": 12, "sys_resource": 24, "bpf": 39}
VIP, PEER, EDGE_LINK = "203.0.113.10", "198.51.100.9", "198.51.100.1"
NAMED_LIST_SOURCE = "198.51.100.9/32"


def capability_mask(names) -> int:
    return sum(1 << HARDENED[name] for name in names)


def granted_capabilities() -> tuple[str, ...]:
    """The hardened set, less what this test's own bounding set lacks (a
    container may hold no CAP_SYS_RESOURCE to give): a subset is a stricter
    test, never a weaker one. CAP_BPF and CAP_NET_ADMIN must be there."""
    with open("/proc/self/status") as status:
        bounding = int(next(line for line in status if line.startswith("CapBnd:")).split()[1], 16)
    names = tuple(name for name, bit in HARDENED.items() if bounding >> bit & 1)
    assert {"bpf", "net_admin"} <= set(names), f"this test needs CAP_BPF and CAP_NET_ADMIN to give, has {names}"
    return names


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
    return result


class HardenedLab:
    """Two namespaces joined by a veth pair: the edge (where the datapath
    attaches, in generic mode) and the peer that sends to the VIP."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.edge_ns, self.peer_ns = f"ewcap-{tag}-edge", f"ewcap-{tag}-peer"
        self.edge_if, self.peer_if = f"ewce{tag}", f"ewcp{tag}"
        self.caps = granted_capabilities()
        run(["ip", "netns", "add", self.edge_ns])
        run(["ip", "netns", "add", self.peer_ns])
        run(["ip", "link", "add", self.edge_if, "netns", self.edge_ns, "type", "veth",
             "peer", "name", self.peer_if, "netns", self.peer_ns])
        for ns, ifname, address in ((self.edge_ns, self.edge_if, f"{EDGE_LINK}/24"),
                                    (self.peer_ns, self.peer_if, f"{PEER}/24")):
            run(["ip", "-n", ns, "addr", "add", address, "dev", ifname])
            run(["ip", "-n", ns, "link", "set", ifname, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", self.edge_ns, "addr", "add", f"{VIP}/32", "dev", "lo"])
        run(["ip", "-n", self.peer_ns, "route", "add", f"{VIP}/32", "via", EDGE_LINK])

    def hardened(self, argv) -> list[str]:
        """argv in the edge namespace (nsenter, so bpffs stays visible) with
        only the hardened capabilities: bounding, inheritable and ambient
        sets are exactly them, so the uid-0 child's effective set is too."""
        caps = ",".join(f"+{name}" for name in self.caps)
        return ["nsenter", f"--net=/var/run/netns/{self.edge_ns}", "setpriv", f"--bounding-set=-all,{caps}",
                f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}", "--", *argv]

    def cli(self, *args) -> subprocess.CompletedProcess:
        return run(self.hardened([sys.executable, "-m", "agent.cli", *args]), cwd=REPO)

    def send_udp(self, count: int) -> None:
        """UDP datagrams from the peer to the VIP, through the veth."""
        code = (f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.bind(('{PEER}', 40000))\n"
                f"for _ in range({count}): s.sendto(b'x' * 32, ('{VIP}', 9999))\n")
        run(["ip", "netns", "exec", self.peer_ns, sys.executable, "-c", code])

    def close(self) -> None:
        subprocess.run(self.hardened([sys.executable, "-m", "agent.cli", "detach", self.edge_if]),
                       capture_output=True, cwd=REPO)
        forget_namespace(self.edge_ns)
        for ns in (self.edge_ns, self.peer_ns):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@pytest.fixture
def lab():
    lab = HardenedLab()
    try:
        yield lab
    finally:
        lab.close()


def tenant_reasons(lab, tenant_id: int) -> dict[str, int]:
    stats = json.loads(lab.cli("stats", "--iface", lab.edge_if, "--json").stdout)
    for row in stats["interfaces"][lab.edge_if]["tenants"]:
        if row["tenant_id"] == tenant_id:
            return {k: v for k, v in row["reason_packets"].items() if v}
    raise AssertionError(f"tenant {tenant_id} not in stats: {stats}")


def write_policy(path: Path, revision: int) -> Path:
    path.write_text(f"""revision = {revision}
[[tenants]]
id = 1
name = "shop"
vips = ["{VIP}"]
[tenants.flood]
syn_cookies = true
syn_ack = "track"
""")
    return path


def test_the_child_has_exactly_the_hardened_capabilities(lab):
    status = run(lab.hardened(["cat", "/proc/self/status"])).stdout
    sets = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines() if line.startswith("Cap")}
    want = capability_mask(lab.caps)
    assert (sets["CapEff"], sets["CapPrm"], sets["CapBnd"]) == (want, want, want), sets
    assert not sets["CapBnd"] >> 21 & 1 and not sets["CapBnd"] >> 38 & 1, "CAP_SYS_ADMIN or CAP_PERFMON left"


def test_attach_apply_lists_suspend_detach_reattach_with_hardened_capabilities(lab, tmp_path):
    lab.cli("attach", lab.edge_if, "--mode", "generic", "--policy", str(write_policy(tmp_path / "p1.toml", 1)))
    lab.send_udp(5)
    assert tenant_reasons(lab, 1) == {"pass_allowed": 5}

    lab.cli("policy", "apply", str(write_policy(tmp_path / "p2.toml", 2)), "--iface", lab.edge_if)
    blocklist = tmp_path / "peers.txt"
    blocklist.write_text(f"{NAMED_LIST_SOURCE}\n")
    lab.cli("block", "load", str(blocklist), "--list", "peers", "--tenant", "1", "--iface", lab.edge_if)
    lab.send_udp(3)
    assert tenant_reasons(lab, 1) == {"pass_allowed": 5, "drop_tenant_block": 3}

    lab.cli("suspend", "1", "--iface", lab.edge_if)
    lab.send_udp(2)
    assert tenant_reasons(lab, 1) == {"pass_allowed": 5, "drop_tenant_block": 3, "drop_tenant_suspended": 2}

    # Attach again over ourselves: a new program adopts the pinned maps
    # (counters, the named list, the suspension) and replaces the old one.
    before = json.loads(lab.cli("status", "--json").stdout)
    lab.cli("attach", lab.edge_if, "--mode", "generic")
    after = json.loads(lab.cli("status", "--json").stdout)
    assert before != after, "attach loaded no new program"
    lab.cli("resume", "1", "--iface", lab.edge_if)
    lab.send_udp(4)
    assert tenant_reasons(lab, 1) == {"pass_allowed": 5, "drop_tenant_block": 7, "drop_tenant_suspended": 2}

    # Detach keeping the maps, attach again: adopted from the pins alone.
    lab.cli("detach", lab.edge_if, "--keep-maps")
    lab.cli("attach", lab.edge_if, "--mode", "generic")
    lab.cli("block", "unload", "--list", "peers", "--tenant", "1", "--iface", lab.edge_if)
    lab.send_udp(1)
    assert tenant_reasons(lab, 1) == {"pass_allowed": 6, "drop_tenant_block": 7, "drop_tenant_suspended": 2}

    lab.cli("detach", lab.edge_if)
    assert not (Path("/sys/fs/bpf/edgewarden/netns") / lab.edge_ns / lab.edge_if).exists()

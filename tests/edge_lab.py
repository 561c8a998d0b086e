"""A one-edge lab for the agent in controller mode, shared by its tests and
benchmarks/bench_agent_delta.py: a real controller process in its own
namespace, an edge namespace running the agent daemon with XDP on its
peer-facing veth, verdicts read with BPF_PROG_TEST_RUN on the edge's pinned
program (nothing is sent), and changes made by hand to the live tables
through the library (as bpftool would)."""

from __future__ import annotations

import ipaddress
import json
import random
import secrets
import subprocess
import sys
import urllib.parse
from pathlib import Path

from agent.lab.topology import Topology, TopologyLab, in_namespace
from agent.policy import policy_from_document, policy_to_toml
from daemon_harness import DaemonProcess, write_config
from fleet_support import Controller

TESTS = Path(__file__).resolve().parent
VIP = "203.0.113.10"
LIST_SIZE = 1_000_000
XDP_DROP, XDP_PASS = 1, 2
EMPTY_POLICY = policy_to_toml(policy_from_document({"revision": 0, "global": {}, "tenants": []}, "empty"))
# never in the generated list: the 100-entry delta and the hand-made entries come from here
SPARE = ipaddress.ip_network("198.18.0.0/15")


def generated_list(count: int, seed: int = 11) -> list[str]:
    """`count` distinct public-looking prefixes, 90% /32 and 10% /24, none in SPARE."""
    rng = random.Random(seed)
    out: set[str] = set()
    low, high = int(SPARE.network_address), int(SPARE.broadcast_address)
    while len(out) < count:
        address = rng.getrandbits(32)
        if low <= address <= high or address >> 24 in (0, 10, 127) or address >> 28 >= 14:
            continue
        if rng.random() < 0.1:
            out.add(f"{ipaddress.IPv4Address(address & ~0xFF)}/24")
        else:
            out.add(str(ipaddress.IPv4Address(address)))
    return sorted(out)


PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from frames import ethernet, ipv4, udp
from agent.datapath.scope import PROGRAM_PIN, pin_dir_for
from agent.datapath.syscalls import obj_get, test_run
ifname, vip = sys.argv[2], sys.argv[3]
fd = obj_get(str(pin_dir_for(ifname) / PROGRAM_PIN))
out = {}
for src in sys.argv[4:]:
    frame = ethernet(ipv4(src, vip, 17, udp(40000, 53, b"probe", src=src, dst=vip)), 0x0800)
    out[src] = test_run(fd, frame).retval
print(json.dumps(out))
"""

# A change by hand through the library, as an operator with bpftool would make it:
# the level-24 node holding argv[2]'s host bit deleted, a /16 node blocking argv[3] whole added.
HAND_CHANGE = """
import json, struct, sys, ipaddress
from agent.datapath import abi
from agent.datapath.blocktables import SwappableTable, node_key, _pack_node
from agent.datapath.program import live_maps
ifname, gone, added = sys.argv[1], int(ipaddress.IPv4Address(sys.argv[2])), int(ipaddress.IPv4Address(sys.argv[3]))
with live_maps(ifname) as maps:
    inner = SwappableTable(maps["ew_gblock_v4"]).inner()
    with inner:
        deleted = inner.delete(struct.pack("=I", node_key(abi.BLOCK_LEVEL_24, gone >> 8)))
        key = struct.pack("=I", node_key(abi.BLOCK_LEVEL_16, added >> 16))
        existed = inner.lookup(key) is not None
        inner.update(key, _pack_node(abi.BLOCK_NODE_FULL, 0, 0))
print(json.dumps({"deleted": deleted, "existed": existed}))
"""

HAS_NODE = """
import json, struct, sys, ipaddress
from agent.datapath import abi
from agent.datapath.blocktables import SwappableTable, node_key
from agent.datapath.program import live_maps
with live_maps(sys.argv[1]) as maps:
    inner = SwappableTable(maps["ew_gblock_v4"]).inner()
    with inner:
        print(json.dumps([inner.lookup(struct.pack("=I", node_key(abi.BLOCK_LEVEL_16,
              int(ipaddress.IPv4Address(a)) >> 16))) is not None for a in sys.argv[2:]]))
"""


class EdgeLab(TopologyLab):
    """ctl (the controller) --veth-- edge --veth-- peer; XDP on the edge's peer-facing veth."""

    def __init__(self):
        self.tag = secrets.token_hex(2)
        t = self.topology = Topology(self.tag, ("ctl", "edge", "peer"))
        self.edge_if, self.ctl_if = f"ewd{self.tag}", f"ewq{self.tag}"
        t.veth("peer", f"ewr{self.tag}", "edge", self.edge_if)
        t.veth("ctl", self.ctl_if, "edge", f"ews{self.tag}")
        t.address("ctl", self.ctl_if, "192.0.2.1/30")
        t.address("edge", f"ews{self.tag}", "192.0.2.2/30")
        t.address("edge", self.edge_if, "198.51.100.254/24")
        for role, ifname in (("ctl", self.ctl_if), ("edge", f"ews{self.tag}"), ("edge", self.edge_if),
                             ("peer", f"ewr{self.tag}")):
            t.link_up(role, ifname)

    def ns(self, role: str) -> str:
        return self.topology.ns[role]

    def run_in_edge(self, script: str, *args: str) -> object:
        out = subprocess.run(in_namespace(self.ns("edge"), [sys.executable, "-c", script, *args]),
                             capture_output=True, text=True, timeout=120, cwd=TESTS.parent)
        if out.returncode != 0:
            raise AssertionError(f"script in the edge namespace failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def verdicts(self, sources) -> dict[str, int]:
        return self.run_in_edge(PROBE, str(TESTS), self.edge_if, VIP, *sources)


def import_list(controller: Controller, path: Path, reason: str) -> int:
    """POST /lists/import from inside the controller's namespace (the body is the file)."""
    cmd = in_namespace(controller.netns, [
        "curl", "-sS", "-X", "POST", "-H", f"Authorization: Bearer {controller.token}",
        "-H", "Content-Type: text/plain", "--data-binary", f"@{path}", "-w", "\n%{http_code}",
        f"http://127.0.0.1:{controller.api_port}/lists/import?reason={urllib.parse.quote(reason)}"])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    text, _, code = out.stdout.rpartition("\n")
    if out.returncode != 0 or not code.startswith("2"):
        raise AssertionError(f"import failed: {code} {text[-500:]} {out.stderr[-500:]}")
    return json.loads(text)["revision"]


def start_agent(lab: EdgeLab, controller: Controller, directory: Path, files: dict) -> DaemonProcess:
    extra = (f'[controller]\naddress = "192.0.2.1:{controller.agent_port}"\nca = "{files["ca"]}"\n'
             f'cert = "{files["cert"]}"\nkey = "{files["key"]}"\ntrusted_keys = ["{controller.public_key}"]\n'
             f'report_interval_seconds = 1\n')
    config = write_config(directory, [lab.edge_if], EMPTY_POLICY, extra=extra)
    config.write_text(config.read_text().replace('node = "test-node"', 'node = "edge-1"'))
    return DaemonProcess(lab.ns("edge"), config)


def spare_hosts(count: int, offset: int) -> list[str]:
    """`count` addresses of SPARE (never in generated_list), 7 apart from `offset`."""
    return [str(SPARE.network_address + offset + 7 * i) for i in range(count)]

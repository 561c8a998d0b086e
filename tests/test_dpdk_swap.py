"""A policy swapped in under traffic is seen whole by every packet: two
policies whose tables, mixed, would give a verdict neither gives alone
(tenant 1 passing), flipped a hundred times while net_pcap replays frames
at full speed."""

import json
import subprocess
import sys

from agent.dpdk.capture import write_pcap
from agent.policy import policy_from_document, policy_to_toml
from dpdk_harness import REPO, engine_config
from frames import tcp_ipv4_frame

SOURCE, X, Y = "198.51.100.7", "203.0.113.1", "203.0.113.2"
# A: tenant 1 blocks tcp/80, tenant 2 blocks nothing. B: tenant 1 blocks the
# source instead, tenant 2 blocks tcp/80. Tenant 1 never passes in either;
# VIP flags of one with the rule tables of the other would let it pass.
POLICY_A = {"revision": 1, "tenants": [
    {"id": 1, "name": "one", "vips": [X], "blocked_ports": ["tcp/80"]},
    {"id": 2, "name": "two", "vips": [Y]}]}
POLICY_B = {"revision": 2, "tenants": [
    {"id": 1, "name": "one", "vips": [X], "blocked_sources": [SOURCE + "/32"]},
    {"id": 2, "name": "two", "vips": [Y], "blocked_ports": ["tcp/80"]}]}
FLIPS = 100


def test_policy_flipped_under_traffic_is_never_mixed(tmp_path):
    frames = [tcp_ipv4_frame(SOURCE, dst, 30000 + i, 80, flags="A") for i in range(64) for dst in (X, Y)]
    write_pcap(tmp_path / "in.pcap", frames)
    # A file would grow without bound at full speed: passed frames go to a null device
    # (which receives nothing) instead.
    config = engine_config(tmp_path, [
        {"name": "net_pcap0", "vdev": f"net_pcap0,rx_pcap={tmp_path / 'in.pcap'},infinite_rx=1",
         "pass_to": "net_null0"},
        {"name": "net_null0", "vdev": "net_null0,no-rx=1", "judge": False}])
    paths = []
    for name, doc in (("a", POLICY_A), ("b", POLICY_B)):
        path = tmp_path / f"{name}.toml"
        path.write_text(policy_to_toml(policy_from_document(doc, name)))
        paths.append(str(path))
    done = subprocess.run([sys.executable, str(REPO / "tests" / "dpdk_flip_policies.py"), str(config), *paths,
                           str(FLIPS)], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["swaps"] == FLIPS + 1                 # the first policy, then every flip
    tenants = {t["tenant_id"]: t["reason_packets"] for t in report["tenants"]}
    one, two = tenants[1], tenants[2]
    assert one["pass_allowed"] == 0, one                # would be a mix
    assert one["drop_port_block"] > 0 and one["drop_tenant_block"] > 0, one
    assert two["pass_allowed"] > 0 and two["drop_port_block"] > 0, two
    assert sum(one.values()) == one["drop_port_block"] + one["drop_tenant_block"]
    assert sum(two.values()) == two["pass_allowed"] + two["drop_port_block"]
    # Every frame received was judged and counted, by exactly one tenant.
    assert sum(one.values()) + sum(two.values()) == report["received"] == report["passed"] + report["dropped"]
    assert report["passed"] == two["pass_allowed"]
    assert report["received"] > 10 * len(frames), report["received"]

"""The DPDK engine live, as a bump in the wire between a client and a server
namespace: net_af_packet on the edge namespace's two veths. A legitimate
TCP exchange goes through it; a bounded UDP flood from a blocked source is
dropped and counted; suspend, resume and a named block list work on the
running engine through its control socket. Only namespaces this test makes, only documentation addresses."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

from agent.dpdk.control import request
from agent.lab.topology import Topology, in_namespace
from agent.policy import policy_from_document, policy_to_toml
from dpdk_harness import REPO, engine_config

CLIENT, SERVER, BLOCKED = "192.0.2.1", "192.0.2.2", "198.51.100.66"
FLOOD_PACKETS = 2000

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4); s.settimeout(15)
print('ready', flush=True)
c, _ = s.accept(); c.settimeout(5); c.sendall(c.recv(4096)); c.close()
"""
ECHO_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); s.sendall(b'hello dpdk')
print('ok' if s.recv(4096) == b'hello dpdk' else 'mismatch')
"""
FLOOD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[3])):
    s.sendto(b'x' * 64, (sys.argv[2], 9999))
"""


def test_live_bump_in_the_wire(tmp_path):
    tag = "dp" + uuid.uuid4().hex[:6]
    topo = Topology(tag, ("client", "edge", "server"))
    topo.veth("client", "c0", "edge", "e0")
    topo.veth("edge", "e1", "server", "s0")
    for role, ifname in (("client", "c0"), ("edge", "e0"), ("edge", "e1"), ("server", "s0")):
        # Whole, checksummed frames on the wire: af_packet sees what a NIC would.
        topo.step(role, "ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro", "off")
        topo.link_up(role, ifname)
    topo.address("client", "c0", f"{CLIENT}/24")
    topo.address("client", "c0", f"{BLOCKED}/32")
    topo.address("server", "s0", f"{SERVER}/24")
    policy = policy_from_document({"revision": 1, "global": {"blocked_sources": ["198.51.100.0/24"]},
                                   "tenants": [{"id": 1, "name": "web", "vips": [SERVER]}]}, "live")
    (tmp_path / "policy.toml").write_text(policy_to_toml(policy))
    blocklist = tmp_path / "clients.txt"
    blocklist.write_text(f"# the lab client\n{CLIENT}/32\n")
    socket_path = tmp_path / "engine.sock"
    config = engine_config(tmp_path, [
        {"name": "net_af_packet0", "vdev": "net_af_packet0,iface=e0,framecnt=4096", "pass_to": "net_af_packet1"},
        {"name": "net_af_packet1", "vdev": "net_af_packet1,iface=e1,framecnt=4096", "pass_to": "net_af_packet0", "judge": False},
    ], control_socket=socket_path)
    engine = None
    try:
        topo.up()
        engine = subprocess.Popen(in_namespace(topo.ns["edge"], [
            sys.executable, "-m", "agent.cli", "dpdk", "run", "--config", str(config),
            "--policy", str(tmp_path / "policy.toml"), "--seconds", "60", "--json"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert engine.poll() is None, engine.stderr.read()
            assert time.monotonic() < deadline, "the engine did not open its control socket"
            time.sleep(0.1)

        server = subprocess.Popen(["ip", "netns", "exec", topo.ns["server"], sys.executable, "-c", ECHO_SERVER,
                                   SERVER, "8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            client = topo.run_in("client", [sys.executable, "-c", ECHO_CLIENT, SERVER, "8080"], check=False,
                                 timeout=20)
            assert client.stdout.strip() == "ok", (client.stdout, client.stderr)
        finally:
            server.kill()
            server.wait()

        before = {t["tenant_id"]: t for t in request(socket_path, "stats")["tenants"]}
        topo.run_in("client", [sys.executable, "-c", FLOOD, BLOCKED, SERVER, str(FLOOD_PACKETS)], timeout=30)
        time.sleep(0.5)
        after = {t["tenant_id"]: t for t in request(socket_path, "stats")["tenants"]}
        blocked = after[1]["reason_packets"]["drop_global_block"] - before[1]["reason_packets"]["drop_global_block"]
        # The ring holds the whole flood (framecnt), so every frame reaches the
        # engine even when its lcore is descheduled on a busy machine; none passes.
        assert blocked == FLOOD_PACKETS, blocked
        # The flood is the only UDP: every UDP packet counted was a global-block drop (a
        # late segment of the TCP exchange may still pass meanwhile, as it should).
        udp = after[1]["class_packets"]["udp"] - before[1]["class_packets"]["udp"]
        assert udp == blocked, udp
        assert after[1]["reason_packets"]["pass_allowed"] >= 5     # the TCP exchange

        # Suspend through the CLI: the next exchange is dropped as suspended.
        done = subprocess.run([sys.executable, "-m", "agent.cli", "dpdk", "suspend", "1", "--config", str(config)],
                              capture_output=True, text=True, cwd=REPO, timeout=30)
        assert done.returncode == 0, done.stderr
        ping = topo.run_in("client", ["ping", "-c", "2", "-W", "1", "-i", "0.2", SERVER], check=False)
        assert ping.returncode != 0
        suspended = request(socket_path, "stats")["tenants"]
        assert next(t for t in suspended if t["tenant_id"] == 1)["reason_packets"]["drop_tenant_suspended"] >= 2

        # Resume, then a named block list with the client's address: the exchange is dropped.
        for args in (["resume", "1"], ["block-load", str(blocklist), "--name", "clients"]):
            done = subprocess.run([sys.executable, "-m", "agent.cli", "dpdk", *args, "--config", str(config)],
                                  capture_output=True, text=True, cwd=REPO, timeout=30)
            assert done.returncode == 0, done.stderr
        before = next(t for t in request(socket_path, "stats")["tenants"] if t["tenant_id"] == 1)
        ping = topo.run_in("client", ["ping", "-c", "2", "-W", "1", "-i", "0.2", SERVER], check=False)
        assert ping.returncode != 0
        after = next(t for t in request(socket_path, "stats")["tenants"] if t["tenant_id"] == 1)
        assert after["reason_packets"]["drop_global_block"] - before["reason_packets"]["drop_global_block"] >= 2
        assert request(socket_path, "lists")["lists"] == {"global/clients": 1}

        engine.send_signal(signal.SIGTERM)
        out, err = engine.communicate(timeout=30)
        assert engine.returncode == 0, err
        report = json.loads(out)
        assert report["policy_revision"] == 3 and report["dropped"] >= blocked
    finally:
        if engine and engine.poll() is None:
            engine.kill()
            engine.wait()
        topo.down()
    assert not any(topo.ns[r] in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
                   for r in topo.ns)

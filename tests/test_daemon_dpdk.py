"""The agent daemon with engine = "dpdk": the DPDK engine in the daemon's
process as a bump in the wire (net_af_packet on the edge namespace's two
veths, as tests/test_dpdk_live.py). READY only after the first policy is
in force on the engine; an allowed source passes and a blocked one is
dropped; a CLI `block add` goes through the daemon's socket and takes
effect; SIGHUP with a policy the engine cannot enforce keeps the old one;
the counters reach the metrics through the same aggregation; SIGTERM
stops cleanly. `edgewarden stats`/`status`/`block lists` read the running
engine through the agent, named lists survive a restart, and a watched
tenant's packets are sealed as evidence that tshark reads. Only namespaces
this test makes, only documentation addresses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from agent.daemon.control import request
from agent.lab.topology import Topology
from daemon_harness import REPO, DaemonProcess, NotifySocket, free_port
from waiting import wait_until

pytestmark = pytest.mark.live

CLIENT, SERVER, BLOCKED = "192.0.2.1", "192.0.2.2", "198.51.100.66"
FLOOD_PACKETS = 1500
POLICY = f"""revision = 1
[global]
blocked_sources = ["198.51.100.0/24"]
[[tenants]]
id = 1
name = "web"
vips = ["{SERVER}"]
"""
FLOOD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[3])):
    s.sendto(b'x' * 64, (sys.argv[2], 9999))
"""
SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode())
"""


def _config(tmp_path, metrics_port: int) -> str:
    return f"""node = "dpdk-test"
engine = "dpdk"
policy_file = "policy.toml"
state_dir = "state"
control_socket = "{tmp_path}/agent.sock"

[dpdk.eal]
lcores = "0,1"
memory_mb = 256
args = ["--no-huge", "--no-shconf", "--no-pci", "--no-telemetry", "--log-level=*:error"]

[[dpdk.ports]]
name = "net_af_packet0"
vdev = "net_af_packet0,iface=e0,framecnt=4096"
pass_to = "net_af_packet1"

[[dpdk.ports]]
name = "net_af_packet1"
vdev = "net_af_packet1,iface=e1,framecnt=4096"
pass_to = "net_af_packet0"
judge = false

[accounting]
interval_seconds = 0.2
incident_end_after_seconds = 1.0

[thresholds]
drops_by_reason = {{ drop_global_block = 200 }}

[metrics]
address = "127.0.0.1:{metrics_port}"

[evidence]
directory = "{tmp_path}/evidence"
"""


def _fix_server_neighbour(topo) -> None:
    """The client knows the server's MAC for good: no frame waits on ARP (a
    queue that drops beyond its size) and none is resent, so counts are exact."""
    server_mac = topo.run_in("server", ["cat", "/sys/class/net/s0/address"]).stdout.strip()
    topo.run_in("client", ["ip", "neigh", "replace", SERVER, "lladdr", server_mac, "dev", "c0", "nud", "permanent"])


def _topology() -> Topology:
    topo = Topology("dd" + uuid.uuid4().hex[:6], ("client", "edge", "server"))
    topo.veth("client", "c0", "edge", "e0")
    topo.veth("edge", "e1", "server", "s0")
    for role, ifname in (("client", "c0"), ("edge", "e0"), ("edge", "e1"), ("server", "s0")):
        # Whole, checksummed frames on the wire: af_packet sees what a NIC would.
        topo.step(role, "ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro", "off")
        topo.link_up(role, ifname)
    topo.address("client", "c0", f"{CLIENT}/24")
    topo.address("client", "c0", f"{BLOCKED}/32")
    topo.address("server", "s0", f"{SERVER}/24")
    return topo


def _ping(topo, source: str) -> bool:
    return topo.run_in("client", ["ping", "-n", "-q", "-c", "2", "-W", "1", "-i", "0.2", "-I", source, SERVER],
                       check=False).returncode == 0


def _scrape(topo, port: int) -> str:
    return topo.run_in("edge", [sys.executable, "-c", SCRAPE, str(port)]).stdout


def _metric(topo, port: int, name: str, **labels) -> float:
    text = _scrape(topo, port)
    for line in text.splitlines():
        m = re.match(rf'^{name}(?:\{{(.*)\}})? (\S+)$', line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")) == labels:
            return float(m.group(2))
    return 0.0


def _cli(topo, socket_path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEWARDEN_AGENT_SOCKET": str(socket_path)}
    return subprocess.run(["nsenter", f"--net=/var/run/netns/{topo.ns['edge']}", sys.executable, "-m", "agent.cli",
                           *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)


def test_daemon_runs_the_dpdk_engine(tmp_path):
    metrics_port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(_config(tmp_path, metrics_port))
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    socket_path = tmp_path / "agent.sock"

    check = subprocess.run([sys.executable, "-m", "agent.cli", "agent", "--check", "--config", str(config)],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "DPDK engine on net_af_packet0, net_af_packet1 (unjudged)" in check.stdout

    topo = _topology()
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = None
    try:
        topo.up()
        daemon = DaemonProcess(topo.ns["edge"], config, notify)
        ready = notify.wait_for("READY", "1", daemon=daemon)
        # Ready means enforcing: the first policy was in force on the engine before READY.
        events = [line.get("event") for line in daemon.lines]
        assert events.index("attached") < events.index("ready")
        attached = daemon.wait_log("attached", timeout=1)
        assert attached["mode"] == "dpdk" and attached["revision"] == 1
        assert "revision 1" in ready["STATUS"] and "enforcing on net_af_packet0 (dpdk)" in ready["STATUS"]

        # An allowed source passes through the engine; the blocked source is dropped.
        assert _ping(topo, CLIENT)
        assert not _ping(topo, BLOCKED)
        topo.run_in("client", [sys.executable, "-c", FLOOD, BLOCKED, SERVER, str(FLOOD_PACKETS)], timeout=30)
        # The accounting loop scans the engine's per-lcore counters; the metrics show the drops.
        deadline = time.monotonic() + 20
        while True:
            dropped = _metric(topo, metrics_port, "edgewarden_tenant_dropped_packets_total", tenant="1",
                              reason="drop_global_block")
            if dropped >= FLOOD_PACKETS + 2 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert dropped >= FLOOD_PACKETS + 2, dropped       # the flood and the blocked pings
        assert _metric(topo, metrics_port, "edgewarden_tenant_packets_total", tenant="1") >= dropped + 2   # + the allowed pings
        assert _metric(topo, metrics_port, "edgewarden_interface_attached", interface="net_af_packet0",
                       mode="dpdk") == 1
        assert _metric(topo, metrics_port, "edgewarden_policy_revision") == 1
        # The accounting loop's rates from the engine's counters raise an incident, and end it.
        started = daemon.wait_log("incident_started", timeout=10)
        assert started["tenant_id"] == 1 and started["check"] == "drop_global_block"
        assert started["interfaces"] == ["net_af_packet0"] and started["peak_value"] > 200
        daemon.wait_log("incident_ended", timeout=15, tenant_id=1)

        # The CLI's change goes through the daemon's socket and takes effect on the engine.
        done = _cli(topo, socket_path, "block", "add", f"{CLIENT}/32")
        assert done.returncode == 0 and "through the agent" in done.stdout, (done.stdout, done.stderr)
        assert f"{CLIENT}/32" in policy_file.read_text()
        assert not _ping(topo, CLIENT)
        status = request(socket_path, {"command": "status"})
        assert status["revision"] == 2

        # SIGHUP with a policy the engine cannot enforce: one clear line, the old one stays.
        good = policy_file.read_text()
        assert "[tenants.flood]" not in good
        bad = good + "\n[tenants.flood]\nsyn_cookies = true\n"         # the last (only) tenant's
        policy_file.with_suffix(".edit").write_text(bad)
        policy_file.with_suffix(".edit").replace(policy_file)
        mark = len(daemon.lines)
        daemon.signal(signal.SIGHUP)
        rejected = daemon.wait_log("reload_rejected", after=mark)
        assert "DPDK engine cannot enforce" in rejected["message"] and "syn_cookies" in rejected["message"]
        assert "stay in force" in rejected["message"]
        assert request(socket_path, {"command": "status"})["revision"] == 2
        assert not _ping(topo, CLIENT)                 # the block of revision 2 still holds
        # The CLI cannot slip such a policy in either, and the file is not rewritten by it.
        refused = _cli(topo, socket_path, "policy", "apply", "--iface", "net_af_packet0", str(policy_file))
        assert refused.returncode == 1 and "cannot enforce" in refused.stderr

        # A good file again: the block goes with it.
        policy_file.write_text(POLICY.replace("revision = 1", "revision = 5"))
        mark = len(daemon.lines)
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reloaded", after=mark, revision=5)
        assert _ping(topo, CLIENT)

        before = len(notify.messages)
        assert daemon.stop() == 0
        notify.wait_for("STOPPING", "1", after=before, timeout=5)
        stopped = daemon.wait_log("engine_stopped", timeout=5)
        assert stopped["dropped"] >= FLOOD_PACKETS
        daemon.wait_log("stopped", timeout=5)
        assert not socket_path.exists()
    finally:
        if daemon is not None:
            daemon.stop()
        notify.close()
        topo.down()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in topo.ns.values())


def _check(tmp_path, text: str, policy: str = POLICY) -> subprocess.CompletedProcess:
    (tmp_path / "policy.toml").write_text(policy)
    config = tmp_path / "agent.toml"
    config.write_text(text)
    return subprocess.run([sys.executable, "-m", "agent.cli", "agent", "--check", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_check_validates_the_engine_section(tmp_path):
    good = _config(tmp_path, free_port())
    head = 'policy_file = "policy.toml"\nstate_dir = "state"\n'
    cases = [
        (head + 'engine = "vpp"\n[[interfaces]]\nname = "e0"\n', "engine: must be one of xdp, dpdk, not 'vpp'"),
        (head + 'engine = "dpdk"\n', 'engine = "dpdk" needs a [dpdk] table'),
        (good + '[[interfaces]]\nname = "e0"\n', "with engine = \"dpdk\" the ports are in [dpdk]"),
        (good.replace("[dpdk.eal]", '[dpdk]\npolicy = "other.toml"\n[dpdk.eal]'), "policy is the daemon's"),
        (good.replace('memory_mb = 256', 'memory_mb = "lots"'), "memory_mb must be a positive integer"),
        (good.replace('pass_to = "net_af_packet1"', 'pass_to = "net_nowhere"'), "passes to net_nowhere"),
        (good.replace('judge = false', 'judge = false\nspeed = 10'), "unknown key(s) speed"),
        (head + '[[interfaces]]\nname = "e0"\n[dpdk]\nconfig = "dpdk.toml"\n', 'only used with engine = "dpdk"'),
        (head + 'engine = "dpdk"\n[dpdk]\nconfig = "missing.toml"\n', "missing.toml: no such config file"),
    ]
    for text, message in cases:
        done = _check(tmp_path, text)
        assert done.returncode == 1 and message in done.stderr, (message, done.stderr)

    # A policy the engine cannot enforce fails the check (and so ExecStartPre).
    done = _check(tmp_path, good, POLICY + '[tenants.flood]\nsyn_ack = "track"\n')
    assert done.returncode == 1 and 'cannot enforce tenant 1 (web): syn_ack = "track"' in done.stderr, done.stderr

    # The engine's own dpdk.toml by path: its policy and socket are not used (the daemon's are).
    (tmp_path / "dpdk.toml").write_text('policy = "ignored.toml"\n[eal]\nlcores = "0,1"\n[[ports]]\n'
                                        'name = "net_pcap0"\nvdev = "net_pcap0,rx_pcap=/dev/null"\n')
    done = _check(tmp_path, head + 'engine = "dpdk"\n[dpdk]\nconfig = "dpdk.toml"\n')
    assert done.returncode == 0 and "DPDK engine on net_pcap0 (lcores 0,1)" in done.stdout, done.stderr


def test_an_engine_that_cannot_start_means_no_ready_and_a_failed_start(tmp_path):
    """A port on an interface that does not exist: a clear error, no READY, exit 1."""
    topo = Topology("dd" + uuid.uuid4().hex[:6], ("edge",))
    config = tmp_path / "agent.toml"
    config.write_text(_config(tmp_path, free_port()).replace("iface=e0", "iface=ewnoport0"))
    (tmp_path / "policy.toml").write_text(POLICY)
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = None
    try:
        topo.up()
        daemon = DaemonProcess(topo.ns["edge"], config, notify)
        assert daemon.proc.wait(60) == 1
        assert not any("READY" in f for _, f in notify.messages)
        failed = daemon.wait_log("start_failed", timeout=5)
        assert "no configured interface could be enforced" in failed["message"]
        assert "net_af_packet0" in failed["message"], failed["message"]
        error = daemon.wait_log("interface_error", timeout=1)
        assert error["interface"] == "net_af_packet0" and error["error"]
    finally:
        if daemon is not None:
            daemon.stop()
        notify.close()
        topo.down()
    assert topo.ns["edge"] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


LISTED = "203.0.113.7"          # a source only the named list blocks
STATS_POLICY = POLICY + 'blocked_ports = ["udp/7"]\n'
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[4])):
    s.sendto(b'x' * 64, (sys.argv[2], int(sys.argv[3])))
"""
FRAME_BYTES = 14 + 20 + 8 + 64


def _send(topo, source: str, port: int, packets: int) -> None:
    # Fewer frames at once than the veth backlog (1000) and the af_packet ring (4096) hold: none is lost
    # before the engine sees it, so what the engine counts is what was sent.
    topo.run_in("client", [sys.executable, "-c", SEND, source, SERVER, str(port), str(packets)], timeout=30)


def _stats(topo, socket_path, *args) -> dict:
    done = _cli(topo, socket_path, "stats", "--json", *args)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return json.loads(done.stdout)


def _tenant_row(topo, socket_path, tenant_id: int = 1) -> dict:
    rows = _stats(topo, socket_path)["interfaces"]["net_af_packet0"]["tenants"]
    return next(t for t in rows if t["tenant_id"] == tenant_id)


def _wait_packets(topo, socket_path, packets: int) -> dict:
    return wait_until(lambda: _tenant_row(topo, socket_path), lambda row: row["packets"] >= packets, 30,
                      f"tenant 1 to count {packets} packets in `edgewarden stats`")


def _start(tmp_path, topo, config, notify) -> DaemonProcess:
    mark = len(notify.messages)
    daemon = DaemonProcess(topo.ns["edge"], config, notify)
    notify.wait_for("READY", "1", after=mark, daemon=daemon)
    return daemon


def test_stats_status_and_named_lists_of_a_running_dpdk_engine(tmp_path):
    """`edgewarden stats` / `status` / `block lists` / `block list` read a running DPDK
    engine through the agent's socket (its counters are in the agent's
    memory, not pinned), with the XDP path's output shape and exactly the
    packets sent per reason; a named list loaded through the agent is still
    enforced after the agent restarts."""
    config = tmp_path / "agent.toml"
    config.write_text(_config(tmp_path, free_port()))
    (tmp_path / "policy.toml").write_text(STATS_POLICY)
    socket_path = tmp_path / "agent.sock"
    topo = _topology()
    topo.address("client", "c0", f"{LISTED}/32")
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = None
    try:
        topo.up()
        _fix_server_neighbour(topo)
        daemon = _start(tmp_path, topo, config, notify)

        sent = {"pass_allowed": 300, "drop_global_block": 200, "drop_port_block": 100}
        _send(topo, CLIENT, 9999, sent["pass_allowed"])
        _send(topo, BLOCKED, 9999, sent["drop_global_block"])
        _send(topo, CLIENT, 7, sent["drop_port_block"])
        row = _wait_packets(topo, socket_path, sum(sent.values()))
        # The same document as for an XDP interface, from the same aggregation: every reason exact.
        assert row["name"] == "web" and row["state"] == "active"
        assert row["reason_packets"] == {r: sent.get(r, 0) for r in row["reason_packets"]}, row["reason_packets"]
        assert row["reason_bytes"] == {r: sent.get(r, 0) * FRAME_BYTES for r in row["reason_bytes"]}
        assert (row["packets"], row["passed_packets"], row["dropped_packets"]) == (600, 300, 300)
        assert row["class_packets"]["udp"] == 600 and sum(row["class_packets"].values()) == 600
        document = _stats(topo, socket_path, "--tenant", "1", "--iface", "net_af_packet0")
        assert list(document["interfaces"]) == ["net_af_packet0"]
        body = document["interfaces"]["net_af_packet0"]
        assert body["policy_revision"] == 1 and [t["tenant_id"] for t in body["tenants"]] == [1]
        assert body["tenants"][0]["reason_packets"] == row["reason_packets"]
        human = _cli(topo, socket_path, "stats")
        assert human.returncode == 0 and "net_af_packet0 (policy revision 1)" in human.stdout, human
        assert re.search(r"\b1\s+web\s+active\s+600\s+300\s+300\s+global_block=200 port_block=100", human.stdout), \
            human.stdout
        watched = _cli(topo, socket_path, "stats", "--watch", "--count", "1", "--interval", "0.2")
        assert watched.returncode == 0 and "net_af_packet0: per-tenant rates" in watched.stdout, watched
        assert re.search(r"\b1\s+web\s.*\s600$", watched.stdout, re.M), watched.stdout

        status = _cli(topo, socket_path, "status", "--json")
        assert status.returncode == 0, status.stderr
        [engine] = json.loads(status.stdout)["interfaces"]
        assert (engine["interface"], engine["mode"], engine["edgewarden"], engine["policy_revision"]) == \
            ("net_af_packet0", "dpdk", True, 1)
        human = _cli(topo, socket_path, "status")
        assert re.search(r"net_af_packet0\s+dpdk\s+dpdk engine of the agent\s+yes\s+1", human.stdout), human.stdout

        # A named list through the agent: enforced, stored, listed.
        listed = tmp_path / "abuse.txt"
        listed.write_text("203.0.113.0/24\n")
        done = _cli(topo, socket_path, "block", "load", str(listed), "--list", "abuse", "--tenant", "1")
        assert done.returncode == 0 and "through the agent" in done.stdout, (done.stdout, done.stderr)
        _send(topo, LISTED, 9999, 150)
        row = _wait_packets(topo, socket_path, 750)
        assert row["reason_packets"]["drop_tenant_block"] == 150 and row["packets"] == 750
        lists = _cli(topo, socket_path, "block", "lists", "--json")
        assert lists.returncode == 0, lists.stderr
        [stored] = json.loads(lists.stdout)["interfaces"]["net_af_packet0"]
        assert (stored["list"], stored["tenant_id"], stored["prefixes"], stored["enforced"]) == ("abuse", 1, 1, True)
        # `block list`: what the engine blocks, the policy's own prefix and the list's, in the XDP path's shape
        blocked = _cli(topo, socket_path, "block", "list", "--json")
        assert blocked.returncode == 0, blocked.stderr
        assert json.loads(blocked.stdout)["interfaces"] == {"net_af_packet0": [
            {"tenant_id": None, "prefix": "198.51.100.0/24"}, {"tenant_id": 1, "prefix": "203.0.113.0/24"}]}

        # The agent restarts: the engine starts from nothing, and the stored list is enforced with its first policy.
        assert daemon.stop() == 0
        daemon = _start(tmp_path, topo, config, notify)
        attached = daemon.wait_log("attached", timeout=5)
        assert attached["named_lists"] == {"tenant-1/abuse": 1}
        _send(topo, LISTED, 9999, 120)
        _send(topo, CLIENT, 9999, 80)
        row = _wait_packets(topo, socket_path, 200)
        assert row["packets"] == 200, row
        assert row["reason_packets"] == {r: {"drop_tenant_block": 120, "pass_allowed": 80}.get(r, 0)
                                         for r in row["reason_packets"]}, row["reason_packets"]

        # Unloaded through the agent: gone from the store too, so the next restart does not bring it back.
        done = _cli(topo, socket_path, "block", "unload", "--list", "abuse", "--tenant", "1")
        assert done.returncode == 0, (done.stdout, done.stderr)
        lists = _cli(topo, socket_path, "block", "lists", "--json")
        assert json.loads(lists.stdout)["interfaces"]["net_af_packet0"] == []
        assert daemon.stop() == 0
        daemon = _start(tmp_path, topo, config, notify)
        assert daemon.wait_log("attached", timeout=5)["named_lists"] == {}
        _send(topo, LISTED, 9999, 50)
        row = _wait_packets(topo, socket_path, 50)
        assert row["reason_packets"]["pass_allowed"] == 50 and row["dropped_packets"] == 0
    finally:
        if daemon is not None:
            daemon.stop()
        notify.close()
        topo.down()
    listed_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed_ns for name in topo.ns.values())


EVIDENCE_SEND = """
import socket, sys
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 40000))
for i in range(count):
    s.sendto(b"EW-EVIDENCE-%05d-" % i + bytes(range(256))[: 60], (dst, 9))
"""


def test_watched_tenant_on_the_dpdk_engine_is_sealed_as_evidence_tshark_reads(tmp_path):
    """The lcores sample a watched tenant's frames (bpf/sample.h compiled into
    the worker) into their rings; the agent's evidence recorder drains them
    into the same sealed pcapng files as on XDP: every frame byte for byte,
    with its verdict, passed and dropped alike."""
    from daemon_harness import tshark_frames
    metrics_port = free_port()
    config = tmp_path / "agent.toml"
    # All within the budget (1000 a second per tenant and lcore, the first second's burst whole): every frame is kept.
    config.write_text(_config(tmp_path, metrics_port) + "samples_per_second = 1000\nmin_free_bytes = 1\n"
                      "[watch]\ntenants = [1]\n")
    (tmp_path / "policy.toml").write_text(POLICY)
    topo = _topology()
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = None
    try:
        topo.up()
        _fix_server_neighbour(topo)
        daemon = _start(tmp_path, topo, config, notify)
        passed, dropped = 150, 20
        topo.run_in("client", [sys.executable, "-c", EVIDENCE_SEND, CLIENT, SERVER, str(passed)], timeout=30)
        topo.run_in("client", [sys.executable, "-c", EVIDENCE_SEND, BLOCKED, SERVER, str(dropped)], timeout=30)
        wait_until(lambda: _metric(topo, metrics_port, "edgewarden_samples_total"), lambda n: n >= passed + dropped,
                   30, "the evidence recorder to receive every sample")
        assert _metric(topo, metrics_port, "edgewarden_sample_ring_lost_samples_total") == 0
        assert daemon.stop() == 0
        sealed = [line for line in daemon.lines if line.get("event") == "evidence_sealed"]
        assert len(sealed) == 1 and sealed[0]["tenant"] == 1 and sealed[0]["incident"] == "watch:1", sealed
        assert sealed[0]["packets"] == passed + dropped
        directory = tmp_path / "evidence"
        files = sorted(directory.glob("*.pcapng"))
        assert [f.name for f in files] == [sealed[0]["file"]]
        frames = tshark_frames(files[0])
        assert len(frames) == passed + dropped
        sources = {CLIENT: [], BLOCKED: []}
        for frame in frames:
            assert frame[12:14] == b"\x08\x00" and frame[23] == 17
            payload = frame[42:]
            index = int(payload[12:17])
            assert payload == b"EW-EVIDENCE-%05d-" % index + bytes(range(256))[:60]    # byte for byte what was sent
            assert frame[30:34] == bytes(map(int, SERVER.split(".")))
            sources[".".join(str(b) for b in frame[26:30])].append(index)
        assert sorted(sources[CLIENT]) == list(range(passed)) and sorted(sources[BLOCKED]) == list(range(dropped))
        fields = subprocess.run(["tshark", "-r", str(files[0]), "-T", "fields", "-e", "frame.comment",
                                 "-e", "frame.interface_name"], capture_output=True, text=True).stdout.splitlines()
        assert fields.count("tenant=1; verdict=pass_allowed; incident=watch:1\tnet_af_packet0") == passed, fields[:3]
        assert fields.count("tenant=1; verdict=drop_global_block; incident=watch:1\tnet_af_packet0") == dropped
        verify = subprocess.run([sys.executable, "-m", "agent.cli", "evidence", "verify", str(directory)],
                                capture_output=True, text=True, cwd=REPO)
        assert verify.returncode == 0, verify.stdout
    finally:
        if daemon is not None:
            daemon.stop()
        notify.close()
        topo.down()
    assert not any(name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
                   for name in topo.ns.values())

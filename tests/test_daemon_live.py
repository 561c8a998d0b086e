"""The agent daemon in lab namespaces (EdgeLab): ready only when enforcing,
STATUS, watchdog heartbeats, stop leaving the datapath enforcing, reload
with a good and a bad file, CLI changes through the control socket while
reloads run, a missing interface, an interface that goes and comes back or
is renamed, metrics, and evidence that tshark reads back unchanged."""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.lab import EdgeLab, in_namespace
from daemon_harness import DaemonProcess, NotifySocket, free_port, tshark_frames, write_config
from waiting import wait_until

pytestmark = pytest.mark.live

POLICY = """revision = 1
[[tenants]]
id = 1
name = "shop"
vips = ["203.0.113.10"]
"""
PEER = "198.51.100.1"
VIP = "203.0.113.10"


@pytest.fixture
def lab():
    with EdgeLab() as lab:
        yield lab


def _status(lab) -> dict:
    return json.loads(lab.edgewarden("status", "--json").stdout)["interfaces"][0]


def _start(lab, tmp_path, *, interfaces=None, extra="", watchdog_usec=None, policy=POLICY, metrics_port=None):
    config = write_config(tmp_path, interfaces or [lab.edge_if], policy, extra=extra, metrics_port=metrics_port)
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(lab.edge_ns, config, notify, watchdog_usec=watchdog_usec)
    return config, notify, daemon


def test_ready_only_when_enforcing_then_status_watchdog_and_stop(lab, tmp_path):
    config, notify, daemon = _start(lab, tmp_path, interfaces=[lab.edge_if, "ewmissing9"], watchdog_usec=600_000)
    try:
        ready = notify.wait_for("READY", "1")
        # At READY the policy is in the live maps and the program attached.
        status = _status(lab)
        assert status["edgewarden"] and status["policy_revision"] == 1 and status["program_id"]
        events = [line.get("event") for line in daemon.lines]
        assert events.index("attached") < events.index("ready")
        assert "revision 1" in ready["STATUS"] and "1 tenants" in ready["STATUS"]
        assert f"enforcing on {lab.edge_if}" in ready["STATUS"] and "NOT enforced: ewmissing9" in ready["STATUS"]
        missing = daemon.wait_log("interface_error", interface="ewmissing9")
        assert "no interface 'ewmissing9'" in missing["error"]
        assert lab.ping(PEER, VIP)                   # the other interface enforces (and passes) traffic
        beats = notify.count("WATCHDOG")
        # every 0.3 s, from the loop: three within 1.5 s (waited for, not slept out)
        wait_until(lambda: notify.count("WATCHDOG"), lambda n: n >= beats + 3, timeout=1.5,
                   what="three watchdog beats", interval=0.02)
        before_stop = len(notify.messages)
        assert daemon.stop() == 0
        notify.wait_for("STOPPING", "1", after=before_stop, timeout=5)
        # Stopped, still enforcing: a block applied now by the CLI (no daemon) takes effect at once.
        after = _status(lab)
        assert after["edgewarden"] and after["program_id"] == status["program_id"]
        lab.edgewarden("block", "add", f"{PEER}/32")
        assert not lab.ping(PEER, VIP, count=2)
    finally:
        daemon.stop()
        notify.close()


def test_no_enforceable_interface_means_no_ready_and_a_failed_start(lab, tmp_path):
    config, notify, daemon = _start(lab, tmp_path, interfaces=["ewmissing8"])
    try:
        assert daemon.proc.wait(60) == 1
        assert not any("READY" in f for _, f in notify.messages)
        failed = daemon.wait_log("start_failed", timeout=5)
        assert "no configured interface could be enforced" in failed["message"]
    finally:
        daemon.stop()
        notify.close()


def test_reload_good_and_bad_files_and_cli_changes_during_reloads_lose_nothing(lab, tmp_path):
    config, notify, daemon = _start(lab, tmp_path)
    try:
        notify.wait_for("READY", "1")
        policy_file = tmp_path / "policy.toml"
        prefixes = [f"192.0.2.{i}/32" for i in range(1, 13)]
        failures = []

        def block(prefix):
            result = lab.edgewarden("block", "add", prefix, check=False)
            if result.returncode != 0 or "through the agent" not in result.stdout:
                failures.append((prefix, result.stdout, result.stderr))

        def reloads(stop):
            while not stop.is_set():
                daemon.signal(signal.SIGHUP)
                time.sleep(0.05)

        stop = threading.Event()
        reloader = threading.Thread(target=reloads, args=(stop,))
        reloader.start()
        workers = [threading.Thread(target=block, args=(p,)) for p in prefixes]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        reloader.join()
        assert not failures
        assert sum(1 for line in daemon.lines if line.get("event") == "reloaded") >= 3
        _wait_reloads_settle(daemon)                    # the queued reloads finish
        live = json.loads(lab.edgewarden("block", "list", "--json").stdout)["interfaces"][lab.edge_if]
        # The datapath holds the minimal prefix set: compare the addresses covered.
        covered = {str(a) for e in live for a in ipaddress.ip_network(e["prefix"])}
        assert covered == {p.removesuffix("/32") for p in prefixes}
        assert all(p in policy_file.read_text() for p in prefixes)   # in the file: a later reload keeps them
        revision = _status(lab)["policy_revision"]
        assert revision == 1 + len(prefixes)

        # A bad file: one clear log line, the running policy stays.
        good_text = policy_file.read_text()
        _replace_file(policy_file, good_text.replace('state = "active"', 'state = "sleeping"'))
        mark = len(daemon.lines)
        daemon.signal(signal.SIGHUP)
        rejected = daemon.wait_log("reload_rejected", after=mark)
        assert "state" in rejected["message"] and "stay in force" in rejected["message"]
        assert _status(lab)["policy_revision"] == revision
        refused = lab.edgewarden("block", "add", "192.0.2.200/32", check=False)
        assert refused.returncode == 1 and "no longer validates" in refused.stderr

        # A good file: applied.
        _replace_file(policy_file, POLICY.replace("revision = 1", "revision = 40") +
                      '[[tenants]]\nid = 2\nname = "video"\nvips = ["203.0.113.20"]\n')
        mark = len(daemon.lines)
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reloaded", after=mark, revision=40)
        assert _status(lab)["policy_revision"] == 40
        assert lab.ping(PEER, VIP)                   # the blocks went with the file that no longer has them
    finally:
        daemon.stop()
        notify.close()


def _wait_reloads_settle(daemon, quiet: float = 1.5, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = sum(1 for line in daemon.lines if line.get("event") in ("reloaded", "reload_rejected"))
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError("reloads did not settle")


def _replace_file(path: Path, text: str) -> None:
    """As an editor saves: a new file renamed over the old, never half written."""
    tmp = path.with_suffix(".edit")
    tmp.write_text(text)
    tmp.replace(path)


def test_interface_that_goes_and_comes_back_or_is_renamed_is_enforced_again(lab, tmp_path):
    config, notify, daemon = _start(lab, tmp_path, policy="revision = 1\n[global]\nblocked_sources = "
                                    "[\"198.51.100.1/32\"]\n[[tenants]]\nid = 1\nname = \"shop\"\nvips = [\"203.0.113.10\"]\n")
    try:
        notify.wait_for("READY", "1")
        assert not lab.ping(PEER, VIP, count=2)
        # Gone: the veth pair deleted; back: created again with the same names.
        lab.ns(lab.edge_ns, ["ip", "link", "del", lab.edge_if])
        daemon.wait_log("interface_gone", interface=lab.edge_if)
        mark = len(daemon.lines)
        subprocess.run(["ip", "link", "add", lab.edge_if, "netns", lab.edge_ns, "type", "veth", "peer", "name",
                        lab.peer_if, "netns", lab.peer_ns], check=True)
        for ns, ifname, addr in ((lab.edge_ns, lab.edge_if, "198.51.100.254/24"), (lab.peer_ns, lab.peer_if, f"{PEER}/24")):
            lab.ns(ns, ["ip", "addr", "add", addr, "dev", ifname])
            lab.ns(ns, ["ip", "link", "set", ifname, "up"])
        lab.ns(lab.peer_ns, ["ip", "route", "replace", "203.0.113.0/24", "via", "198.51.100.254"])
        daemon.wait_log("attached", after=mark, interface=lab.edge_if)
        status = _status(lab)
        assert status["edgewarden"] and status["policy_revision"] == 1 and status["program_id"]
        assert not lab.ping(PEER, VIP, count=2)          # the block list came back with it (pinned maps)
        # Renamed away and back.
        mark = len(daemon.lines)
        lab.ns(lab.edge_ns, ["ip", "link", "set", lab.edge_if, "down"])
        lab.ns(lab.edge_ns, ["ip", "link", "set", lab.edge_if, "name", "ewrenamed0"])
        renamed = daemon.wait_log("interface_renamed", after=mark)
        assert renamed["new_name"] == "ewrenamed0" and "rename it back" in renamed["message"]
        mark = len(daemon.lines)
        lab.ns(lab.edge_ns, ["ip", "link", "set", "ewrenamed0", "name", lab.edge_if])
        lab.ns(lab.edge_ns, ["ip", "link", "set", lab.edge_if, "up"])
        daemon.wait_log("interface_back", after=mark, interface=lab.edge_if)
        daemon.wait_log("attached", after=mark, interface=lab.edge_if)
        assert "NOT enforced" not in daemon_status(lab)
        assert _status(lab)["edgewarden"] and not lab.ping(PEER, VIP, count=2)
    finally:
        daemon.stop()
        notify.close()


def daemon_status(lab) -> str:
    out = subprocess.run(in_namespace(lab.edge_ns, [sys.executable, "-c",
        "from agent.daemon.control import request, default_socket_path; "
        "print(request(default_socket_path(), {'command': 'status'})['status'])"]), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _scrape(lab, port: int) -> str:
    out = subprocess.run(in_namespace(lab.edge_ns, [sys.executable, "-c",
        f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"]),
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_metrics_health_and_a_bounded_tenant_label_set(lab, tmp_path):
    port = free_port()
    policy = POLICY + "".join(f'[[tenants]]\nid = {t}\nname = "t{t}"\nvips = ["203.0.113.{10 + t}"]\n' for t in (2, 3))
    for t in (2, 3):
        lab.ns(lab.edge_ns, ["ip", "addr", "add", f"203.0.113.{10 + t}/32", "dev", "lo"])
    config, notify, daemon = _start(lab, tmp_path, policy=policy, metrics_port=port,
                                    extra="[accounting]\ninterval_seconds = 0.2\nincident_end_after_seconds = 1\n")
    config.write_text(config.read_text().replace(f'address = "127.0.0.1:{port}"',
                                                  f'address = "127.0.0.1:{port}"\ntop_tenants = 1'))
    daemon.stop()
    notify.close()
    notify = NotifySocket(tmp_path / "notify2.sock")
    daemon = DaemonProcess(lab.edge_ns, config, notify)
    try:
        notify.wait_for("READY", "1")
        for t, count in ((1, 20), (2, 5), (3, 3)):
            lab.ns(lab.peer_ns, ["ping", "-q", "-c", str(count), "-i", "0.01", "-I", PEER, f"203.0.113.{9 + t}"],
                   check=False)
        time.sleep(1)
        text = _scrape(lab, port)
        for name in ("edgewarden_scan_duration_seconds", "edgewarden_policy_revision 1.0",
                     f'edgewarden_interface_attached{{interface="{lab.edge_if}",mode="generic"}} 1.0',
                     "edgewarden_sample_ring_lost_samples_total", "edgewarden_evidence_written_bytes_total",
                     'edgewarden_map_fill_ratio'):
            assert name in text, name
        tenants = set(re.findall(r'edgewarden_tenant_packets_total\{tenant="([^"]+)"\}', text))
        assert tenants == {"1", "other"}             # top 1 by bytes, everything else in one series
        other = float(re.search(r'edgewarden_tenant_packets_total\{tenant="other"\} (\S+)', text).group(1))
        assert other >= 8                             # tenants 2 and 3 (and unassigned) folded together
        top = float(re.search(r'edgewarden_tenant_packets_total\{tenant="1"\} (\S+)', text).group(1))
        assert top == 20
        assert re.search(rf'edgewarden_map_fill_ratio{{interface="{lab.edge_if}",map="ew_tenants"}} (\S+)', text)
        labels = re.findall(r'\{([^}]*)\}', text)
        assert not [l for l in labels if re.search(r"\d+\.\d+\.\d+\.\d+|:[0-9a-f]*:", l)]   # never an address
    finally:
        daemon.stop()
        notify.close()


SENDER = """
import socket, sys, time
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 40000))
for i in range(count):
    s.sendto(b"EW-EVIDENCE-%05d-" % i + bytes(range(256))[: 60], (dst, 9))
    time.sleep(0.004)
"""


@pytest.mark.parametrize("watched_by", ["config", "policy"])
def test_watched_tenant_is_sampled_and_tshark_reads_the_bytes_unchanged(lab, tmp_path, watched_by):
    if watched_by == "config":
        config, notify, daemon = _start(lab, tmp_path, extra="[watch]\ntenants = [1]\n")
    else:
        config, notify, daemon = _start(lab, tmp_path, policy=POLICY + "watch = true\n")
    try:
        notify.wait_for("READY", "1")
        sent = 200
        lab.ns(lab.peer_ns, [sys.executable, "-c", SENDER, PEER, VIP, str(sent)], timeout=60)
        time.sleep(1)
        daemon.stop()
        sealed = [line for line in daemon.lines if line.get("event") == "evidence_sealed"]
        assert len(sealed) == 1 and sealed[0]["tenant"] == 1 and sealed[0]["incident"] == "watch:1"
        directory = tmp_path / "evidence"
        files = sorted(directory.glob("*.pcapng"))
        assert [f.name for f in files] == [sealed[0]["file"]]
        frames = tshark_frames(files[0])
        udp = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 17]
        assert len(udp) >= 100                      # within the budget: 100/s per CPU over ~1 s of sending
        seen = set()
        for frame in udp:
            payload = frame[42:]
            index = int(payload[12:17])
            assert payload == b"EW-EVIDENCE-%05d-" % index + bytes(range(256))[:60]   # byte for byte what was sent
            assert frame[26:30] == bytes([198, 51, 100, 1]) and frame[30:34] == bytes([203, 0, 113, 10])
            seen.add(index)
        assert len(seen) == len(udp)
        comments = subprocess.run(["tshark", "-r", str(files[0]), "-T", "fields", "-e", "frame.comment",
                                   "-e", "frame.interface_name"], capture_output=True, text=True).stdout
        assert f"tenant=1; verdict=pass_allowed; incident=watch:1\t{lab.edge_if}" in comments
        verify = subprocess.run([sys.executable, "-m", "agent.cli", "evidence", "verify", str(directory)],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout
    finally:
        daemon.stop()
        notify.close()


def test_detach_on_stop_removes_the_datapath_when_the_config_says_so(lab, tmp_path):
    config, notify, daemon = _start(lab, tmp_path, extra="")
    config.write_text('detach_on_stop = true\n' + config.read_text())
    daemon.stop()
    notify.close()
    notify = NotifySocket(tmp_path / "notify2.sock")
    daemon = DaemonProcess(lab.edge_ns, config, notify)
    try:
        notify.wait_for("READY", "1", daemon=daemon)
        assert _status(lab)["edgewarden"]
        assert daemon.stop() == 0
        daemon.wait_log("detached", interface=lab.edge_if, timeout=5)
        status = json.loads(lab.edgewarden("status", "--json").stdout)
        assert status["interfaces"] == []
    finally:
        daemon.stop()
        notify.close()

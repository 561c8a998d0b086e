"""Reliability of the daemon in the flood lab: kill -9 under a flood from a
blocked source (not one packet reaches the server, counters continue), and
incidents from a replayed real capture (start, peak and end against what
was sent, one incident per check, sampled evidence equal to the sent bytes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.lab import FloodLab, in_namespace
from agent.lab.replay import prepare
from packet_audit import PacketAudit
from daemon_harness import DaemonProcess, NotifySocket, tshark_frames, write_config

pytestmark = pytest.mark.live

BLOCKED = "203.0.113.128/25"          # the flood generator's default spoofed IPv4 sources


def _policy(lab: FloodLab, blocked: bool) -> str:
    text = f'revision = 1\n[[tenants]]\nid = 1\nname = "victim"\nvips = ["{lab.vip}"]\n'
    return (f'revision = 1\n[global]\nblocked_sources = ["{BLOCKED}"]\n' + text.removeprefix("revision = 1\n")) \
        if blocked else text


def _drops(lab: FloodLab, ifname: str) -> int:
    doc = json.loads(lab.edgewarden("stats", "--iface", ifname, "--json").stdout)
    return sum(t["reason_packets"].get("drop_global_block", 0) for t in doc["interfaces"][ifname]["tenants"])


def _daemon(lab, tmp_path, policy, extra="", name="notify.sock", evidence=""):
    config = write_config(tmp_path, lab.edge_ingress, policy, mode="native", extra=extra, evidence=evidence)
    config.write_text(config.read_text().replace('mode = "native"', 'mode = "native"\nallow_generic = true'))
    notify = NotifySocket(tmp_path / name)
    return config, notify, DaemonProcess(lab.ns["edge"], config, notify)


def test_kill_9_under_a_flood_from_a_blocked_source_lets_nothing_through(tmp_path):
    with FloodLab() as lab:
        config, notify, daemon = _daemon(lab, tmp_path, _policy(lab, blocked=True))
        second = notify2 = None
        try:
            notify.wait_for("READY", "1", daemon=daemon)
            edge_if, attacker_if = lab.links["attacker"]
            # Every packet from the blocked sources that reaches the server, counted by its kernel.
            audit = PacketAudit(lab.ns["server"], {"blocked": f"ip saddr {BLOCKED}"})
            flood = subprocess.Popen(in_namespace(lab.ns["attacker"], [
                sys.executable, "-m", "agent.cli", "flood", "udp", "--iface", attacker_if, "--target", lab.vip,
                "--dst-mac", lab.mac_of("edge", edge_if), "--packets", "100000000", "--seconds", "12",
                "--threads", "1", "--json"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(2)
            before_kill = _drops(lab, edge_if)
            daemon.kill9()
            time.sleep(1)
            while_dead = _drops(lab, edge_if)            # the CLI reads the pinned maps itself now
            notify2 = NotifySocket(tmp_path / "notify2.sock")
            second = DaemonProcess(lab.ns["edge"], config, notify2)
            notify2.wait_for("READY", "1", daemon=second)
            after_restart = _drops(lab, edge_if)
            out, err = flood.communicate(timeout=60)
            assert flood.returncode == 0, err
            sent = json.loads(out)["packets"]
            final = _drops(lab, edge_if)
            passed = audit.read()["blocked"]
            assert passed == 0, f"{passed} packets from the blocked source reached the server"
            # Counters went on through the kill and the restart (pinned and adopted, never reset).
            assert 0 < before_kill < while_dead < after_restart <= final <= sent
            events = [l.get("event") for l in second.lines]
            assert "attached" in events and events.count("interface_error") == 0
        finally:
            for d in (daemon, second):
                if d is not None:
                    d.stop()
            for n in (notify, notify2):
                if n is not None:
                    n.close()


def test_incidents_from_a_replayed_capture_start_peak_end_and_evidence(captures_dir, tmp_path):
    capture = captures_dir / "pkt.TCP.synflood.spoofed.pcap"
    pps, interval = 8000, 0.5
    extra = (f"[accounting]\ninterval_seconds = {interval}\nincident_end_after_seconds = 1.5\n"
             "[thresholds]\npackets_per_second = 2000\nsyns_per_second = 1000\n")
    with FloodLab() as lab:
        config, notify, daemon = _daemon(lab, tmp_path, _policy(lab, blocked=False), extra=extra,
                                         evidence="samples_per_second = 50\n")
        try:
            notify.wait_for("READY", "1", daemon=daemon)
            time.sleep(2 * interval)
            edge_if, attacker_if = lab.links["attacker"]
            mac = lab.mac_of("edge", edge_if)
            result = json.loads(lab.cli("attacker", "replay", str(capture), "--iface", attacker_if, "--target",
                                        lab.vip, "--dst-mac", mac, "--pps", str(pps), "--json").stdout)
            assert result["sent"] == result["frames"]
            # When the first and the last frame went out, by tcpreplay's own clock (the
            # CLI prepares first, and a loaded machine may take a while to return).
            started, ended = result["started_at"], result["ended_at"]
            time.sleep(3)
            daemon.stop()
            starts = [l for l in daemon.lines if l.get("event") == "incident_started"]
            ends = [l for l in daemon.lines if l.get("event") == "incident_ended"]
            assert sorted(l["check"] for l in starts) == ["packets_per_second", "syns_per_second"]  # one each
            assert sorted(l["id"] for l in ends) == sorted(l["id"] for l in starts)
            for end in ends:
                assert end["tenant_id"] == 1 and end["interfaces"] == [edge_if]
                # Seen within a scan or two of the first and the last packet sent.
                assert started - 0.2 <= end["started_at"] <= started + 3 * interval + 0.5, (started, end)
                assert ended - 3 * interval - 0.5 <= end["ended_at"] <= ended + interval, (ended, end)
                sent_rate = result["sent"] / result["seconds"]
                assert 0.5 * sent_rate <= end["peak_value"] <= 1.6 * pps, (sent_rate, end["peak_value"])
                assert end["started_at"] <= end["peak_at"] <= end["ended_at"]
            # The spool has both reports of both incidents, for the controller to collect.
            from agent.daemon.spool import IncidentSpool
            spool = IncidentSpool(tmp_path / "state" / "incidents.sqlite")
            reports = spool.pending()
            spool.close()
            assert sorted((d["check"], d["report"]) for _, d in reports) == [
                ("packets_per_second", "ended"), ("packets_per_second", "started"),
                ("syns_per_second", "ended"), ("syns_per_second", "started")]
            # Evidence: sampled while under incident, sealed at its end, the bytes as sent.
            sealed = [l for l in daemon.lines if l.get("event") == "evidence_sealed"]
            assert sealed and all(s["tenant"] == 1 for s in sealed)
            sent_frames = {f[:256] for f in prepare(capture, lab.vip, bytes.fromhex(
                lab.mac_of("attacker", attacker_if).replace(":", "")), bytes.fromhex(mac.replace(":", "")))[0]}
            sampled = [frame for s in sealed for frame in tshark_frames(tmp_path / "evidence" / s["file"])]
            assert len(sampled) >= 50
            assert all(frame in sent_frames for frame in sampled)
            verify = subprocess.run([sys.executable, "-m", "agent.cli", "evidence", "verify", str(tmp_path / "evidence")],
                                    capture_output=True, text=True)
            assert verify.returncode == 0, verify.stdout
        finally:
            daemon.stop()
            notify.close()

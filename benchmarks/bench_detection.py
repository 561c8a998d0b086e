#!/usr/bin/env python3
"""Detection against a real peer, in one run on the same replayed flood:
the edgewarden agent daemon (its accounting scan) and FastNetMon Community
(Debian's `fastnetmon`, AF_PACKET capture on the same lab veth), both with
a threshold of --threshold packets/s for the victim VIP. Figures: the time
from the first packet sent to the incident (edgewarden's incident start,
FastNetMon's ban notification) and each process's CPU while it watches.

The replayed capture is passed by the datapath (no block), so FastNetMon's
capture sees every packet the XDP program sees.

    .venv/bin/python benchmarks/bench_detection.py [--pps N] [--threshold N] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
from results_file import machine_facts, publish  # noqa: E402

from agent.lab import FloodLab, in_namespace  # noqa: E402
from daemon_harness import DaemonProcess, NotifySocket, write_config  # noqa: E402

SECTION_TITLE = "## Detection against FastNetMon"
CAPTURE = REPO / "tests" / "data" / "captures" / "pkt.TCP.synflood.spoofed.pcap"
NOTIFY_SCRIPT = "#!/bin/sh\necho \"$(date +%s.%N) $@\" >> {out}\n"   # args: IP direction pps action


def fastnetmon_config(base: str, tmp: Path, interface: str, threshold: int) -> str:
    overrides = {
        "interfaces": interface, "mirror_afpacket": "on", "networks_list_path": str(tmp / "networks"),
        "white_list_path": str(tmp / "whitelist"), "threshold_pps": str(threshold), "ban_for_pps": "on",
        "ban_for_bandwidth": "off", "ban_for_flows": "off", "enable_ban": "on",
        "notify_script_path": str(tmp / "notify.sh"), "average_calculation_time": "1", "check_period": "1",
        "enable_api": "off", "prometheus": "off", "disable_usage_report": "on", "enable_connection_tracking": "off",
        "monitor_local_ip_addresses": "off", "pid_path": str(tmp / "fastnetmon.pid"),
        "cli_stats_file_path": str(tmp / "fastnetmon.dat"), "cli_stats_ipv6_file_path": str(tmp / "fastnetmon6.dat"),
        "process_outgoing_traffic": "off", "logging_local_syslog_logging": "off",
    }
    lines = []
    for line in base.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in overrides and not line.lstrip().startswith("#"):
            line = f"{key} = {overrides.pop(key)}"
        lines.append(line)
    lines += [f"{k} = {v}" for k, v in overrides.items()]
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    """user+system of a process and every live descendant (FastNetMon
    captures in worker processes it forks)."""
    parents, ticks = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        ticks[child] = int(fields[11]) + int(fields[12])

    def descends(p: int) -> bool:
        while p > 1:
            if p == pid:
                return True
            p = parents.get(p, 0)
        return False

    return sum(t for p, t in ticks.items() if descends(p)) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pps", type=int, default=8000)
    parser.add_argument("--threshold", type=int, default=2000)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("fastnetmon") is None:
        raise SystemExit("fastnetmon is not installed (apt-get install fastnetmon)")

    with tempfile.TemporaryDirectory(prefix="ew-detect-") as tmp, FloodLab() as lab:
        tmp = Path(tmp)
        edge_if, attacker_if = lab.links["attacker"]
        policy = f'revision = 1\n[[tenants]]\nid = 1\nname = "victim"\nvips = ["{lab.vip}"]\n'
        config = write_config(tmp / "agent", [edge_if], policy, mode="native",
                              extra=f"[thresholds]\npackets_per_second = {args.threshold}\n")
        notify = NotifySocket(tmp / "notify.sock")
        daemon = DaemonProcess(lab.ns["edge"], config, notify)
        fnm = None
        try:
            notify.wait_for("READY", "1", daemon=daemon)
            (tmp / "networks").write_text(f"{lab.vip}/32\n")
            (tmp / "whitelist").write_text("")
            (tmp / "notify.sh").write_text(NOTIFY_SCRIPT.format(out=tmp / "bans"))
            (tmp / "notify.sh").chmod(0o755)
            (tmp / "fastnetmon.conf").write_text(fastnetmon_config(Path("/etc/fastnetmon.conf").read_text(), tmp,
                                                                   edge_if, args.threshold))
            fnm = subprocess.Popen(in_namespace(lab.ns["edge"], [
                "fastnetmon", "--configuration_file", str(tmp / "fastnetmon.conf"), "--log_file",
                str(tmp / "fastnetmon.log"), "--disable_pid_logic"]), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            time.sleep(5)                                    # FastNetMon up and capturing
            if fnm.poll() is not None:
                raise SystemExit("fastnetmon exited: " + (tmp / "fastnetmon.log").read_text()[-2000:])
            cpu_before = {"edgewarden": cpu_seconds(daemon.proc.pid), "fastnetmon": cpu_seconds(fnm.pid)}
            mac = lab.mac_of("edge", edge_if)
            result = json.loads(lab.cli("attacker", "replay", str(CAPTURE), "--iface", attacker_if, "--target",
                                        lab.vip, "--dst-mac", mac, "--pps", str(args.pps), "--json").stdout)
            ended = time.time()
            started = ended - result["seconds"]
            time.sleep(3)
            cpu = {"edgewarden": cpu_seconds(daemon.proc.pid) - cpu_before["edgewarden"],
                   "fastnetmon": cpu_seconds(fnm.pid) - cpu_before["fastnetmon"]}
            window = time.time() - (started - 5)
            incident = next((l for l in daemon.lines if l.get("event") == "incident_started"), None)
            bans = (tmp / "bans").read_text().split("\n") if (tmp / "bans").exists() else []
            ban_times = [float(b.split()[0]) for b in bans if b.split()[-1:] == ["ban"]]
            log_tail = (tmp / "fastnetmon.log").read_text()[-1500:]
        finally:
            if fnm is not None and fnm.poll() is None:
                fnm.terminate()
                try:
                    fnm.wait(10)
                except subprocess.TimeoutExpired:
                    fnm.kill()
            daemon.stop()
            notify.close()

    def latency(t):
        return f"{t - started:.2f} s" if t is not None else "not detected"

    lines = [SECTION_TITLE, ""]
    lines += [f"- **{k}:** {v}" for k, v in machine_facts()]
    lines += [
        f"- **Flood:** `{CAPTURE.name}` replayed at {args.pps:,} packets/s ({result['sent']:,} packets in "
        f"{result['seconds']:.1f} s) into the flood lab; threshold {args.threshold:,} packets/s for the VIP in both.",
        "- **edgewarden:** the agent daemon, accounting interval 1 s. **FastNetMon Community** "
        f"(Debian {subprocess.run(['dpkg-query', '-W', '-f=${Version}', 'fastnetmon'], capture_output=True, text=True).stdout}) "
        "capturing with AF_PACKET on the same veth, `average_calculation_time = 1`, `check_period = 1` (its fastest).",
        "",
        "| | time from the first packet to the incident | CPU while watching (user+system) |",
        "|---|---:|---:|",
        f"| edgewarden agent | {latency(incident['started_at'] if incident else None)} | "
        f"{cpu['edgewarden']:.2f} s over {window:.0f} s |",
        f"| FastNetMon | {latency(ban_times[0] if ban_times else None)} | {cpu['fastnetmon']:.2f} s over {window:.0f} s |",
        "",
        "- Both detect within about one scan/check period. At this rate FastNetMon's per-packet copy (AF_PACKET) "
        "costs it little; the agent's CPU is its Python scan loop, metrics and evidence writing (the tenant is "
        "sampled while under incident), which do not grow with the packet rate, while FastNetMon's work does. "
        "Higher rates were not measured here.",
        "",
        "_Generated by `benchmarks/bench_detection.py`._",
    ]
    if not ban_times:
        print("fastnetmon log tail:\n" + log_tail, file=sys.stderr)
    publish(SECTION_TITLE, "\n".join(lines), args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

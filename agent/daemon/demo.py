"""The daemon's part of `make demo`: run_daemon_demo(lab, workdir) starts
`edgewarden agent` in a lab's edge namespace under a notify socket of its
own (as systemd would), sends a bounded flood (the caller's, e.g. a capture
replay, or a built-in UDP burst), and shows an incident raised and ended,
its evidence file sealed and verified, the metrics scraped, and the
datapath still enforcing after the daemon stops. It takes the lab as an
argument (edge_ns, edge_if, peer_ns, a peer source, the VIP) and never
imports the lab package itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

POLICY = """revision = 1
[[tenants]]
id = 1
name = "shop"
vips = ["{vip}"]
"""

CONFIG = """node = "demo-edge"
policy_file = "policy.toml"
state_dir = "state"

[[interfaces]]
name = "{ifname}"
mode = "native"
allow_generic = true

[accounting]
interval_seconds = 0.5
incident_end_after_seconds = 1.5

[thresholds]
packets_per_second = 1000

[metrics]
address = "127.0.0.1:{port}"
top_tenants = 5

[evidence]
directory = "{workdir}/evidence"
samples_per_second = 50
min_free_bytes = 1
"""

UDP_BURST = """
import socket, sys, time
src, dst, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(50):
        s.sendto(b"edgewarden demo flood " + bytes(40), (dst, 9))
    time.sleep(0.01)
"""


def _nsenter(namespace: str, cmd: list[str]) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{namespace}", *cmd]


class _Notify:
    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)

    def wait(self, key: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            if key in fields:
                return fields
        return None

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def run_daemon_demo(lab, workdir: Path, *, source: str, vip: str, flood: Callable[[], None] | None = None,
                    out=print) -> int:
    """Returns the number of steps that did not do what they should."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (workdir / "policy.toml").write_text(POLICY.format(vip=vip))
    config = workdir / "agent.toml"
    config.write_text(CONFIG.format(ifname=lab.edge_if, port=port, workdir=workdir))
    notify = _Notify(workdir / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    daemon = subprocess.Popen(_nsenter(lab.edge_ns, [sys.executable, "-m", "agent.cli", "agent", "--config",
                                                     str(config)]), stderr=subprocess.PIPE, text=True, env=env)
    log: list[dict] = []
    threading.Thread(target=lambda: [log.append(json.loads(l)) for l in daemon.stderr if l.startswith("{")],
                     daemon=True).start()
    failures = 0

    def step(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        out(f"  {'ok ' if ok else 'BAD'}  {what}")

    def wait_event(event: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((l for l in log if l.get("event") == event), None)
            if found:
                return found
            time.sleep(0.1)
        return None

    try:
        out(f"\n== the agent daemon: edgewarden agent --config {config} (in {lab.edge_ns})")
        ready = notify.wait("READY", 90)
        step(ready is not None, f"READY after the first policy apply: {ready.get('STATUS') if ready else 'none'}")
        if ready is None:
            return failures + 1
        out("  flooding the tenant (bounded) ...")
        if flood is not None:
            flood()
        else:
            subprocess.run(_nsenter(lab.peer_ns, [sys.executable, "-c", UDP_BURST, source, vip, "3"]), check=True,
                           timeout=30)
        started = wait_event("incident_started", 10)
        step(started is not None, "incident raised: " + (f"tenant {started['tenant_id']} {started['check']} over "
                                                           f"{started['threshold']:.0f}/s" if started else "none"))
        ended = wait_event("incident_ended", 15)
        if ended:
            step(True, f"incident ended: {ended['ended_at'] - ended['started_at']:.1f} s long, peak "
                       f"{ended['peak_value']:,.0f} packets/s")
        else:
            step(False, "incident ended: no")
        sealed = wait_event("evidence_sealed", 10)
        step(sealed is not None, "evidence sealed: " + (f"{sealed['file']} ({sealed['packets']} packets, SHA-256 "
                                                         f"{sealed['sha256'][:16]}...)" if sealed else "none"))
        verify = subprocess.run([sys.executable, "-m", "agent.cli", "evidence", "verify", str(workdir / "evidence")],
                                capture_output=True, text=True)
        step(verify.returncode == 0, "evidence verify: " + verify.stdout.strip())
        metrics = subprocess.run(_nsenter(lab.edge_ns, [sys.executable, "-c",
                                 f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics')"
                                 ".read().decode())"]), capture_output=True, text=True, timeout=30).stdout
        shown = [l for l in metrics.splitlines() if l.startswith(("edgewarden_incidents_total", "edgewarden_policy_revision",
                 "edgewarden_tenant_packets_total", "edgewarden_scan_duration_seconds", "edgewarden_samples_total"))]
        step(bool(shown), f"metrics scraped from 127.0.0.1:{port} (in the edge namespace):")
        for line in shown:
            out(f"       {line}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        notify.close()
    status = subprocess.run(_nsenter(lab.edge_ns, [sys.executable, "-m", "agent.cli", "status"]), capture_output=True,
                            text=True).stdout.rstrip()
    step(daemon.returncode == 0 and " yes " in status, "daemon stopped (SIGTERM); the datapath still enforces:")
    out("\n".join("       " + l for l in status.splitlines()))
    return failures

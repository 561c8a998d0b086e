"""The systemd unit: `systemd-analyze verify` accepts it, the offline
security score stays within the goal, and the daemon runs with exactly
the unit's capability bounding set (setpriv, no new privileges) under a
real notify socket: READY after the first apply, WATCHDOG heartbeats,
STOPPING."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.lab import EdgeLab
from daemon_harness import DaemonProcess, NotifySocket, write_config
from waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "configs" / "edgewarden-agent.service"
SECURITY_GOAL = 4.0


def unit_setting(name: str) -> str:
    values = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(name + "=")]
    assert values, f"{UNIT.name} has no {name}="
    return " ".join(values)


def _unit_with_binary(tmp_path: Path) -> Path:
    """The unit as installed, with ExecStart pointing at this tree's edgewarden."""
    binary = Path(sys.executable).parent / "edgewarden"
    assert binary.exists(), f"{binary} is missing: make build installs the edgewarden entry point"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/edgewarden", str(binary)))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    result = subprocess.run(["systemd-analyze", "verify", str(_unit_with_binary(tmp_path))],
                            capture_output=True, text=True)
    problems = [l for l in (result.stdout + result.stderr).splitlines() if UNIT.name in l or "edgewarden" in l]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_offline_security_score_is_within_the_goal(tmp_path):
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(_unit_with_binary(tmp_path))],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= SECURITY_GOAL, match.group(0)


def test_unit_is_type_notify_with_watchdog_check_and_reload():
    assert unit_setting("Type") == "notify"
    assert unit_setting("Restart") == "on-failure"
    assert "agent --check" in unit_setting("ExecStartPre")
    assert "kill -HUP $MAINPID" in unit_setting("ExecReload")
    assert re.fullmatch(r"\d+s", unit_setting("WatchdogSec"))
    assert unit_setting("RestrictAddressFamilies").split() == ["AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"]


CAP_NUMBERS = {"CAP_NET_ADMIN": 12, "CAP_SYS_RESOURCE": 24, "CAP_BPF": 39}


def _host_bounding() -> int:
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("CapBnd:")).split()[1], 16)


def _bounding_set() -> list[str]:
    caps = unit_setting("CapabilityBoundingSet").split()
    assert caps == unit_setting("AmbientCapabilities").split()
    return caps


def test_daemon_under_the_units_capabilities_notifies_ready_watchdog_stopping(tmp_path):
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed"
    # The unit's set, less what this machine itself lacks (a container's
    # bounding set may miss CAP_SYS_RESOURCE): never more than the unit's.
    available = _host_bounding()
    unit_caps = [c for c in _bounding_set() if available & (1 << CAP_NUMBERS[c])]
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in unit_caps)
    policy = 'revision = 3\n[[tenants]]\nid = 1\nname = "shop"\nvips = ["203.0.113.10"]\n'
    with EdgeLab() as lab:
        config = write_config(tmp_path, [lab.edge_if], policy)
        notify = NotifySocket(tmp_path / "notify.sock")
        watchdog_usec = 1_000_000
        daemon = DaemonProcess(lab.edge_ns, config, notify, watchdog_usec=watchdog_usec,
                               prefix=["setpriv", f"--bounding-set=-all,{caps}", f"--inh-caps=-all,{caps}",
                                       f"--ambient-caps=-all,{caps}", "--no-new-privs", "--"])
        try:
            ready = notify.wait_for("READY", "1", timeout=90, daemon=daemon)
            status = lab.edgewarden("status", "--json").stdout
            assert '"policy_revision": 3' in status and '"edgewarden": true' in status
            assert "revision 3" in ready["STATUS"]
            with open(f"/proc/{daemon.proc.pid}/status") as f:
                bounding = next(l for l in f if l.startswith("CapBnd:")).split()[1]
            assert int(bounding, 16) == sum(1 << CAP_NUMBERS[c] for c in unit_caps)
            beats = notify.count("WATCHDOG")
            # three beats within 2.2 s (waited for, not slept out)
            wait_until(lambda: notify.count("WATCHDOG"), lambda n: n >= beats + 3, timeout=2.2,
                       what="three watchdog beats", interval=0.02)
            mark = len(notify.messages)
            assert daemon.stop() == 0
            notify.wait_for("STOPPING", "1", after=mark, timeout=5)
        finally:
            if daemon.proc.poll() is None:
                daemon.stop()
            notify.close()
            if daemon.proc.returncode not in (0, None):
                print("".join(daemon.raw)[-3000:])

"""Running the agent daemon in a lab namespace for tests: a config of the
test's own, a real notify socket the test binds (as systemd would), the
daemon's JSON log lines collected, and everything stopped afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory: Path, interfaces: list[str], policy_text: str, *, mode: str = "generic",
                 extra: str = "", metrics_port: int | None = None, evidence: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.toml").write_text(policy_text)
    ifaces = "".join(f'[[interfaces]]\nname = "{name}"\nmode = "{mode}"\n\n' for name in interfaces)
    text = (f'node = "test-node"\npolicy_file = "policy.toml"\nstate_dir = "state"\n\n{ifaces}'
            f'[metrics]\naddress = "127.0.0.1:{metrics_port or free_port()}"\n\n'
            f'[evidence]\ndirectory = "{directory}/evidence"\nmin_free_bytes = 1\n{evidence}\n{extra}')
    path = directory / "agent.toml"
    path.write_text(text)
    return path


class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)
        self.messages: list[tuple[float, dict]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60, after: int = 0,
                 daemon: "DaemonProcess | None" = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, fields in self.messages[after:]:
                if key in fields and (value is None or fields[key] == value):
                    return fields
            if daemon is not None and daemon.proc.poll() is not None:
                time.sleep(0.3)
                last = [l.get("message", "")[:600] for l in daemon.lines[-3:]]
                raise AssertionError(f"the daemon exited ({daemon.proc.returncode}) before {key}={value}: {last}")
            time.sleep(0.05)
        raise AssertionError(f"no {key}={value} from the daemon within {timeout}s; got {self.messages}")

    def count(self, key: str) -> int:
        return sum(1 for _, f in self.messages if key in f)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.path.unlink(missing_ok=True)


class DaemonProcess:
    """`edgewarden agent --config F` inside a namespace (nsenter --net, so bpffs stays visible)."""

    def __init__(self, namespace: str, config: Path, notify: NotifySocket | None = None,
                 prefix: list[str] | None = None, env: dict | None = None, watchdog_usec: int | None = None):
        environment = {**os.environ, **(env or {})}
        environment.pop("NOTIFY_SOCKET", None)
        if notify is not None:
            environment["NOTIFY_SOCKET"] = str(notify.path)
        if watchdog_usec:
            environment["WATCHDOG_USEC"] = str(watchdog_usec)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{namespace}", *(prefix or []), sys.executable, "-m", "agent.cli",
             "agent", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=REPO)
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def wait_log(self, event: str, timeout: float = 60, after: int = 0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.lines[after:]:
                if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
                    return entry
            if self.proc.poll() is not None and time.monotonic() > deadline - timeout + 1:
                time.sleep(0.3)
                for entry in self.lines[after:]:
                    if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
                        return entry
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {event}: {''.join(self.raw)[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no log event {event} {match} within {timeout}s: {''.join(self.raw)[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()


def tshark_frames(path: Path) -> list[bytes]:
    """Every frame's captured bytes as tshark reads them (it fails on a file it cannot open)."""
    out = subprocess.run(["tshark", "-r", str(path), "-T", "json", "-x"], capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"tshark cannot read {path}: {out.stderr}")
    return [bytes.fromhex(packet["_source"]["layers"]["frame_raw"][0]) for packet in json.loads(out.stdout)]

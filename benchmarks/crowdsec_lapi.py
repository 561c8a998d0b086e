"""A CrowdSec local API of a benchmark's own: Debian's `crowdsec` started as
`crowdsec -c CONFIG -no-cs` with a config, SQLite database, log directory
and port in a work directory, and no online_client section (it never talks
to the Central API), so the system's CrowdSec config and database are left
as they were. `cscli()` runs cscli against that config. Used by the
benchmarks that take CrowdSec as their baseline (bench_import, bench_push)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

SYSTEM_CONFIG = "/etc/crowdsec/config.yaml"


class CrowdsecUnavailable(RuntimeError):
    """CrowdSec cannot run here; the message says why and what to do."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CrowdsecLapi:
    def __init__(self, work: Path):
        if shutil.which("crowdsec") is None or shutil.which("cscli") is None:
            raise CrowdsecUnavailable("crowdsec/cscli not installed: `make crowdsec` (installs Debian's crowdsec "
                                      "offline, see DESIGN.md)")
        if not Path(SYSTEM_CONFIG).exists():
            raise CrowdsecUnavailable(f"{SYSTEM_CONFIG} is missing (the package's config this one is made from); "
                                      f"reinstall crowdsec: `make crowdsec`")
        self.work = Path(work)
        self.port = _free_port()
        self.data = self.work / "crowdsec-data"
        self.config = self.work / "crowdsec.yaml"
        self.credentials = self.work / "local_api_credentials.yaml"
        self.process: subprocess.Popen | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.data / "crowdsec.db"

    def _write_config(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        text = Path(SYSTEM_CONFIG).read_text()
        replacements = {
            "daemonize: true": "daemonize: false",
            "log_dir: /var/log/": f"log_dir: {self.work}/",
            "data_dir: /var/lib/crowdsec/data/": f"data_dir: {self.data}/",
            "db_path: /var/lib/crowdsec/data/crowdsec.db": f"db_path: {self.database}",
            "credentials_path: /etc/crowdsec/local_api_credentials.yaml": f"credentials_path: {self.credentials}",
            "listen_uri: 127.0.0.1:8080": f"listen_uri: 127.0.0.1:{self.port}",
            "  enabled: true": "  enabled: false",          # prometheus
            # WAL, as Debian's package configures it (in config.yaml.local, which this config does not read)
            "  type: sqlite\n": "  type: sqlite\n  use_wal: true\n",
        }
        for old, new in replacements.items():
            if old not in text:
                raise CrowdsecUnavailable(f"{SYSTEM_CONFIG} has no {old!r}; the benchmark cannot make its own "
                                          f"config from it (a CrowdSec version other than Debian 12's?)")
            text = text.replace(old, new)
        text = text.replace("    online_client: # Central API credentials (to push signals and receive bad IPs)\n"
                            "      credentials_path: /etc/crowdsec/online_api_credentials.yaml\n", "")
        self.config.write_text(text)
        self.cscli("machines", "add", "benchmark", "--auto", "-f", str(self.credentials), "--force")
        self.credentials.write_text(self.credentials.read_text().replace("http://127.0.0.1:8080", self.url))

    def cscli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(["cscli", "-c", str(self.config), "--error", *args], capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"cscli {' '.join(args[:3])} failed ({result.returncode}): {result.stderr[-2000:]}")
        return result

    def start(self, timeout: float = 30) -> "CrowdsecLapi":
        log = open(self.work / "crowdsec.out", "w")
        self.process = subprocess.Popen(["crowdsec", "-c", str(self.config), "-no-cs"], stdout=log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return self
            except httpx.HTTPError:
                if self.process.poll() is not None:
                    raise CrowdsecUnavailable("crowdsec LAPI exited: " + self.log()[-2000:])
                time.sleep(0.1)
        raise CrowdsecUnavailable(f"crowdsec LAPI did not answer on {self.url} within {timeout:.0f} s: "
                                  + self.log()[-2000:])

    def log(self) -> str:
        path = self.work / "crowdsec.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def version(self) -> str:
        out = subprocess.run(["crowdsec", "-version"], capture_output=True, text=True)
        return next((line.split("version:", 1)[1].strip() for line in (out.stdout + out.stderr).splitlines()
                     if "version:" in line), "unknown")

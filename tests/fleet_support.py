"""Helpers of the fleet tests and the push benchmark: a real controller
process (SQLite, its API and distribution server on free loopback ports,
its fleet CA and signing key made by `edgewarden controller keygen`), and a
protocol-speaking simulated agent (agent.wire over real TLS) that applies
revisions to a PolicyBundle in memory instead of a datapath."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from agent.lab.topology import Topology, TopologyLab, in_netns
from agent.wire import (
    Ack, BundleVerifier, ConnectionClosed, DeltaError, DeltaReceived, DigestReport, DigestRequest, EmergencyAck,
    EmergencyReceived, Hello, IncidentAck, IncidentReport, Reject, RevisionRejected, SnapshotReceived, apply_delta,
    load_public_key,
)
from agent.wire.frames import PROTOCOL_VERSION

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, check=True, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run([PYTHON, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"edgewarden {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Controller:
    directory: Path
    api_port: int = field(default_factory=free_port)
    agent_port: int = field(default_factory=free_port)
    digest_interval: float = 1.0
    process: subprocess.Popen | None = None
    token: str = ""
    netns: str | None = None            # run inside this network namespace (the lab tests)
    hosts: tuple[str, ...] = ("127.0.0.1",)   # what agents dial (the controller certificate's names)
    launcher: tuple[str, ...] = ("-m", "agent.cli")   # how the python runs `edgewarden` (tests/clocked_controller.py)
    tree: Path = REPO                   # the checkout whose code the controller process runs (bench_push A/B)

    @property
    def config(self) -> Path:
        return self.directory / "controller.toml"

    @property
    def ca_dir(self) -> Path:
        return self.directory / "ca"

    @property
    def public_key(self) -> Path:
        return self.directory / "signing.pub"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def setup(self) -> "Controller":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""
[controller]
listen = "{'0.0.0.0' if self.netns else '127.0.0.1'}:{self.api_port}"
database = "sqlite:///{self.directory / 'controller.db'}"
log_level = "info"

[distribution]
listen = "{'0.0.0.0' if self.netns else '127.0.0.1'}:{self.agent_port}"
ca_dir = "{self.ca_dir}"
signing_key = "{self.directory / 'signing.key'}"
digest_interval_seconds = {self.digest_interval}
""")
        cli("controller", "keygen", "--config", str(self.config), *[a for h in self.hosts for a in ("--host", h)])
        self.token = cli("controller", "token", "create", "--config", str(self.config), "--name", "admin",
                         "--role", "admin").stdout.strip()
        return self

    def add_node(self, name: str) -> dict:
        cli("controller", "node", "add", name, "--config", str(self.config))
        return self.node_files(name)

    def node_files(self, name: str) -> dict:
        """Where `controller node add NAME` put the node's certificate, key and the CA."""
        return {"cert": self.ca_dir / f"{name}.pem", "key": self.ca_dir / f"{name}.key", "ca": self.ca_dir / "ca.pem"}

    def start(self) -> "Controller":
        log = open(self.directory / "controller.log", "ab")
        prefix = ["nsenter", f"--net=/var/run/netns/{self.netns}"] if self.netns else []
        self.process = subprocess.Popen([*prefix, PYTHON, *self.launcher, "controller", "--config",
                                         str(self.config)], cwd=self.tree, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"controller exited {self.process.returncode}:\n{self.log()}")
            try:
                if self.netns:
                    if "distribution serving agents" in self.log():
                        self.api("GET", "/health")
                        return self
                    raise OSError("not yet")
                with socket.create_connection(("127.0.0.1", self.agent_port), timeout=0.2):
                    self.api("GET", "/health")
                    return self
            except (OSError, AssertionError):
                time.sleep(0.05)
        raise AssertionError(f"controller did not come up within 30 s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def log(self) -> str:
        path = self.directory / "controller.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def api(self, method: str, path: str, body=None):
        if self.netns:   # from inside the controller's namespace
            cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", "curl", "-sS", "-X", method, "-H",
                   f"Authorization: Bearer {self.token}", "-H", "Content-Type: application/json",
                   "-w", "\n%{http_code}", *(["-d", json.dumps(body)] if body is not None else []),
                   f"http://127.0.0.1:{self.api_port}{path}"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            text, _, code = out.stdout.rpartition("\n")
            if out.returncode != 0 or not code.startswith("2"):
                raise AssertionError(f"{method} {path}: {code} {text} {out.stderr}")
            return json.loads(text or "null")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{method} {path}: HTTP {err.code}: {err.read().decode(errors='replace')}") from None

    def block(self, *sources: str, reason: str = "test block") -> int:
        out = self.api("POST", "/lists/entries", {"sources": list(sources), "reason": reason})
        return out["revision"]

    def create_tenant(self, tenant_id: int = 1) -> int:
        out = self.api("POST", "/tenants", {
            "id": tenant_id, "name": f"示例科技{tenant_id}有限公司", "icp_filing": f"京ICP备1234567{tenant_id}号-1",
            "domains": [f"www{tenant_id}.example.cn"], "vips": [f"203.0.113.{10 + tenant_id}"],
            "contacts": [{"name": "张三", "email": "sec@example.cn", "phone": "+86 10 1234 5678"}],
            "reason": "test tenant"})
        return out["revision"]


class SimAgent:
    """One protocol-speaking agent. `refuse(bundle)` returns a rejection
    message to reject a revision with invalid_policy (None: ack)."""

    def __init__(self, controller: Controller, name: str, files: dict, refuse=None):
        self.controller, self.name, self.files, self.refuse = controller, name, files, refuse
        self.verifier = BundleVerifier([load_public_key(controller.public_key)])
        self.bundle = None
        self.events: list = []
        self.applied: list[tuple[int, str, float]] = []      # (revision, "snapshot"|"delta", time of the ack)
        self.rejected: list[tuple[int, str]] = []
        self.emergencies: list[tuple[str, float]] = []
        self.incident_acks: list[str] = []
        self.closed: ConnectionClosed | None = None
        self.link = None

    async def connect(self):
        from agent.wire.asyncio_client import connect
        from agent.wire.tls import client_context
        context = client_context(self.files["cert"], self.files["key"], self.files["ca"])
        hello = Hello(PROTOCOL_VERSION, self.name, self.verifier.applied_revision, self.verifier.applied_digest,
                      "sim", {"sim0": "native"})
        self.link = await connect("127.0.0.1", self.controller.agent_port, ssl_context=context, hello=hello,
                                  verifier=self.verifier)
        return self.link

    async def run(self):
        """Handle events until the connection closes."""
        link = self.link
        while True:
            event = await link.next_event()
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                self.closed = event
                return
            if isinstance(event, SnapshotReceived):
                await self._offer(event.bundle, "snapshot")
            elif isinstance(event, DeltaReceived):
                try:
                    new = apply_delta(self.bundle, event.delta)
                except (DeltaError, AttributeError) as err:
                    await link.send(Reject(event.delta.to_revision, getattr(err, "reason", "wrong_base"), str(err)))
                    continue
                await self._offer(new, "delta")
            elif isinstance(event, RevisionRejected):
                self.rejected.append((event.revision, event.reason.value))
            elif isinstance(event, EmergencyReceived):
                self.emergencies.append((event.block.emergency_id, time.time()))
                await link.send(EmergencyAck(event.block.emergency_id))
            elif isinstance(event, DigestRequest):
                await link.send(DigestReport(self.verifier.applied_revision, self.verifier.applied_digest,
                                             event.nonce))
            elif isinstance(event, IncidentAck):
                self.incident_acks.append(event.incident_id)

    async def _offer(self, bundle, how: str):
        message = self.refuse(bundle) if self.refuse else None
        if message:
            self.rejected.append((bundle.revision, "invalid_policy"))
            await self.link.send(Reject(bundle.revision, "invalid_policy", message))
            return
        self.bundle = bundle
        await self.link.send(Ack(bundle.revision, bundle.digest))
        self.applied.append((bundle.revision, how, time.time()))

    async def report_incident(self, incident_id: str, document: dict):
        await self.link.send(IncidentReport(incident_id, document))

    async def close(self):
        if self.link is not None:
            await self.link.close()


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- the two-edge lab -------------------------------------------------------
LAB_VIP = "203.0.113.10"
LAB_PEER = "198.51.100.1"      # each peer namespace's address: a block of it stops that edge's ping
LAB_EDGES = (1, 2)


def controller_address(n: int) -> str:
    """Where edge n dials the controller: the controller's end of their /30."""
    return f"192.0.2.{4 * n - 3}"


class FleetLab(TopologyLab):
    """ctl (the controller) --veth-- edgeN --veth-- peerN, for N = 1, 2: each
    edge's agent dials the controller over its own link (which a test can
    cut), and its peer reaches the VIP through the edge's XDP."""

    def __init__(self):
        self.tag = secrets.token_hex(2)
        t = self.topology = Topology(self.tag, ("ctl", *(f"{role}{n}" for n in LAB_EDGES for role in ("edge", "peer"))))
        self.edge_if, self.ctl_if = {}, {}
        for n in LAB_EDGES:
            peer_if, edge_if = f"ewp{n}{self.tag}", f"ewe{n}{self.tag}"
            ctl_side, edge_side = f"ewc{n}{self.tag}", f"ewk{n}{self.tag}"
            self.edge_if[n], self.ctl_if[n] = edge_if, ctl_side
            t.veth(f"peer{n}", peer_if, f"edge{n}", edge_if)
            t.veth("ctl", ctl_side, f"edge{n}", edge_side)
            t.address(f"edge{n}", edge_if, "198.51.100.254/24")
            t.address(f"edge{n}", "lo", f"{LAB_VIP}/32")
            t.link_up(f"edge{n}", edge_if)
            t.address(f"peer{n}", peer_if, f"{LAB_PEER}/24")
            t.link_up(f"peer{n}", peer_if)
            t.peer_program(f"peer{n}", peer_if, "lab_peer_pass")
            t.route(f"peer{n}", "203.0.113.0/24", "198.51.100.254")
            t.address("ctl", ctl_side, f"{controller_address(n)}/30")
            t.address(f"edge{n}", edge_side, f"192.0.2.{4 * n - 2}/30")
            t.link_up("ctl", ctl_side)
            t.link_up(f"edge{n}", edge_side)

    def ns(self, role: str) -> str:
        return self.topology.ns[role]

    def ping(self, n: int) -> bool:
        """Does the peer of edge n reach the VIP through edge n's XDP (two echoes, 1 s to answer)?"""
        return in_netns(self.ns(f"peer{n}"), ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-I", LAB_PEER,
                                              LAB_VIP], check=False).returncode == 0

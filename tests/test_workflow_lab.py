"""The enforcement workflow end to end in a lab (issue 12): a real controller
process in its own namespace, its workflow clock moved by the test
(tests/clocked_controller.py), linked by a veth to an edge namespace whose
agent daemon runs XDP on its peer-facing veth in controller mode; an SMTP
relay (aiosmtpd) and a webhook receiver inside the controller's namespace;
real TCP between the peer and the tenants' VIPs, answered by servers in the
edge namespace. One lab and one controller serve the three scenarios, each
on a tenant of its own:

- virus: reported with `edgewarden incident report`, warned (an e-mail and a
  signed webhook arrive), 30 injected minutes pass, suspended (the VIP's
  traffic stops, counted as drop_tenant_suspended by `edgewarden stats`),
  remediated by an operator (the traffic flows again);
- spam: watched (the agent samples the tenant: a sealed evidence set), then
  severe (suspended for the rule's day, and when that ends port 25 stays
  blocked as drop_port_block while port 80 works);
- a repeat offender: escalated on its third case, suspended by the virus
  rule but never terminated by the controller; `tenant terminate --confirm`
  by an admin takes it out of the agent's policy.

Every step is in the audit chain, and `edgewarden audit verify` passes."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import secrets
import socket
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller as SmtpController

from agent.lab.topology import Topology, TopologyLab, in_namespace, run
from agent.policy import policy_from_document, policy_to_toml
from controller.workflow.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER
from clocked_controller import offset_seconds, set_offset
from daemon_harness import DaemonProcess, write_config
from fleet_support import Controller
from netns_thread import in_netns_thread
from waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
PEER = "198.51.100.1"
VIPS = {1: "203.0.113.10", 2: "203.0.113.20", 3: "203.0.113.30"}   # one tenant per scenario
SMTP_PORT, HOOK_PORT = 2525, 8080        # inside the controller's own namespace: nothing else listens there
WEB, SMTP = 80, 25
EMPTY_POLICY = policy_to_toml(policy_from_document({"revision": 0, "global": {}, "tenants": []}, "empty"))


class WorkflowLab(TopologyLab):
    """ctl (the controller, relay, receiver) --veth-- edge (agent, servers) --veth-- peer (clients)."""

    def __init__(self):
        self.tag = secrets.token_hex(2)
        t = self.topology = Topology(self.tag, ("ctl", "edge", "peer"))
        self.edge_if, peer_if = f"ewwe{self.tag}", f"ewwp{self.tag}"
        ctl_if, link_if = f"ewwc{self.tag}", f"ewwk{self.tag}"
        t.veth("peer", peer_if, "edge", self.edge_if)
        t.veth("ctl", ctl_if, "edge", link_if)
        t.address("edge", self.edge_if, "198.51.100.254/24")
        for vip in VIPS.values():
            t.address("edge", "lo", f"{vip}/32")
        t.link_up("edge", self.edge_if)
        t.address("peer", peer_if, f"{PEER}/24")
        t.link_up("peer", peer_if)
        t.peer_program("peer", peer_if, "lab_peer_pass")
        t.route("peer", "203.0.113.0/24", "198.51.100.254")
        t.address("ctl", ctl_if, "192.0.2.1/30")
        t.address("edge", link_if, "192.0.2.2/30")
        t.link_up("ctl", ctl_if)
        t.link_up("edge", link_if)

    def ns(self, role: str) -> str:
        return self.topology.ns[role]


# --- the servers the test runs ----------------------------------------------------

class Mailbox:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.original_content or envelope.content,
                                                      policy=email.policy.default))
        return "250 OK"


class HookReceiver:
    """Webhook POSTs, kept with their headers; every one answered 204."""

    def __init__(self):
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", HOOK_PORT), Handler)


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        data = self.request.recv(64)
        if data:
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@dataclass
class World:
    lab: WorkflowLab
    controller: Controller
    agent: DaemonProcess
    mail: Mailbox
    hooks: HookReceiver
    offset_file: Path
    secret: bytes
    operator_token: str

    # -- the controller --------------------------------------------------------
    def api(self, method, path, body=None):
        return self.controller.api(method, path, body)

    def cli(self, *args, token=None, check=True) -> subprocess.CompletedProcess:
        """`edgewarden ...` in the controller's namespace, as the operator (default) or with `token`."""
        env = [f"EDGEWARDEN_CONTROLLER=http://127.0.0.1:{self.controller.api_port}",
               f"EDGEWARDEN_TOKEN={token or self.operator_token}"]
        return run(in_namespace(self.lab.ns("ctl"), ["env", *env, sys.executable, "-m", "agent.cli", *args]),
                   check=check, timeout=120, cwd=REPO)

    def advance(self, minutes: float) -> None:
        """The controller's workflow clock moves on; its deadline loop sees it at its next pass."""
        set_offset(self.offset_file, offset_seconds(self.offset_file) + minutes * 60)

    def tenant_state(self, tenant_id) -> str:
        return self.api("GET", f"/tenants/{tenant_id}")["state"]

    def latest_revision(self) -> int:
        return self.api("GET", "/policy/latest")["revision"]

    # -- the agent -------------------------------------------------------------
    def applied(self, revision: int, timeout: float = 30) -> None:
        """Wait until the agent applied `revision` or a later one."""
        def seen():
            return max((e.get("revision", 0) for e in self.agent.lines if e.get("event") == "revision_applied"),
                       default=0)
        wait_until(seen, lambda r: r >= revision, timeout, f"the agent applying revision {revision}")

    def converged(self) -> int:
        revision = self.latest_revision()
        self.applied(revision)
        return revision

    def stats(self) -> dict[int, dict]:
        """`edgewarden stats --json` in the edge namespace: tenant id -> its row."""
        out = run(in_namespace(self.lab.ns("edge"), [sys.executable, "-m", "agent.cli", "stats", "--json"]),
                  timeout=120, cwd=REPO)
        rows = json.loads(out.stdout)["interfaces"][self.lab.edge_if]["tenants"]
        return {row["tenant_id"]: row for row in rows}

    def dropped(self, tenant_id: int, reason: str) -> int:
        row = self.stats().get(tenant_id)
        return row["reason_packets"][reason] if row else 0

    # -- traffic ---------------------------------------------------------------
    def exchange(self, tenant_id: int, port: int, timeout: float = 1.5) -> bool:
        """A TCP connection from the peer to the tenant's VIP, a payload echoed back: True if it got through."""
        payload = secrets.token_bytes(16)

        def attempt():
            with socket.socket() as s:
                s.settimeout(timeout)
                s.bind((PEER, 0))
                try:
                    s.connect((VIPS[tenant_id], port))
                    s.sendall(payload)
                    return s.recv(64) == payload
                except OSError:
                    return False
        return in_netns_thread(self.lab.ns("peer"), attempt)

    def flows(self, tenant_id: int, port: int, timeout: float = 20) -> None:
        """The tenant's traffic gets through (tried again while a starved CPU drops a slow attempt)."""
        wait_until(lambda: self.exchange(tenant_id, port), bool, timeout,
                   f"TCP to tenant {tenant_id}'s VIP {VIPS[tenant_id]}:{port} getting through")

    # -- what the tenant was told --------------------------------------------------
    def notices(self, case_id: int, event: str, timeout: float = 30) -> tuple[dict, email.message.EmailMessage]:
        """Wait for the webhook and the e-mail of one notice of the case; check the webhook's signature."""
        def arrived():
            hooks = [r for r in self.hooks.requests if _payload(r)["case"]["id"] == case_id
                     and _payload(r)["event"] == event]
            mails = [m for m in self.mail.messages if m["Subject"].endswith(f"case #{case_id}")
                     and _event_of(m) == event]
            return hooks, mails
        hooks, mails = wait_until(arrived, lambda hm: hm[0] and hm[1], timeout,
                                  f"the {event} notice of case {case_id} by webhook and e-mail")
        hook = hooks[0]
        timestamp = hook["headers"][TIMESTAMP_HEADER]
        expected = "sha256=" + hmac.new(self.secret, timestamp.encode() + b"." + hook["body"], hashlib.sha256).hexdigest()
        assert hook["headers"][SIGNATURE_HEADER] == expected
        return _payload(hook), mails[0]

    def audit_verified(self) -> None:
        out = self.cli("audit", "verify")
        assert out.returncode == 0 and "audit chain intact" in out.stdout, out.stdout + out.stderr

    def trail(self, case_id: int) -> list[str]:
        return [a["action"] for a in self.api("GET", f"/cases/{case_id}")["trail"]]

    def tenant_audit(self, tenant_id: int) -> list[dict]:
        return self.api("GET", f"/audit?tenant_id={tenant_id}&limit=1000")


def _payload(request) -> dict:
    return json.loads(request["body"])


EVENT_SUBJECTS = {"warning": "security warning", "suspension": "service suspended", "resumed": "service resumed",
                  "action": "enforcement notice", "escalation": "case escalated", "termination": "CDN access terminated"}


def _event_of(message) -> str | None:
    return next((event for event, text in EVENT_SUBJECTS.items() if text in message["Subject"]), None)


RULES = """
[notify]
channels = ["email", "webhook"]
max_attempts = 3
backoff_seconds = 1
[notify.email]
relay = "127.0.0.1:{smtp}"
sender = "security@cdn.example.net"
starttls = "opportunistic"
timeout_seconds = 10
[notify.webhook]
secret_file = "{secret}"
timeout_seconds = 10
"""


def tenant_body(tenant_id: int) -> dict:
    return {"id": tenant_id, "name": f"杭州示例网络{tenant_id}有限公司", "icp_filing": f"浙ICP备2345678{tenant_id}号-1",
            "domains": [f"shop{tenant_id}.example.cn"], "vips": [VIPS[tenant_id]],
            "contacts": [{"name": "李四", "email": f"sec{tenant_id}@example.cn", "phone": "+86 571 5555 0100",
                          "webhook_url": f"http://127.0.0.1:{HOOK_PORT}/tenant/{tenant_id}"}],
            "reason": "onboarding for the workflow lab"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workflowlab")
    secret = secrets.token_hex(16).encode()
    (tmp / "webhook.secret").write_bytes(secret)
    (tmp / "enforcement.toml").write_text(RULES.format(smtp=SMTP_PORT, secret=tmp / "webhook.secret"))
    offset_file = tmp / "clock-offset"
    set_offset(offset_file, 0)
    with WorkflowLab() as lab:
        ctl, edge = lab.ns("ctl"), lab.ns("edge")
        mail, hooks = Mailbox(), None
        relay = SmtpController(mail, hostname="127.0.0.1", port=SMTP_PORT)
        in_netns_thread(ctl, relay.start)
        servers, controller, agent = [], None, None
        try:
            hooks = in_netns_thread(ctl, HookReceiver)
            threading.Thread(target=hooks.server.serve_forever, daemon=True).start()
            for port in (WEB, SMTP):
                server = in_netns_thread(edge, lambda port=port: EchoServer(("0.0.0.0", port), EchoHandler))
                threading.Thread(target=server.serve_forever, daemon=True).start()
                servers.append(server)

            controller = Controller(tmp / "controller", netns=ctl, hosts=("192.0.2.1",),
                                    launcher=(str(REPO / "tests" / "clocked_controller.py"), str(offset_file)))
            controller.setup()
            with open(controller.config, "a") as config:
                config.write(f'\n[workflow]\nrules = "{tmp / "enforcement.toml"}"\nworkflow_interval_seconds = 0.2\n')
            files = controller.add_node("edge-1")
            controller.start()
            operator = controller.api("POST", "/tokens", {"name": "alice", "role": "operator",
                                                          "reason": "the lab's operator"})["token"]
            extra = (f'[controller]\naddress = "192.0.2.1:{controller.agent_port}"\nca = "{files["ca"]}"\n'
                     f'cert = "{files["cert"]}"\nkey = "{files["key"]}"\ntrusted_keys = ["{controller.public_key}"]\n'
                     f'report_interval_seconds = 1\n')
            config = write_config(tmp / "agent", [lab.edge_if], EMPTY_POLICY, extra=extra)
            config.write_text(config.read_text().replace('node = "test-node"', 'node = "edge-1"'))
            agent = DaemonProcess(edge, config)
            agent.wait_log("controller_connected", timeout=60)
            w = World(lab, controller, agent, mail, hooks, offset_file, secret, operator)
            for tenant_id in VIPS:
                controller.api("POST", "/tenants", tenant_body(tenant_id))
            w.converged()
            yield w
        finally:
            if agent is not None:
                agent.stop()
            if controller is not None:
                controller.stop()
            for server in servers:
                server.shutdown()
                server.server_close()
            if hooks is not None:
                hooks.server.shutdown()
                hooks.server.server_close()
            in_netns_thread(ctl, relay.stop)


def test_virus_warned_suspended_at_minute_30_in_the_datapath_then_remediated(world):
    w = world
    w.flows(1, WEB)

    reported = w.cli("incident", "report", "--tenant", "1", "--kind", "virus", "--json",
                     "--summary", "蠕虫 Conficker 从 203.0.113.10 向外扫描 445 端口", "--evidence", "sha256:" + "cd" * 32)
    case = json.loads(reported.stdout)
    assert case["state"] == "warned" and case["done"] == ["warn"]
    hook, mail = w.notices(case["id"], "warning")
    assert hook["tenant"] == {"id": 1, "name": "杭州示例网络1有限公司"} and hook["case"]["kind"] == "virus"
    assert hook["deadline"] and "Conficker" in hook["seen"][0]
    assert mail["To"] == "sec1@example.cn" and "安全警告" in mail["Subject"]
    assert "Conficker" in mail.get_content() and "杭州示例网络1有限公司" in mail.get_content()
    assert w.tenant_state(1) == "active"
    w.flows(1, WEB)                     # warned, not yet cut off

    # 30 minutes pass on the controller's clock with no remediation: the tenant is suspended
    w.advance(minutes=30.5)
    wait_until(lambda: w.tenant_state(1), lambda s: s == "suspended", 30, "the 30-minute rule suspending tenant 1")
    w.converged()
    before = w.dropped(1, "drop_tenant_suspended")
    assert not w.exchange(1, WEB)
    after = w.stats()[1]
    assert after["state"] == "suspended" and after["reason_packets"]["drop_tenant_suspended"] > before
    hook, mail = w.notices(case["id"], "suspension")
    assert "suspend" in hook["done"] and "服务中断通知" in mail["Subject"]

    # the operator marks it remediated: the case's suspension is lifted, the traffic flows again
    out = json.loads(w.cli("case", "remediate", str(case["id"]), "--json", "--reason", "病毒已清除 hosts reimaged").stdout)
    assert out["state"] == "remediating" and out["done"] == ["resume"]
    w.applied(max(out["revisions"]))
    w.flows(1, WEB)
    assert w.stats()[1]["state"] == "active"
    w.notices(case["id"], "resumed")
    w.cli("case", "close", str(case["id"]), "--reason", "verified clean")

    assert w.trail(case["id"]) == ["case.open", "incident.report", "case.warned", "deadline.done",
                                   "case.remediating", "case.resolved"]
    states = [(e["operator"], e["after"]["state"]) for e in w.tenant_audit(1) if e["action"] == "tenant.update"]
    assert states == [("controller", "suspended"), ("alice", "active")]
    w.audit_verified()


def test_spam_watched_and_sampled_then_smtp_ports_blocked_while_the_web_works(world):
    w = world
    w.flows(2, WEB)
    w.flows(2, SMTP)

    case = w.api("POST", "/incidents", {"tenant_id": 2, "kind": "spam", "summary": "投诉：开放中继发送垃圾邮件 open relay",
                                        "source": "complaint"})
    assert case["done"] == ["warn", "watch"]
    w.applied(max(case["revisions"]))
    w.notices(case["id"], "warning")
    marks = w.agent.lines[:]
    for _ in range(5):                 # the watched tenant's traffic, sampled by the agent
        w.flows(2, WEB)

    severe = w.api("POST", "/incidents", {"tenant_id": 2, "kind": "spam", "severity": "severe",
                                          "summary": "每小时 20 万封垃圾邮件 200k spam mails an hour"})
    assert severe["id"] == case["id"] and {"suspend_temporarily", "block_ports"} <= set(severe["done"])
    w.applied(max(severe["revisions"]))
    assert not w.exchange(2, WEB)       # suspended for the rule's suspension_minutes
    w.notices(case["id"], "suspension")

    # the day of suspension ends on the controller's clock; the SMTP ports stay blocked
    w.advance(minutes=24 * 60 + 1)
    wait_until(lambda: w.tenant_state(2), lambda s: s == "active", 30, "the temporary suspension of tenant 2 ending")
    w.converged()
    before = w.dropped(2, "drop_port_block")
    assert not w.exchange(2, SMTP)
    assert w.dropped(2, "drop_port_block") > before
    w.flows(2, WEB)

    # the case closed: ports unblocked, off the watch list; the watch-list sample set is sealed
    out = json.loads(w.cli("case", "close", str(case["id"]), "--json", "--reason", "relay closed, verified").stdout)
    assert {"unblock", "unwatch"} <= set(out["done"])
    w.applied(max(out["revisions"]))
    sealed = w.agent.wait_log("evidence_sealed", timeout=30, after=len(marks), incident="watch:2", tenant=2)
    assert sealed["packets"] > 0
    w.flows(2, SMTP)
    w.flows(2, WEB)

    assert w.trail(case["id"]) == ["case.open", "incident.report", "case.warned", "incident.report",
                                   "deadline.done", "case.resolved"]
    audit = w.tenant_audit(2)
    assert [e["after"]["watch"] for e in audit if e["action"] == "tenant.watch"] == [True, False]
    w.audit_verified()


def test_a_repeat_offender_is_terminated_only_on_an_admins_confirmation(world):
    w = world
    for n in (1, 2):                   # two strikes within the window
        earlier = w.api("POST", "/incidents", {"tenant_id": 3, "kind": "virus", "summary": f"病毒 strike {n}"})
        w.api("POST", f"/cases/{earlier['id']}/close", {"reason": "cleaned", "resolution": "remediated"})
    third = w.api("POST", "/incidents", {"tenant_id": 3, "kind": "virus", "summary": "第三次感染 third infection"})
    assert third["state"] == "escalated" and third["termination_proposed"] and third["strikes_before"] == 2
    w.notices(third["id"], "escalation")
    assert w.tenant_state(3) == "active"
    w.flows(3, WEB)                     # proposed, not done

    refused = w.cli("tenant", "terminate", "3", "--reason", "repeat offender", token=w.controller.token, check=False)
    assert refused.returncode != 0 and "--confirm" in refused.stdout + refused.stderr
    refused = w.cli("tenant", "terminate", "3", "--confirm", "--reason", "repeat offender", check=False)
    assert refused.returncode != 0 and "admin" in refused.stdout + refused.stderr     # alice is an operator

    # the virus rule still suspends it, a week passes: the controller never terminates on its own
    w.advance(minutes=7 * 24 * 60)
    wait_until(lambda: w.tenant_state(3), lambda s: s == "suspended", 30, "the 30-minute rule suspending tenant 3")
    w.converged()
    assert not w.exchange(3, WEB)
    row = w.stats()[3]
    assert row["state"] == "suspended" and row["reason_packets"]["drop_tenant_suspended"] > 0
    assert w.tenant_state(3) == "suspended"

    # the admin confirms: the tenant leaves the agent's policy; its records stay
    done = w.cli("tenant", "terminate", "3", "--confirm", "--json", "--reason", "第三次违约 clause 八",
                 token=w.controller.token)
    out = json.loads(done.stdout)
    assert out["state"] == "terminated" and out["closed_cases"] == [third["id"]]
    w.applied(out["revision"])
    assert w.stats().get(3, {}).get("state", "-") == "-"                 # no tenant 3 in the agent's policy
    unassigned = w.stats().get(0, {}).get("packets", 0)
    w.exchange(3, WEB)
    assert w.stats()[0]["packets"] > unassigned                          # its VIP's traffic is no tenant's now
    assert w.tenant_state(3) == "terminated"
    w.notices(third["id"], "termination")

    terminations = [e for e in w.tenant_audit(3) if e["action"] == "tenant.terminate"]
    assert len(terminations) == 1 and terminations[0]["operator"] == "admin"
    assert terminations[0]["after"]["confirmed"] is True and terminations[0]["after"]["proposed_by_cases"] == [third["id"]]
    assert w.trail(third["id"]) == ["case.open", "incident.report", "case.warned", "case.escalated",
                                    "deadline.done", "case.resolved"]
    w.audit_verified()

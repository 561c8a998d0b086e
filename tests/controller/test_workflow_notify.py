"""Notifications through real local servers: an SMTP relay (aiosmtpd) that
offers STARTTLS with a certificate made here, and HTTP receivers, one that
fails twice and then accepts, one that never does. What arrived is checked:
the Chinese subject and body, the webhook's HMAC signature, the retries'
backoff, the give-up on the record. A relay that is down never holds up a
suspension."""

import dataclasses
import email
import email.policy
import hashlib
import hmac
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
from aiosmtpd.controller import Controller
from sqlalchemy import select

from controller import schema as cschema
from controller.store import reading
from controller.workflow import IncidentReport, ManualClock
from controller.workflow.notify import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from controller.workflow.rules import DEFAULT_RULES, EmailChannel, Notify, WebhookChannel

from workflow_helpers import add_tenant, assert_chain_intact, tenant, workflow

TENANT_NAME = "北京示例科技有限公司1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({"tls": session.ssl is not None, "rcpt": list(envelope.rcpt_tos),
                              "data": envelope.original_content or envelope.content})
        return "250 OK"


@pytest.fixture
def smtp_relay(tmp_path):
    """aiosmtpd on loopback, STARTTLS required, its certificate from a CA made for this test."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    box = Mailbox()
    port = free_port()
    relay = Controller(box, hostname="127.0.0.1", port=port, tls_context=server_ctx, require_starttls=True)
    relay.start()
    yield box, f"127.0.0.1:{port}", str(ca_file)
    relay.stop()


class Receiver:
    """An HTTP webhook receiver in a thread; the first `fail` requests get 500."""

    def __init__(self, fail: int):
        self.fail, self.requests = fail, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                ok = len(receiver.requests) > receiver.fail
                self.send_response(204 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/edgewarden"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made = []

    def make(fail):
        made.append(Receiver(fail))
        return made[-1]
    yield make
    for r in made:
        r.close()


def rules_for(relay, ca_file, secret_file, *, max_attempts=5):
    return dataclasses.replace(DEFAULT_RULES, notify=Notify(
        max_attempts=max_attempts, backoff_seconds=1.0, backoff_max_seconds=60.0,
        email=EmailChannel(relay=relay, sender="security@cdn.example.net", starttls="required", ca_file=ca_file,
                           timeout_seconds=10),
        webhook=WebhookChannel(secret_file=secret_file, timeout_seconds=5)))


def test_warning_arrives_by_email_over_starttls_and_by_a_signed_webhook_after_two_failures(
        engine, smtp_relay, receivers, tmp_path):
    box, relay, ca_file = smtp_relay
    hook = receivers(fail=2)
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(b"s3cret-key\n")
    add_tenant(engine, webhook_url=hook.url, email="security@example.cn")
    clock = ManualClock()
    wf = workflow(engine, rules=rules_for(relay, ca_file, str(secret)), clock=clock)
    case = wf.report(IncidentReport(tenant_id=1, kind="virus", summary="蠕虫向外扫描 445 端口",
                                    evidence=("sha256:" + "cd" * 32,)), reported_by="alice")
    deadline = case["next_deadline"]["due_at"]

    assert wf.deliver() == {"sent": 1, "retry": 1, "failed": 0}     # e-mail out; webhook: first 500
    assert wf.deliver() == {"sent": 0, "retry": 0, "failed": 0}     # not due again before its backoff
    clock.advance(seconds=1)
    assert wf.deliver() == {"sent": 0, "retry": 1, "failed": 0}     # second 500; next in 2 s
    clock.advance(seconds=1)
    assert wf.deliver()["retry"] == 0 and len(hook.requests) == 2
    clock.advance(seconds=1)
    assert wf.deliver() == {"sent": 1, "retry": 0, "failed": 0}
    assert len(hook.requests) == 3

    # the e-mail: over TLS, the Chinese subject and body decoded intact
    [mail] = box.messages
    assert mail["tls"] and mail["rcpt"] == ["security@example.cn"]
    msg = email.message_from_bytes(mail["data"], policy=email.policy.default)
    assert msg["Subject"] == f"[edgewarden] 安全警告 / security warning: {TENANT_NAME} (租户 tenant 1), 案件 case #{case['id']}"
    body = msg.get_content()
    for text in (f"租户 Tenant: {TENANT_NAME}", "蠕虫向外扫描 445 端口", "发出警告 / warned",
                 "立即断开受感染主机", f"期限 Deadline: {deadline:%Y-%m-%d %H:%M} UTC"):
        assert text in body
    assert msg.get_content_charset() == "utf-8"

    # the webhook: the same delivery id on every attempt, signed over timestamp and body
    ids = {r["headers"][DELIVERY_HEADER] for r in hook.requests}
    assert len(ids) == 1
    last = hook.requests[-1]
    expected = "sha256=" + hmac.new(b"s3cret-key", last["headers"][TIMESTAMP_HEADER].encode() + b"." + last["body"],
                                    hashlib.sha256).hexdigest()
    assert last["headers"][SIGNATURE_HEADER] == expected
    doc = json.loads(last["body"].decode("utf-8"))
    assert doc["tenant"] == {"id": 1, "name": TENANT_NAME} and doc["case"]["id"] == case["id"]
    assert doc["event"] == "warning" and doc["done"] == ["warn"] and doc["deadline"] == deadline.isoformat() + "Z"
    assert "立即断开受感染主机" in doc["must"]
    states = {n["channel"]: (n["status"], n["attempts"]) for n in wf.show_case(case["id"])["notifications"]}
    assert states == {"email": ("sent", 1), "webhook": ("sent", 3)}
    assert_chain_intact(engine)


def test_an_undeliverable_webhook_is_given_up_and_recorded(engine, smtp_relay, receivers, tmp_path):
    box, relay, ca_file = smtp_relay
    hook = receivers(fail=1000)
    add_tenant(engine, webhook_url=hook.url)
    clock = ManualClock()
    wf = workflow(engine, rules=rules_for(relay, ca_file, None, max_attempts=3), clock=clock)
    case = wf.report(IncidentReport(tenant_id=1, kind="spam", summary="开放中继"), reported_by="alice")
    counts = []
    for _ in range(6):
        counts.append(wf.deliver())
        clock.advance(seconds=10)
    assert sum(c["failed"] for c in counts) == 1 and len(hook.requests) == 3
    [webhook] = [n for n in wf.show_case(case["id"])["notifications"] if n["channel"] == "webhook"]
    assert webhook["status"] == "failed" and webhook["attempts"] == 3 and "500" in webhook["last_error"]
    with reading(engine) as conn:
        a = cschema.audit.c
        entry = conn.execute(select(cschema.audit).where(a.action == "notification.failed")).mappings().one()
    assert "given up after 3 attempts" in entry["reason"]
    assert SIGNATURE_HEADER not in hook.requests[0]["headers"]       # no secret configured: unsigned
    assert_chain_intact(engine)


def test_a_relay_that_is_down_never_holds_up_a_suspension(engine, receivers):
    hook = receivers(fail=1000)
    add_tenant(engine, webhook_url=hook.url)
    closed = f"127.0.0.1:{free_port()}"        # nothing listens there
    wf = workflow(engine, rules=rules_for(closed, None, None, max_attempts=2))
    case = wf.report(IncidentReport(tenant_id=1, kind="virus", summary="confirmed worm", harm_confirmed=True),
                     reported_by="alice")
    assert tenant(engine)["state"] == "suspended" and case["done"] == ["suspend"]
    counts = wf.deliver()
    assert counts["sent"] == 0 and counts["retry"] == 2
    [mail] = [n for n in wf.show_case(case["id"])["notifications"] if n["channel"] == "email"]
    assert mail["status"] == "pending" and "SMTP relay" in mail["last_error"]
    assert tenant(engine)["state"] == "suspended"


def test_two_senders_deliver_each_notification_once(postgres_cluster, receivers):
    """Two senders (threads, each its own connections) on one PostgreSQL outbox."""
    from controller.store import migrate, open_engine
    url = postgres_cluster.create_database("ew_two_senders", template="ew_template")
    engine = open_engine(url)
    migrate(engine)
    hook = receivers(fail=0)
    rules = dataclasses.replace(DEFAULT_RULES, notify=Notify(channels=("webhook",), max_attempts=3))
    wf = workflow(engine, rules=rules)
    for t in range(1, 16):
        add_tenant(engine, t, webhook_url=hook.url)
        wf.report(IncidentReport(tenant_id=t, kind="spam", summary="open relay"), reported_by="alice")
    results = []
    senders = [threading.Thread(target=lambda: results.append(workflow(engine, rules=rules).deliver()))
               for _ in range(2)]
    for s in senders:
        s.start()
    for s in senders:
        s.join(timeout=120)
    assert sum(r["sent"] for r in results) == 15
    ids = [r["headers"][DELIVERY_HEADER] for r in hook.requests]
    assert len(ids) == 15 and len(set(ids)) == 15
    print(f"sent by sender 1: {results[0]['sent']}, sender 2: {results[1]['sent']}")
    engine.dispose()

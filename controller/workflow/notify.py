"""Telling the tenant: the message (tenant, case, what was seen, what was
done, what the tenant must do, the deadline; Chinese first, then English),
the outbox rows written inside the enforcement step's transaction, and the
sender that delivers them afterwards by e-mail (SMTP relay, STARTTLS when
offered) and webhook (HTTP POST signed with HMAC-SHA256), retrying with
exponential backoff and giving up, on the record, after a limit.

A notification that cannot be delivered never holds up enforcement: the
step commits with its outbox rows, and only the sender waits on networks."""

from __future__ import annotations

import datetime as dt
import email.policy
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import httpx
from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from controller import audit, schema as cschema
from controller.revisions import SYSTEM_OPERATOR
from controller.store import writing
from controller.workflow import schema
from controller.workflow.clock import Clock
from controller.workflow.rules import Notify, Rules

log = logging.getLogger("edgewarden.controller.workflow.notify")

SIGNATURE_HEADER = "X-Edgewarden-Signature"     # "sha256=" + hex HMAC over "<timestamp>." + body
TIMESTAMP_HEADER = "X-Edgewarden-Timestamp"     # unix seconds; signed, so a receiver can refuse replays
DELIVERY_HEADER = "X-Edgewarden-Delivery"       # the outbox row id; the same on every retry
LEASE = dt.timedelta(minutes=5)                 # a sender that dies mid-delivery frees its row after this

KIND_NAMES = {
    "illegal_content": ("危害信息安全的行为（非法信息源）", "illegal content"),
    "network_attack": ("网络攻击行为", "network attack"),
    "virus": ("计算机病毒危害行为", "computer virus"),
    "spam": ("发送或协助发送垃圾邮件行为", "spam"),
    "false_filing": ("备案信息不真实", "false ICP filing"),
}
EVENT_NAMES = {
    "warning": ("安全警告", "security warning"),
    "action": ("安全处置通知", "enforcement notice"),
    "suspension": ("服务中断通知", "service suspended"),
    "resumed": ("服务恢复通知", "service resumed"),
    "escalation": ("案件升级（屡整屡犯）", "case escalated (repeat offence)"),
    "termination": ("终止CDN接入合作通知", "CDN access terminated"),
}
ACTION_TEXT = {
    "warn": ("发出警告", "warned"),
    "notify": ("通知", "notified"),
    "watch": ("列入监控名单", "put on the watch list"),
    "suspend": ("中断网络连接（暂停服务）", "suspended (network connection cut)"),
    "suspend_temporarily": ("暂时关闭网络服务", "suspended temporarily"),
    "block_sources": ("封堵信息源/攻击源地址", "source addresses blocked"),
    "block_ports": ("封堵互连端口", "ports blocked"),
    "resume": ("恢复服务", "service resumed"),
    "escalate": ("案件升级，拟终止合作（需管理员确认）", "escalated; termination proposed (needs an admin)"),
    "terminate": ("终止CDN接入合作", "terminated"),
    "unwatch": ("移出监控名单", "removed from the watch list"),
    "unblock": ("解除封堵", "blocks lifted"),
}


@dataclass
class Notice:
    """What one notification says; rendered once, the same on every channel."""

    event: str
    tenant_id: int
    tenant_name: str
    case_id: int
    kind: str
    clause: str
    seen: list[str]
    done: list[str]                      # ACTION_TEXT keys, or free text
    must: str
    deadline: dt.datetime | None = None
    details: dict = field(default_factory=dict)

    def subject(self) -> str:
        zh, en = EVENT_NAMES[self.event]
        return f"[edgewarden] {zh} / {en}: {self.tenant_name} (租户 tenant {self.tenant_id}), 案件 case #{self.case_id}"

    def _done_lines(self) -> list[str]:
        out = []
        for d in self.done:
            zh, en = ACTION_TEXT.get(d, (d, d))
            out.append(f"  - {zh} / {en}")
        return out or ["  - （无）/ none"]

    def body(self) -> str:
        kind_zh, kind_en = KIND_NAMES[self.kind]
        deadline = (f"{self.deadline:%Y-%m-%d %H:%M} UTC（北京时间 "
                    f"{self.deadline + dt.timedelta(hours=8):%Y-%m-%d %H:%M}）") if self.deadline else "无 / none"
        lines = [
            f"租户 Tenant: {self.tenant_name} (ID {self.tenant_id})",
            f"案件 Case: #{self.case_id} — {kind_zh} / {kind_en}（责任书第{self.clause}条 / agreement clause {self.clause}）",
            "",
            "发现的情况 What was seen:",
            *[f"  - {s}" for s in self.seen],
            "",
            "已采取的措施 What was done:",
            *self._done_lines(),
            "",
            "您必须 What you must do:",
            f"  {self.must}",
            "",
            f"期限 Deadline: {deadline}",
            "",
            "本通知由 edgewarden 安全处置流程自动发出；如有疑问请联系 CDN 安全值班。",
            "This notice was sent by the edgewarden enforcement workflow; reply to the CDN security desk.",
        ]
        return "\n".join(lines) + "\n"

    def payload(self) -> dict:
        return {"event": self.event, "tenant": {"id": self.tenant_id, "name": self.tenant_name},
                "case": {"id": self.case_id, "kind": self.kind, "clause": self.clause},
                "seen": self.seen, "done": self.done, "must": self.must,
                "deadline": self.deadline.isoformat() + "Z" if self.deadline else None,
                "subject": self.subject(), "text": self.body(), **({"details": self.details} if self.details else {})}


def recipients(conn: Connection, tenant_id: int, rules: Rules, *, operator_copy: bool = False) -> list[tuple[str, str]]:
    """(channel, recipient) for every security contact of the tenant, on the configured channels."""
    c = cschema.contacts.c
    out: list[tuple[str, str]] = []
    for email_addr, url in conn.execute(select(c.email, c.webhook_url).where(c.tenant_id == tenant_id)
                                        .order_by(c.position)):
        if "email" in rules.notify.channels and ("email", email_addr) not in out:
            out.append(("email", email_addr))
        if url and "webhook" in rules.notify.channels and ("webhook", url) not in out:
            out.append(("webhook", url))
    if operator_copy and rules.notify.operator_email and "email" in rules.notify.channels:
        out.append(("email", rules.notify.operator_email))
    return out


def enqueue(conn: Connection, notice: Notice, rules: Rules, now: dt.datetime, *, operator_copy: bool = False) -> list[int]:
    """Outbox rows for the notice, in the caller's transaction; the sender delivers them later."""
    ids = []
    body, subject = notice.body(), notice.subject()
    payload = json.dumps(notice.payload(), ensure_ascii=False, sort_keys=True)
    for channel, recipient in recipients(conn, notice.tenant_id, rules, operator_copy=operator_copy):
        ids.append(conn.execute(insert(schema.notifications).values(
            case_id=notice.case_id, tenant_id=notice.tenant_id, channel=channel, recipient=recipient,
            subject=subject, body=body, payload=payload, status="pending", attempts=0, next_attempt_at=now,
            created_at=now).returning(schema.notifications.c.id)).scalar_one())
    return ids


# --- delivery -------------------------------------------------------------------

class DeliveryError(Exception):
    """One attempt failed; the message says what the relay or receiver answered."""


def build_email(row: dict, sender: str) -> EmailMessage:
    # policy.SMTP: non-ASCII headers go out as RFC 2047 UTF-8 encoded words, lines end CRLF,
    # so any relay carries the Chinese subject, SMTPUTF8 or not
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = row["recipient"]
    msg["Subject"] = row["subject"]
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=f"case{row['case_id']}.n{row['id']}", domain=sender.rpartition("@")[2] or None)
    msg[DELIVERY_HEADER] = str(row["id"])
    msg.set_content(row["body"], charset="utf-8")
    return msg


def send_email(row: dict, notify: Notify) -> None:
    cfg = notify.email
    host, _, port = cfg.relay.rpartition(":")
    try:
        with smtplib.SMTP(host.strip("[]"), int(port), timeout=cfg.timeout_seconds) as smtp:
            smtp.ehlo()
            if cfg.starttls != "off" and smtp.has_extn("starttls"):
                context = ssl.create_default_context(cafile=cfg.ca_file)
                smtp.starttls(context=context)
                smtp.ehlo()
            elif cfg.starttls == "required":
                raise DeliveryError(f"relay {cfg.relay} does not offer STARTTLS and notify.email.starttls = 'required'")
            if cfg.username:
                password = Path(cfg.password_file).read_text().strip() if cfg.password_file else ""
                smtp.login(cfg.username, password)
            refused = smtp.send_message(build_email(row, cfg.sender))
            if refused:
                raise DeliveryError(f"relay {cfg.relay} refused {', '.join(refused)}")
    except (OSError, smtplib.SMTPException, ssl.SSLError) as err:
        raise DeliveryError(f"SMTP relay {cfg.relay}: {err}") from None


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def send_webhook(row: dict, notify: Notify, now: dt.datetime) -> None:
    body = row["payload"].encode("utf-8")
    timestamp = str(int(now.replace(tzinfo=dt.timezone.utc).timestamp()))
    headers = {"Content-Type": "application/json; charset=utf-8", DELIVERY_HEADER: str(row["id"]),
               TIMESTAMP_HEADER: timestamp, "User-Agent": "edgewarden-controller"}
    if notify.webhook.secret_file:
        secret = Path(notify.webhook.secret_file).read_bytes().strip()
        headers[SIGNATURE_HEADER] = webhook_signature(secret, timestamp, body)
    try:
        response = httpx.post(row["recipient"], content=body, headers=headers, timeout=notify.webhook.timeout_seconds)
    except httpx.HTTPError as err:
        raise DeliveryError(f"webhook {row['recipient']}: {err}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"webhook {row['recipient']} answered {response.status_code}: {response.text[:200]}")


def _claim(engine: Engine, now: dt.datetime) -> dict | None:
    """Take one due row under a lease, in a short transaction of its own; on
    PostgreSQL rows another sender holds are skipped, not waited for."""
    n = schema.notifications.c
    query = (select(schema.notifications)
             .where(n.status == "pending", n.next_attempt_at <= now,
                    or_(n.claimed_until.is_(None), n.claimed_until < now))
             .order_by(n.next_attempt_at, n.id).limit(1))
    if engine.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    with engine.connect().execution_options(writing=True) as conn:
        with conn.begin():
            row = conn.execute(query).mappings().one_or_none()
            if row is None:
                return None
            conn.execute(update(schema.notifications).where(n.id == row["id"]).values(claimed_until=now + LEASE))
            return dict(row)


def backoff(notify: Notify, attempts: int) -> dt.timedelta:
    """After the n-th failed attempt: backoff_seconds * 2^(n-1), at most backoff_max_seconds."""
    return dt.timedelta(seconds=min(notify.backoff_seconds * 2 ** (attempts - 1), notify.backoff_max_seconds))


def deliver_due(engine: Engine, rules: Rules, clock: Clock, limit: int = 100) -> dict:
    """Deliver what is due now; returns counts {'sent', 'retry', 'failed'}."""
    counts = {"sent": 0, "retry": 0, "failed": 0}
    n = schema.notifications.c
    for _ in range(limit):
        now = clock.now()
        row = _claim(engine, now)
        if row is None:
            break
        try:
            if row["channel"] == "email":
                send_email(row, rules.notify)
            else:
                send_webhook(row, rules.notify, now)
        except (DeliveryError, OSError) as err:
            attempts = row["attempts"] + 1
            if attempts >= rules.notify.max_attempts:
                counts["failed"] += 1
                log.warning("notification %d to %s given up after %d attempts: %s", row["id"], row["recipient"],
                            attempts, err)
                with writing(engine) as (conn, head):
                    conn.execute(update(schema.notifications).where(n.id == row["id"]).values(
                        status="failed", attempts=attempts, last_error=str(err), claimed_until=None))
                    audit.record(conn, head, operator=SYSTEM_OPERATOR, action="notification.failed",
                                 tenant_id=row["tenant_id"], target=f"notification {row['id']} (case {row['case_id']})",
                                 reason=f"given up after {attempts} attempts (notify.max_attempts): {err}",
                                 after={"channel": row["channel"], "recipient": row["recipient"],
                                        "attempts": attempts, "last_error": str(err)})
            else:
                counts["retry"] += 1
                with engine.begin() as conn:
                    conn.execute(update(schema.notifications).where(n.id == row["id"]).values(
                        attempts=attempts, last_error=str(err), claimed_until=None,
                        next_attempt_at=now + backoff(rules.notify, attempts)))
            continue
        counts["sent"] += 1
        with engine.begin() as conn:
            conn.execute(update(schema.notifications).where(and_(n.id == row["id"])).values(
                status="sent", attempts=row["attempts"] + 1, sent_at=clock.now(), claimed_until=None,
                last_error=None))
    return counts


def list_notifications(conn: Connection, *, case_id: int | None = None, status: str | None = None,
                       limit: int = 200) -> list[dict]:
    n = schema.notifications.c
    query = select(n.id, n.case_id, n.tenant_id, n.channel, n.recipient, n.subject, n.status, n.attempts,
                   n.next_attempt_at, n.last_error, n.created_at, n.sent_at)
    if case_id is not None:
        query = query.where(n.case_id == case_id)
    if status is not None:
        query = query.where(n.status == status)
    return [dict(r) for r in conn.execute(query.order_by(n.id).limit(limit)).mappings()]

"""The enforcement ladder as data: what the controller does for each kind of
breach of the security agreement, read from a TOML rule file
(configs/enforcement.toml) whose defaults follow the agreement's clauses.
A file is validated as a whole; a bad one is refused with every problem
named, and the rules in force stay as they were (RuleBook.reload)."""

from __future__ import annotations

import threading
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.blocklists import parse_port_rule
from controller.errors import Invalid
from controller.workflow.vocabulary import KINDS


# The ladder's steps. Each is one change to the controller (a policy revision)
# or one message; controller.workflow.ladder carries them out.
ACTIONS = {
    "warn": "warn the tenant (a notification on every channel) and start the grace period, if the kind has one",
    "notify": "tell the tenant what was done (a notification on every channel)",
    "watch": "put the tenant on the watch list (agents sample its traffic)",
    "suspend": "suspend the tenant until the case is remediated",
    "suspend_temporarily": "suspend the tenant for the kind's suspension_minutes",
    "block_sources": "block the source prefixes named in the incident, for this tenant",
    "block_ports": "block the ports named in the incident and the kind's blocked_ports, for this tenant",
}
CHANNELS = ("email", "webhook")
STARTTLS = ("required", "opportunistic", "off")


@dataclass(frozen=True)
class KindRule:
    kind: str
    clause: str
    actions: tuple[str, ...]             # when a case opens (or a remediating case relapses)
    severe_actions: tuple[str, ...]      # when an incident is severe or its harm is confirmed
    grace_minutes: int | None = None     # after the warning; None: no grace period
    grace_actions: tuple[str, ...] = ()  # when the grace period ends without remediation
    blocked_ports: tuple[str, ...] = ()  # ports block_ports always adds (spam: SMTP)
    suspension_minutes: int | None = None
    lift_blocks_on_close: bool = False   # the case's blocks leave the policy when it is resolved
    tenant_must: str = ""                # what the tenant must do, in the notification


@dataclass(frozen=True)
class Strikes:
    window_days: int = 180
    limit: int = 2                       # strikes allowed in the window; a case beyond them is escalated


@dataclass(frozen=True)
class EmailChannel:
    relay: str = "127.0.0.1:25"          # HOST:PORT of the SMTP relay
    sender: str = "security@cdn.example.net"
    starttls: str = "opportunistic"      # required | opportunistic | off
    username: str | None = None
    password_file: str | None = None
    timeout_seconds: float = 30.0
    ca_file: str | None = None           # trust for the relay's certificate (default: the system's)


@dataclass(frozen=True)
class WebhookChannel:
    secret_file: str | None = None       # the HMAC-SHA256 key; without one, webhooks are sent unsigned
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Notify:
    channels: tuple[str, ...] = CHANNELS
    max_attempts: int = 6
    backoff_seconds: float = 30.0        # first retry after this, doubling each time
    backoff_max_seconds: float = 3600.0
    email: EmailChannel = EmailChannel()
    webhook: WebhookChannel = WebhookChannel()
    operator_email: str | None = None    # also told of every escalation and termination proposal


@dataclass(frozen=True)
class Rules:
    kinds: dict[str, KindRule]
    strikes: Strikes = Strikes()
    notify: Notify = Notify()
    source: str = "<defaults>"

    def kind(self, name: str) -> KindRule:
        return self.kinds[name]


DEFAULT_KINDS = {
    "illegal_content": KindRule(
        "illegal_content", KINDS["illegal_content"],
        actions=("block_sources", "block_ports", "notify"), severe_actions=("block_sources", "block_ports", "notify"),
        tenant_must="立即删除非法信息并关闭其传播途径，保全相关记录，整改完成后联系我方复核。"
                    " Remove the illegal content and close the path it spread by; keep the records; "
                    "contact us for review when done."),
    "network_attack": KindRule(
        "network_attack", KINDS["network_attack"],
        actions=("block_sources", "block_ports", "notify"), severe_actions=("block_sources", "block_ports", "notify"),
        tenant_must="立即停止攻击行为，排查被控制的主机，整改完成后联系我方复核。"
                    " Stop the attack traffic, find and clean the hijacked hosts, and contact us for review."),
    "virus": KindRule(
        "virus", KINDS["virus"],
        actions=("warn",), severe_actions=("suspend", "notify"), grace_minutes=30, grace_actions=("suspend", "notify"),
        tenant_must="立即断开受感染主机与网络的连接并清除计算机病毒，在期限前完成整改。"
                    " Disconnect the infected hosts and remove the virus before the deadline."),
    "spam": KindRule(
        "spam", KINDS["spam"],
        actions=("warn", "watch"), severe_actions=("watch", "suspend_temporarily", "block_ports", "notify"),
        blocked_ports=("tcp/25", "tcp/465", "tcp/587"), suspension_minutes=24 * 60, lift_blocks_on_close=True,
        tenant_must="立即停止发送垃圾邮件，关闭开放中继（open relay）并修补邮件服务器漏洞。"
                    " Stop the spam, close the open relay and patch the mail server."),
    "false_filing": KindRule(
        "false_filing", KINDS["false_filing"],
        actions=("suspend", "notify"), severe_actions=("suspend", "notify"),
        tenant_must="网站已关闭，请更正备案信息并提交更新，更正后恢复。"
                    " The sites are closed until the ICP filing is corrected; submit the corrected filing."),
}
DEFAULT_RULES = Rules(DEFAULT_KINDS)

KIND_KEYS = {"actions", "severe_actions", "grace_minutes", "grace_actions", "blocked_ports", "suspension_minutes",
             "lift_blocks_on_close", "tenant_must"}
TOP_KEYS = {"kinds", "strikes", "notify"}
STRIKE_KEYS = {"window_days", "limit"}
NOTIFY_KEYS = {"channels", "max_attempts", "backoff_seconds", "backoff_max_seconds", "email", "webhook",
               "operator_email"}
EMAIL_KEYS = {"relay", "sender", "starttls", "username", "password_file", "timeout_seconds", "ca_file"}
WEBHOOK_KEYS = {"secret_file", "timeout_seconds"}


class RulesError(ValueError):
    """A rule file that cannot be used; lists every problem as 'file: key: what'."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        super().__init__(f"enforcement rules {source} refused, the rules in force are unchanged:\n"
                         + "\n".join(f"  {source}: {p}" for p in problems))


class _Problems(list):
    def unknown(self, table: dict, allowed: set[str], where: str) -> None:
        for key in sorted(set(table) - allowed):
            self.append(f"{where}{key}: unknown key (expected one of: {', '.join(sorted(allowed))})")


def _int(value: Any, where: str, low: int, high: int, problems: _Problems) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append(f"{where}: {value!r} must be an integer in {low}..{high}")
        return None
    return value


def _number(value: Any, where: str, low: float, high: float, problems: _Problems) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        problems.append(f"{where}: {value!r} must be a number in {low:g}..{high:g}")
        return None
    return float(value)


def _text(value: Any, where: str, problems: _Problems, optional: bool = False) -> str | None:
    if optional and value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: {value!r} must be a non-empty string")
        return None
    return value.strip()


def _actions(value: Any, where: str, problems: _Problems) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        problems.append(f"{where}: must be a list of actions ({', '.join(ACTIONS)})")
        return ()
    for a in value:
        if a not in ACTIONS:
            problems.append(f"{where}: unknown action {a!r} (expected one of: {', '.join(ACTIONS)})")
    if len(set(value)) != len(value):
        problems.append(f"{where}: an action is listed twice")
    return tuple(value)


def _kind(name: str, table: Any, problems: _Problems) -> KindRule | None:
    where = f"kinds.{name}."
    if not isinstance(table, dict):
        problems.append(f"kinds.{name}: must be a table")
        return None
    problems.unknown(table, KIND_KEYS, where)
    base = DEFAULT_KINDS[name]
    values: dict[str, Any] = {}
    for key in ("actions", "severe_actions", "grace_actions"):
        if key in table:
            values[key] = _actions(table[key], where + key, problems)
    for key, high in (("grace_minutes", 7 * 24 * 60), ("suspension_minutes", 365 * 24 * 60)):
        if key in table:
            values[key] = _int(table[key], where + key, 1, high, problems)
    if "blocked_ports" in table:
        ports = table["blocked_ports"]
        if not isinstance(ports, list) or not all(isinstance(p, str) for p in ports):
            problems.append(f"{where}blocked_ports: must be a list of port rules like 'tcp/25'")
        else:
            for i, p in enumerate(ports):
                try:
                    parse_port_rule(p, f"{where}blocked_ports[{i}]")
                except Invalid as err:
                    problems.extend(str(x) for x in err.problems)
            values["blocked_ports"] = tuple(p.strip().lower() for p in ports)
    if "lift_blocks_on_close" in table:
        if not isinstance(table["lift_blocks_on_close"], bool):
            problems.append(f"{where}lift_blocks_on_close: must be true or false")
        else:
            values["lift_blocks_on_close"] = table["lift_blocks_on_close"]
    if "tenant_must" in table:
        values["tenant_must"] = _text(table["tenant_must"], where + "tenant_must", problems)
    rule = replace(base, **{k: v for k, v in values.items() if v is not None})
    # the rule as a whole: every action must have what it needs
    every = set(rule.actions) | set(rule.severe_actions) | set(rule.grace_actions)
    if "suspend_temporarily" in every and rule.suspension_minutes is None:
        problems.append(f"kinds.{name}: suspend_temporarily needs suspension_minutes")
    if rule.grace_actions and rule.grace_minutes is None:
        problems.append(f"kinds.{name}: grace_actions need grace_minutes")
    if rule.grace_minutes is not None and "warn" not in rule.actions:
        problems.append(f"kinds.{name}: grace_minutes counts from the warning, so actions must include 'warn'")
    if rule.grace_minutes is not None and not rule.grace_actions:
        problems.append(f"kinds.{name}: grace_minutes without grace_actions would do nothing when it ends")
    if not rule.actions:
        problems.append(f"kinds.{name}.actions: a kind must do something when a case opens")
    return rule


def _section(doc: dict, key: str, allowed: set[str], problems: _Problems) -> dict:
    table = doc.get(key, {})
    if not isinstance(table, dict):
        problems.append(f"{key}: must be a table")
        return {}
    problems.unknown(table, allowed, f"{key}.")
    return table


def parse_rules(doc: Any, source: str = "<document>") -> Rules:
    """Validate a whole rule document (parsed TOML); keys left out keep the agreement's defaults."""
    problems = _Problems()
    if not isinstance(doc, dict):
        raise RulesError(source, ["the document must be a table"])
    problems.unknown(doc, TOP_KEYS, "")
    kinds_in = _section(doc, "kinds", set(KINDS), problems)
    kinds = dict(DEFAULT_KINDS)
    for name, table in kinds_in.items():
        if name in KINDS:
            rule = _kind(name, table, problems)
            if rule is not None:
                kinds[name] = rule
    st = _section(doc, "strikes", STRIKE_KEYS, problems)
    strikes = Strikes(
        window_days=_int(st.get("window_days", Strikes.window_days), "strikes.window_days", 1, 3650, problems) or 1,
        limit=_int(st.get("limit", Strikes.limit), "strikes.limit", 0, 1000, problems) or 0)
    nt = _section(doc, "notify", NOTIFY_KEYS, problems)
    channels = nt.get("channels", list(CHANNELS))
    if not isinstance(channels, list) or not channels or any(c not in CHANNELS for c in channels):
        problems.append(f"notify.channels: {channels!r} must be a non-empty list of: {', '.join(CHANNELS)}")
        channels = list(CHANNELS)
    em = nt.get("email", {})
    wh = nt.get("webhook", {})
    if not isinstance(em, dict):
        problems.append("notify.email: must be a table")
        em = {}
    if not isinstance(wh, dict):
        problems.append("notify.webhook: must be a table")
        wh = {}
    problems.unknown(em, EMAIL_KEYS, "notify.email.")
    problems.unknown(wh, WEBHOOK_KEYS, "notify.webhook.")
    d_email, d_hook, d_notify = EmailChannel(), WebhookChannel(), Notify()
    relay = _text(em.get("relay", d_email.relay), "notify.email.relay", problems)
    if relay is not None:
        host, sep, port = relay.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            problems.append(f"notify.email.relay: {relay!r} must be HOST:PORT, e.g. smtp.example.net:587")
    starttls = em.get("starttls", d_email.starttls)
    if starttls not in STARTTLS:
        problems.append(f"notify.email.starttls: {starttls!r} must be one of: {', '.join(STARTTLS)}")
    email = EmailChannel(
        relay=relay or d_email.relay,
        sender=_text(em.get("sender", d_email.sender), "notify.email.sender", problems) or d_email.sender,
        starttls=starttls if starttls in STARTTLS else d_email.starttls,
        username=_text(em.get("username"), "notify.email.username", problems, optional=True),
        password_file=_text(em.get("password_file"), "notify.email.password_file", problems, optional=True),
        timeout_seconds=_number(em.get("timeout_seconds", d_email.timeout_seconds), "notify.email.timeout_seconds",
                                0.1, 600, problems) or d_email.timeout_seconds,
        ca_file=_text(em.get("ca_file"), "notify.email.ca_file", problems, optional=True))
    webhook = WebhookChannel(
        secret_file=_text(wh.get("secret_file"), "notify.webhook.secret_file", problems, optional=True),
        timeout_seconds=_number(wh.get("timeout_seconds", d_hook.timeout_seconds), "notify.webhook.timeout_seconds",
                                0.1, 600, problems) or d_hook.timeout_seconds)
    notify = Notify(
        channels=tuple(channels),
        max_attempts=_int(nt.get("max_attempts", d_notify.max_attempts), "notify.max_attempts", 1, 100, problems) or 1,
        backoff_seconds=_number(nt.get("backoff_seconds", d_notify.backoff_seconds), "notify.backoff_seconds",
                                0.001, 86400, problems) or 1.0,
        backoff_max_seconds=_number(nt.get("backoff_max_seconds", d_notify.backoff_max_seconds),
                                    "notify.backoff_max_seconds", 0.001, 7 * 86400, problems) or 1.0,
        email=email, webhook=webhook,
        operator_email=_text(nt.get("operator_email"), "notify.operator_email", problems, optional=True))
    if notify.backoff_max_seconds < notify.backoff_seconds:
        problems.append("notify.backoff_max_seconds: must be at least backoff_seconds")
    if problems:
        raise RulesError(source, list(problems))
    return Rules(kinds, strikes, notify, source)


def load_rules(path: str | Path) -> Rules:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise RulesError(source, [f"cannot read: {err.strerror}"]) from None
    except UnicodeDecodeError as err:
        raise RulesError(source, [f"not UTF-8: {err}"]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RulesError(source, [f"not valid TOML: {err}"]) from None
    return parse_rules(doc, source)


@dataclass
class RuleBook:
    """The rules in force. reload() swaps in a new file only if all of it is
    valid; otherwise it raises RulesError and the old rules stay."""

    rules: Rules = DEFAULT_RULES
    path: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_file(cls, path: str | Path | None) -> "RuleBook":
        if path is None:
            return cls()
        return cls(load_rules(path), str(path))

    def reload(self, path: str | Path | None = None) -> Rules:
        path = str(path or self.path or "")
        if not path:
            raise RulesError("<none>", ["no rule file to load (the built-in defaults are in force)"])
        new = load_rules(path)       # raises before anything changes
        with self._lock:
            self.rules, self.path = new, path
        return new

    @property
    def current(self) -> Rules:
        with self._lock:
            return self.rules


def describe(rules: Rules) -> dict:
    """The rules in force as a JSON-able document (API, CLI, README table)."""
    return {
        "source": rules.source,
        "kinds": {name: {"clause": r.clause, "actions": list(r.actions), "severe_actions": list(r.severe_actions),
                         "grace_minutes": r.grace_minutes, "grace_actions": list(r.grace_actions),
                         "blocked_ports": list(r.blocked_ports), "suspension_minutes": r.suspension_minutes,
                         "lift_blocks_on_close": r.lift_blocks_on_close}
                  for name, r in rules.kinds.items()},
        "strikes": {"window_days": rules.strikes.window_days, "limit": rules.strikes.limit},
        "notify": {"channels": list(rules.notify.channels), "max_attempts": rules.notify.max_attempts,
                   "backoff_seconds": rules.notify.backoff_seconds,
                   "backoff_max_seconds": rules.notify.backoff_max_seconds,
                   "email_relay": rules.notify.email.relay, "starttls": rules.notify.email.starttls},
    }

"""Every message of the agent<->controller protocol, in one place: its name
on the wire, who may send it, and its fields. A frame holds one message as
[name, {field: value}]; `decode_message` checks every field's type before
anything sees the message."""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass, field

from agent.wire.frames import MAX_FRAME_SIZE, FrameError, pack

MAX_U64 = 2**64 - 1


class Sender(enum.Flag):
    AGENT = enum.auto()
    CONTROLLER = enum.auto()
    EITHER = AGENT | CONTROLLER


class CloseReason(str, enum.Enum):
    """Why a connection ends; every Close carries one with a sentence."""

    NORMAL = "normal"                       # orderly shutdown
    UNSUPPORTED_VERSION = "unsupported_version"
    FRAME_TOO_LARGE = "frame_too_large"
    MALFORMED_FRAME = "malformed_frame"     # not msgpack, not [name, {fields}], a field of the wrong type
    UNKNOWN_MESSAGE = "unknown_message"
    UNEXPECTED_MESSAGE = "unexpected_message"   # valid message, wrong state or wrong direction
    BAD_CREDENTIALS = "bad_credentials"     # the hello does not match the client certificate, or revoked
    BAD_SNAPSHOT = "bad_snapshot"           # chunks out of order, missing, or not matching their begin
    SHUTDOWN = "shutdown"
    CONNECTION_LOST = "connection_lost"     # the stream ended without a close frame (never sent)


class RejectReason(str, enum.Enum):
    """Why an agent refuses a revision; the controller shows it and does not push that revision again."""

    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    REPLAYED = "replayed"                   # a revision already applied before, sent again
    BACKWARDS = "backwards"                 # older than the applied revision
    WRONG_BASE = "wrong_base"               # a delta from a revision other than the applied one
    DIGEST_MISMATCH = "digest_mismatch"     # the content does not match its signed digest
    INVALID_POLICY = "invalid_policy"       # the document does not validate on the agent
    APPLY_FAILED = "apply_failed"           # the datapath refused it


MESSAGES: dict[str, type] = {}
SENDERS: dict[type, Sender] = {}


def message(name: str, sender: Sender):
    def register(cls):
        cls = dataclass(frozen=True)(cls)
        cls.NAME = name
        MESSAGES[name] = cls
        SENDERS[cls] = sender
        return cls
    return register


# ---------------------------------------------------------------- session
@message("hello", Sender.AGENT)
class Hello:
    """First frame from an agent: who it is and what it enforces now."""

    protocol_version: int
    node: str
    applied_revision: int
    policy_digest: bytes          # policy_digest() of the applied revision (b"" when none)
    agent_version: str = ""
    attach_modes: dict = field(default_factory=dict)   # {ifname: "native"|"generic"|...}


@message("welcome", Sender.CONTROLLER)
class Welcome:
    """The controller's answer to a good hello; then it sends a snapshot, deltas, or nothing."""

    protocol_version: int
    controller: str
    latest_revision: int


@message("close", Sender.EITHER)
class Close:
    reason: str                   # CloseReason value
    message: str = ""


# ---------------------------------------------------------------- policy
@message("snapshot_begin", Sender.CONTROLLER)
class SnapshotBegin:
    """A whole revision follows in `chunks` SnapshotChunk frames and a SnapshotEnd.
    The signature covers (revision, digest); the digest covers the content."""

    revision: int
    digest: bytes
    key_id: str
    signature: bytes
    chunks: int
    prefixes: int                 # total prefix records, so the agent can size its work


@message("snapshot_chunk", Sender.CONTROLLER)
class SnapshotChunk:
    """One bounded piece: kind "tenants" (items: tenant documents without
    blocked_sources), "document" (items: the one top-level table, its
    tenants and lists left out) or "prefixes" (list_key, family, data:
    packed records, see prefixes.py)."""

    revision: int
    index: int
    kind: str
    list_key: str = ""
    family: int = 0
    data: bytes = b""
    items: list = field(default_factory=list)


@message("snapshot_end", Sender.CONTROLLER)
class SnapshotEnd:
    revision: int
    chunks: int


@message("delta", Sender.CONTROLLER)
class Delta:
    """The change from `from_revision` to `to_revision`; `to_digest` is the
    digest of the result. Signed over its canonical encoding (signing.py)."""

    from_revision: int
    to_revision: int
    to_digest: bytes
    key_id: str
    signature: bytes
    document: dict = field(default_factory=dict)         # top-level keys replaced (never tenants or lists)
    tenants_set: list = field(default_factory=list)      # tenant documents (no blocked_sources), by id
    tenants_removed: list = field(default_factory=list)  # tenant ids
    lists_changed: list = field(default_factory=list)    # [{"list", "add4", "add6", "remove4", "remove6"}]
    lists_removed: list = field(default_factory=list)    # list keys dropped whole


@message("ack", Sender.AGENT)
class Ack:
    """The agent APPLIED this revision to its datapath (not merely received it)."""

    revision: int
    digest: bytes


@message("reject", Sender.AGENT)
class Reject:
    """The agent refuses this revision and keeps the last good one."""

    revision: int
    reason: str                   # RejectReason value
    message: str = ""


# ---------------------------------------------------------------- drift
@message("digest_request", Sender.CONTROLLER)
class DigestRequest:
    nonce: int = 0


@message("digest_report", Sender.AGENT)
class DigestReport:
    """What the agent finds enforced now (read back from its datapath)."""

    revision: int
    digest: bytes
    nonce: int = 0


# ---------------------------------------------------------------- emergency
@message("emergency_block", Sender.CONTROLLER)
class EmergencyBlock:
    """Goes ahead of every queued frame; applied at once, outside revisions,
    until a revision carries it. Signed over its canonical encoding."""

    emergency_id: str
    prefixes: list                # CIDR strings
    reason: str
    priority: int
    key_id: str
    signature: bytes
    tenant_id: int = 0            # 0: global
    issued_at: int = 0            # unix seconds


@message("emergency_ack", Sender.AGENT)
class EmergencyAck:
    emergency_id: str


# ---------------------------------------------------------------- reports
@message("incident_report", Sender.AGENT)
class IncidentReport:
    """One spooled incident; the agent drops it from its spool only on IncidentAck."""

    incident_id: str
    incident: dict


@message("incident_ack", Sender.CONTROLLER)
class IncidentAck:
    """Stored (idempotently, by id)."""

    incident_id: str


@message("evidence_manifest", Sender.AGENT)
class EvidenceManifest:
    evidence_id: str
    manifest: dict
    incident_id: str = ""


@message("evidence_ack", Sender.CONTROLLER)
class EvidenceAck:
    evidence_id: str


@message("counter_summary", Sender.AGENT)
class CounterSummary:
    """Per-tenant counter totals over [interval_start, interval_start + seconds)."""

    interval_start: int
    seconds: int
    tenants: list                 # [{"tenant_id": int, counter name: int, ...}]


Message = typing.Union[tuple(MESSAGES.values())]


# ---------------------------------------------------------------- encoding
def message_to_wire(msg) -> list:
    if type(msg) not in SENDERS:
        raise TypeError(f"{type(msg).__name__} is not a protocol message")
    return [msg.NAME, {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}]


def fits_in_frame(msg) -> bool:
    """Whether `msg` can be sent as one frame (a Delta too large for one is sent as a snapshot instead)."""
    return len(pack(message_to_wire(msg))) <= MAX_FRAME_SIZE


_FIELD_TYPES: dict[type, dict[str, tuple[type, bool]]] = {}


def _field_types(cls) -> dict[str, tuple[type, bool]]:
    """{field: (python type, required)} from the dataclass annotations."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = {
            f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}
    return _FIELD_TYPES[cls]


def _type_ok(value, expected: type) -> bool:
    if expected is int:
        return type(value) is int and 0 <= value <= MAX_U64
    return type(value) is expected


def decode_message(value):
    """The message a frame body holds; FrameError (with a CloseReason code) if it is not one."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict)):
        raise FrameError(CloseReason.MALFORMED_FRAME.value, "a frame must hold [message name, {fields}]")
    name, fields = value
    cls = MESSAGES.get(name)
    if cls is None:
        raise FrameError(CloseReason.UNKNOWN_MESSAGE.value, f"unknown message {name[:40]!r}")
    types = _field_types(cls)
    for key in fields:
        if key not in types:
            raise FrameError(CloseReason.MALFORMED_FRAME.value, f"{name}: unknown field {str(key)[:40]!r}")
    for key, (expected, required) in types.items():
        if key not in fields:
            if required:
                raise FrameError(CloseReason.MALFORMED_FRAME.value, f"{name}: field {key!r} is missing")
            continue
        if not _type_ok(fields[key], expected):
            raise FrameError(CloseReason.MALFORMED_FRAME.value,
                             f"{name}.{key}: expected {expected.__name__}"
                             f"{' in 0..2^64-1' if expected is int else ''}, got {type(fields[key]).__name__}")
    return cls(**fields)

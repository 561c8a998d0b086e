"""The protocol state machines, one per role, owning no socket (as h11):
`receive_data(bytes)` in, `next_event()` out, `send(message)` returns the
bytes to write. Whatever arrives never raises out of them: a bad frame, an
unknown version or a message in the wrong state ends the connection with a
ConnectionClosed event and a Close frame in `data_to_send()`, and nothing
from that frame is handed on.

Events are the received messages themselves, except for what the agent
must verify first: a snapshot arrives as one SnapshotReceived (after its
last chunk and its signed digest checked out), a delta as DeltaReceived, an
emergency block as EmergencyReceived, and a revision that fails
verification as RevisionRejected (its Reject is queued in data_to_send())."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.wire.bundle import PolicyBundle
from agent.wire.frames import PROTOCOL_VERSION, FrameDecoder, FrameError, encode_frame, pack, unpack
from agent.wire.messages import (
    SENDERS, Ack, Close, CloseReason, Delta, EmergencyBlock, Hello, Reject, RejectReason, Sender, SnapshotBegin,
    SnapshotChunk, SnapshotEnd, Welcome, decode_message, message_to_wire,
)
from agent.wire.signing import BundleVerifier, RevisionRefused
from agent.wire.snapshot import EncodedRevision, SnapshotAssembler, SnapshotError


# How every EmergencyBlock frame body begins: [ "emergency_block", ...
EMERGENCY_PREFIX = pack([EmergencyBlock.NAME, {}])[:-1]


class ConnectionState(enum.Enum):
    HELLO = "hello"          # agent: hello not sent yet; controller: waiting for the hello
    WELCOME = "welcome"      # agent: waiting for the welcome; controller: welcome not sent yet
    OPEN = "open"
    CLOSED = "closed"


class LocalProtocolError(Exception):
    """This side tried to send something the protocol does not allow now (a bug in the caller)."""


@dataclass(frozen=True)
class ConnectionClosed:
    reason: str              # CloseReason value
    message: str
    by_peer: bool            # False: this side closed it (a protocol error, or send(Close))


@dataclass(frozen=True)
class SnapshotReceived:
    """A whole revision, verified: apply it, then send Ack(revision, digest) (or Reject).
    `proof` is its signed begin (for revision_file.write_revision)."""

    bundle: PolicyBundle
    proof: SnapshotBegin

    @property
    def revision(self) -> int:
        return self.bundle.revision


@dataclass(frozen=True)
class SnapshotProgress:
    """One more chunk of a snapshot checked (`received` of `chunks`); nothing to apply
    yet. An event of its own so that transports get a turn between chunks."""

    revision: int
    received: int
    chunks: int


@dataclass(frozen=True)
class DeltaReceived:
    """A verified delta from the applied revision: apply it (bundle.apply_delta
    gives the new bundle and checks the digest), then Ack or Reject."""

    delta: Delta


@dataclass(frozen=True)
class EmergencyReceived:
    """A verified emergency block: enforce it now, then send EmergencyAck."""

    block: EmergencyBlock


@dataclass(frozen=True)
class RevisionRejected:
    """A revision (or emergency block, revision 0) refused before it reached
    the caller; the Reject is already in data_to_send()."""

    revision: int
    reason: RejectReason
    message: str


class _ProtocolViolation(Exception):
    def __init__(self, reason: CloseReason, message: str):
        self.reason = reason
        super().__init__(message)


class _Connection:
    ROLE: Sender
    PEER: Sender

    def __init__(self) -> None:
        self.state = ConnectionState.HELLO
        self.close_reason: ConnectionClosed | None = None
        self._decoder = FrameDecoder()
        self._outgoing = bytearray()
        self._eof = False

    # -- bytes in
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" means the stream ended."""
        if self.state is ConnectionState.CLOSED:
            return
        if not data:
            self._eof = True
        else:
            self._decoder.feed(data)

    def next_event(self):
        """The next event, or None when more bytes are needed (or the connection is closed)."""
        if self.state is ConnectionState.CLOSED:
            return None
        try:
            while True:
                body = self._urgent_body()
                if body is None:
                    body = self._decoder.next_body()
                if body is None:
                    break
                msg = decode_message(unpack(body))
                if not SENDERS[type(msg)] & self.PEER:
                    raise _ProtocolViolation(CloseReason.UNEXPECTED_MESSAGE,
                                             f"{msg.NAME} is never sent by the {self.PEER.name.lower()}")
                if isinstance(msg, Close):
                    return self._closed(ConnectionClosed(msg.reason, msg.message, by_peer=True))
                event = self._handle(msg)
                if event is not None:
                    return event
        except FrameError as err:
            return self._fail(CloseReason(err.code), str(err))
        except _ProtocolViolation as err:
            return self._fail(err.reason, str(err))
        except Exception as err:   # a bug must cost this connection only, never the process
            return self._fail(CloseReason.MALFORMED_FRAME, f"frame could not be processed ({type(err).__name__}: {err})")
        if self._eof:
            leftover = f" inside a frame ({self._decoder.buffered} bytes buffered)" if self._decoder.buffered else ""
            return self._closed(ConnectionClosed(CloseReason.CONNECTION_LOST.value,
                                                 f"the peer's stream ended without a close frame{leftover}", True))
        return None

    def _urgent_body(self) -> bytes | None:
        return None

    def _closed(self, event: ConnectionClosed) -> ConnectionClosed:
        self.state = ConnectionState.CLOSED
        self.close_reason = event
        return event

    def _fail(self, reason: CloseReason, message: str) -> ConnectionClosed:
        self._outgoing += encode_frame(message_to_wire(Close(reason.value, message[:1000])))
        return self._closed(ConnectionClosed(reason.value, message, by_peer=False))

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet turned into events."""
        return self._decoder.buffered

    def data_to_send(self) -> bytes:
        """Bytes the machine produced by itself (a Close after a protocol error, an automatic Reject)."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def _queue(self, msg) -> None:
        self._outgoing += encode_frame(message_to_wire(msg))

    # -- bytes out
    def send(self, msg) -> bytes:
        """The frame for `msg`; LocalProtocolError if this side may not send it now."""
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError(f"cannot send {msg.NAME}: the connection is closed ({self.close_reason.message})")
        if not SENDERS.get(type(msg), Sender(0)) & self.ROLE:
            raise LocalProtocolError(f"{type(msg).__name__} is not a message the {self.ROLE.name.lower()} sends")
        if isinstance(msg, Close):
            frame = encode_frame(message_to_wire(msg))
            self._closed(ConnectionClosed(msg.reason, msg.message, by_peer=False))
            return frame
        self._on_send(msg)
        return encode_frame(message_to_wire(msg))

    def _expect_open(self, what: str) -> None:
        if self.state is not ConnectionState.OPEN:
            raise _ProtocolViolation(CloseReason.UNEXPECTED_MESSAGE,
                                     f"{what} before the hello/welcome exchange finished (state {self.state.value})")

    def _handle(self, msg):   # pragma: no cover - each role overrides
        raise NotImplementedError

    def _on_send(self, msg) -> None:   # pragma: no cover
        raise NotImplementedError


class AgentConnection(_Connection):
    """The agent's end. `verifier` holds the trusted keys and the applied
    revision and lives as long as the agent (not the connection). Apply
    and Ack (or Reject) each revision event before asking for the next
    event: a delta is checked against the revision applied at that moment."""

    ROLE, PEER = Sender.AGENT, Sender.CONTROLLER

    def __init__(self, verifier: BundleVerifier):
        super().__init__()
        self.verifier = verifier
        self.welcome: Welcome | None = None
        self._assembler: SnapshotAssembler | None = None
        self._discarding: SnapshotBegin | None = None   # a refused snapshot whose chunks still arrive
        self._offered: dict[int, bytes] = {}            # verified revisions handed on, not yet acked

    def _urgent_body(self) -> bytes | None:
        # An emergency block already received overtakes the buffered frames before
        # it (snapshot chunks not yet processed): the controller's outbox puts it
        # ahead of what it has not sent, this puts it ahead of what has arrived.
        if self.state is not ConnectionState.OPEN:
            return None
        return self._decoder.take_first(EMERGENCY_PREFIX)

    def _refuse(self, refused: RevisionRefused) -> RevisionRejected:
        self._queue(Reject(refused.revision, refused.reason.value, str(refused)[:1000]))
        return RevisionRejected(refused.revision, refused.reason, str(refused))

    def _handle(self, msg):
        if isinstance(msg, Welcome):
            if self.state is not ConnectionState.WELCOME:
                raise _ProtocolViolation(CloseReason.UNEXPECTED_MESSAGE, f"welcome in state {self.state.value}")
            if msg.protocol_version != PROTOCOL_VERSION:
                raise _ProtocolViolation(CloseReason.UNSUPPORTED_VERSION,
                                         f"controller speaks protocol version {msg.protocol_version}, "
                                         f"this agent {PROTOCOL_VERSION}")
            self.welcome = msg
            self.state = ConnectionState.OPEN
            return msg
        self._expect_open(msg.NAME)
        in_snapshot = self._assembler is not None or self._discarding is not None
        if isinstance(msg, SnapshotBegin):
            if in_snapshot:
                raise _ProtocolViolation(CloseReason.BAD_SNAPSHOT, "snapshot begins inside another snapshot")
            try:
                self.verifier.check_snapshot(msg)
            except RevisionRefused as refused:
                self._discarding = msg
                return self._refuse(refused)
            try:
                self._assembler = SnapshotAssembler(msg)
            except SnapshotError as err:
                raise _ProtocolViolation(CloseReason.BAD_SNAPSHOT, str(err)) from None
            return None
        if isinstance(msg, (SnapshotChunk, SnapshotEnd)):
            if self._discarding is not None:
                if msg.revision != self._discarding.revision:
                    raise _ProtocolViolation(CloseReason.BAD_SNAPSHOT, "chunk of another revision")
                if isinstance(msg, SnapshotEnd):
                    self._discarding = None
                return None
            if self._assembler is None:
                raise _ProtocolViolation(CloseReason.BAD_SNAPSHOT, f"{msg.NAME} outside a snapshot")
            try:
                if isinstance(msg, SnapshotChunk):
                    self._assembler.add(msg)
                    return SnapshotProgress(msg.revision, self._assembler.next_index, self._assembler.begin.chunks)
                assembler, self._assembler = self._assembler, None
                begin = assembler.begin
                bundle = assembler.finish(msg)
            except SnapshotError as err:
                raise _ProtocolViolation(CloseReason.BAD_SNAPSHOT, str(err)) from None
            if bundle.digest != begin.digest:
                return self._refuse(RevisionRefused(begin.revision, RejectReason.DIGEST_MISMATCH,
                                                    f"snapshot of revision {begin.revision}: the content does "
                                                    f"not match its signed digest"))
            self._offered[bundle.revision] = bundle.digest
            return SnapshotReceived(bundle, begin)
        if in_snapshot and isinstance(msg, Delta):
            raise _ProtocolViolation(CloseReason.UNEXPECTED_MESSAGE, "delta inside a snapshot")
        if isinstance(msg, Delta):
            try:
                self.verifier.check_delta(msg)
            except RevisionRefused as refused:
                return self._refuse(refused)
            self._offered[msg.to_revision] = msg.to_digest
            return DeltaReceived(msg)
        if isinstance(msg, EmergencyBlock):
            try:
                self.verifier.check_emergency(msg)
            except RevisionRefused as refused:
                return self._refuse(RevisionRefused(0, refused.reason,
                                                    f"emergency block {msg.emergency_id!r}: {refused}"))
            return EmergencyReceived(msg)
        return msg

    def _on_send(self, msg) -> None:
        if isinstance(msg, Hello):
            if self.state is not ConnectionState.HELLO:
                raise LocalProtocolError("the hello is sent once, first")
            self.state = ConnectionState.WELCOME
            return
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"cannot send {msg.NAME} before the welcome (state {self.state.value})")
        if isinstance(msg, Ack):
            digest = self._offered.get(msg.revision)
            if digest is None and (msg.revision, msg.digest) != (self.verifier.applied_revision,
                                                                 self.verifier.applied_digest):
                raise LocalProtocolError(f"ack of revision {msg.revision}, which this connection did not deliver")
            if digest is not None and digest != msg.digest:
                raise LocalProtocolError(f"ack of revision {msg.revision} with a digest other than its signed one")
            self._offered.pop(msg.revision, None)
            self.verifier.record_applied(msg.revision, msg.digest)
        elif isinstance(msg, Reject):
            self._offered.pop(msg.revision, None)


class ControllerConnection(_Connection):
    """The controller's end of one agent's connection. `expected_node` is the
    node name its client certificate proves (the hello must match it)."""

    ROLE, PEER = Sender.CONTROLLER, Sender.AGENT

    def __init__(self, controller: str, expected_node: str | None = None):
        super().__init__()
        self.controller = controller
        self.expected_node = expected_node
        self.hello: Hello | None = None
        self.acked_revision: int | None = None
        self.rejected: dict[int, tuple[str, str]] = {}   # revision -> (reason, message); never pushed again

    @property
    def node(self) -> str | None:
        return self.hello.node if self.hello else None

    def _handle(self, msg):
        if isinstance(msg, Hello):
            if self.state is not ConnectionState.HELLO:
                raise _ProtocolViolation(CloseReason.UNEXPECTED_MESSAGE, "a second hello")
            if msg.protocol_version != PROTOCOL_VERSION:
                raise _ProtocolViolation(CloseReason.UNSUPPORTED_VERSION,
                                         f"agent {msg.node[:64]!r} speaks protocol version {msg.protocol_version}, "
                                         f"this controller {PROTOCOL_VERSION}; upgrade the agent or the controller")
            if self.expected_node is not None and msg.node != self.expected_node:
                raise _ProtocolViolation(CloseReason.BAD_CREDENTIALS,
                                         f"hello names node {msg.node[:64]!r}, its certificate is for "
                                         f"{self.expected_node!r}")
            self.hello = msg
            self.state = ConnectionState.WELCOME
            return msg
        self._expect_open(msg.NAME)
        if isinstance(msg, Ack):
            self.acked_revision = msg.revision
        elif isinstance(msg, Reject):
            self.rejected[msg.revision] = (msg.reason, msg.message)
        return msg

    def _on_send(self, msg) -> None:
        if isinstance(msg, Welcome):
            if self.state is not ConnectionState.WELCOME:
                raise LocalProtocolError(f"welcome is sent once, after the hello (state {self.state.value})")
            self.state = ConnectionState.OPEN
            return
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"cannot send {msg.NAME} before the welcome (state {self.state.value})")
        if isinstance(msg, (SnapshotBegin, SnapshotChunk, SnapshotEnd)):
            raise LocalProtocolError("snapshots are sent with snapshot_frames(EncodedRevision), not piece by piece")
        if isinstance(msg, Delta) and msg.to_revision in self.rejected:
            raise LocalProtocolError(f"revision {msg.to_revision} was rejected by {self.node}: "
                                     f"{self.rejected[msg.to_revision][1]}")

    def snapshot_frames(self, encoded: EncodedRevision) -> tuple[bytes, ...]:
        """The frames of a snapshot: the shared bytes objects of `encoded`, not copies."""
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"cannot send a snapshot in state {self.state.value}")
        if encoded.revision in self.rejected:
            raise LocalProtocolError(f"revision {encoded.revision} was rejected by {self.node}: "
                                     f"{self.rejected[encoded.revision][1]}")
        return encoded.frames

"""The agent<->controller wire protocol, sans-I/O (as h11): frames, messages,
signed revisions, snapshots encoded once per revision, and the two
connection state machines. Pure Python with msgpack and cryptography; the
asyncio transports (asyncio_client, asyncio_server) and TLS (tls) are
imported from their own modules."""

from agent.wire.bundle import (
    POLICY_LIST, DeltaError, PolicyBundle, apply_delta, document_digest, list_key, make_changes, policy_digest,
)
from agent.wire.connection import (
    AgentConnection, ConnectionClosed, ConnectionState, ControllerConnection, DeltaReceived, EmergencyReceived,
    LocalProtocolError, RevisionRejected, SnapshotProgress, SnapshotReceived,
)
from agent.wire.frames import MAX_FRAME_SIZE, PROTOCOL_VERSION, FrameDecoder, FrameError, encode_frame
from agent.wire.messages import (
    MESSAGES, Ack, Close, CloseReason, CounterSummary, Delta, DigestReport, DigestRequest, EmergencyAck,
    EmergencyBlock, EvidenceAck, EvidenceManifest, Hello, IncidentAck, IncidentReport, Reject, RejectReason,
    SnapshotBegin, SnapshotChunk, SnapshotEnd, Welcome, fits_in_frame,
)
from agent.wire.outbox import Outbox
from agent.wire.prefixes import PrefixList, PrefixListError
from agent.wire.signing import (
    BundleSigner, BundleVerifier, KeyFileError, RevisionRefused, key_id, keygen, load_private_key, load_public_key,
    public_key_text,
)
from agent.wire.revision_file import RevisionFileError, read_revision, write_revision
from agent.wire.snapshot import EncodedRevision, SnapshotAssembler, SnapshotCache, SnapshotError

__all__ = [name for name in dir() if not name.startswith("_") and name[0].isupper() or name in (
    "apply_delta", "document_digest", "fits_in_frame", "list_key", "make_changes", "policy_digest", "encode_frame", "key_id",
    "keygen", "read_revision", "write_revision", "load_private_key", "load_public_key", "public_key_text")]

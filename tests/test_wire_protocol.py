"""The sans-I/O protocol with no network: frames fed all at once and byte by
byte, every message round trip, protocol errors (oversized, malformed,
unknown version or message, wrong state or direction) ending the connection
with a reason, and hypothesis feeding the decoder arbitrary bytes."""

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.wire import (
    MAX_FRAME_SIZE, MESSAGES, PROTOCOL_VERSION, Ack, AgentConnection, BundleVerifier, Close, CloseReason,
    ConnectionClosed, ConnectionState, ControllerConnection, CounterSummary, Delta, DigestReport, DigestRequest,
    EmergencyAck, EmergencyBlock, EvidenceAck, EvidenceManifest, FrameDecoder, FrameError, Hello, IncidentAck,
    IncidentReport, LocalProtocolError, Reject, SnapshotBegin, SnapshotChunk, SnapshotEnd, Welcome, encode_frame,
)
from agent.wire.frames import pack, unpack
from agent.wire.messages import SENDERS, Sender, decode_message, message_to_wire
from wire_peers import events, feed, hello, new_key, open_pair

SAMPLES = [
    Hello(PROTOCOL_VERSION, "edge-1", 12, b"\x01" * 32, "0.1.0", {"eth0": "native"}),
    Welcome(PROTOCOL_VERSION, "controller-1", 14),
    Close("shutdown", "controller restarting"),
    SnapshotBegin(14, b"\x02" * 32, "00aa", b"\x03" * 64, 3, 1000),
    SnapshotChunk(14, 2, "prefixes", "global/reputation", 4, b"\xc0\x00\x02\x00\x18"),
    SnapshotChunk(14, 1, "tenants", items=[{"id": 1, "name": "shop"}]),
    SnapshotEnd(14, 3),
    Delta(14, 15, b"\x04" * 32, "00aa", b"\x05" * 64, {"global": {}}, [{"id": 3, "name": "new"}], [2],
          [{"list": "global/policy", "add4": b"\xc0\x00\x02\x00\x18", "add6": b"", "remove4": b"", "remove6": b""}],
          ["tenant-2/policy"]),
    Ack(15, b"\x04" * 32),
    Reject(15, "invalid_policy", "tenants[0]: name must be a non-empty string"),
    DigestRequest(9),
    DigestReport(15, b"\x04" * 32, 9),
    EmergencyBlock("em-1", ["198.51.100.7/32"], "botnet C2", 5, "00aa", b"\x06" * 64, 0, 1764600000),
    EmergencyAck("em-1"),
    IncidentReport("inc-0001", {"tenant": 1, "kind": "syn_flood", "pps": 120000}),
    IncidentAck("inc-0001"),
    EvidenceManifest("ev-1", {"files": [{"name": "a.pcap", "sha256": "ab" * 32}]}, "inc-0001"),
    EvidenceAck("ev-1"),
    CounterSummary(1764600000, 5, [{"tenant_id": 1, "packets": 10, "drop_blocked_source": 3}]),
]


def test_every_message_type_has_a_sample():
    assert {type(m) for m in SAMPLES} == set(MESSAGES.values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.NAME)
def test_message_round_trip(msg):
    frame = encode_frame(message_to_wire(msg))
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert decode_message(unpack(frame[4:])) == msg


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_frames_all_at_once_and_byte_by_byte(byte_by_byte):
    stream = b"".join(encode_frame(message_to_wire(m)) for m in SAMPLES)
    decoder = FrameDecoder()
    bodies = []
    chunks = [stream[i:i + 1] for i in range(len(stream))] if byte_by_byte else [stream]
    for chunk in chunks:
        decoder.feed(chunk)
        while (body := decoder.next_body()) is not None:
            bodies.append(body)
    assert [decode_message(unpack(b)) for b in bodies] == SAMPLES
    assert decoder.buffered == 0


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_controller_receives_agent_messages_both_ways(byte_by_byte):
    verifier = BundleVerifier([new_key().public_key()])
    agent, controller = open_pair(verifier)
    sent = [m for m in SAMPLES if SENDERS[type(m)] == Sender.AGENT and not isinstance(m, (Hello, Ack))]
    stream = b"".join(agent.send(m) for m in sent)
    assert feed(controller, stream, byte_by_byte) == sent


def test_agent_receives_controller_reports_both_ways():
    verifier = BundleVerifier([new_key().public_key()])
    for byte_by_byte in (False, True):
        agent, controller = open_pair(verifier)
        sent = [DigestRequest(3), IncidentAck("inc-1"), EvidenceAck("ev-1")]
        assert feed(agent, b"".join(controller.send(m) for m in sent), byte_by_byte) == sent


def closed_with(conn, data: bytes, reason: CloseReason) -> ConnectionClosed:
    got = feed(conn, data)
    assert len(got) == 1 and isinstance(got[0], ConnectionClosed), got
    assert got[0].reason == reason.value and not got[0].by_peer and got[0].message
    assert conn.state is ConnectionState.CLOSED
    # the peer is told why, in a Close frame
    close = decode_message(unpack(conn.data_to_send()[4:]))
    assert isinstance(close, Close) and close.reason == reason.value and close.message
    assert conn.next_event() is None
    return got[0]


def test_oversized_frame_closes_before_its_body_arrives():
    controller = ControllerConnection("c")
    event = closed_with(controller, struct.pack(">I", MAX_FRAME_SIZE + 1), CloseReason.FRAME_TOO_LARGE)
    assert str(MAX_FRAME_SIZE) in event.message
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(message_to_wire(IncidentReport("x", {"blob": b"\0" * MAX_FRAME_SIZE})))


@pytest.mark.parametrize("body, reason", [
    (b"\xc1", CloseReason.MALFORMED_FRAME),                         # never-used msgpack byte
    (b"\x92\xa5hello", CloseReason.MALFORMED_FRAME),                # truncated array
    (pack(["hello", {}]) + b"\x00", CloseReason.MALFORMED_FRAME),   # trailing bytes
    (pack({"hello": 1}), CloseReason.MALFORMED_FRAME),              # not [name, fields]
    (pack(["hello", {"protocol_version": 1}]), CloseReason.MALFORMED_FRAME),   # fields missing
    (pack(["hello", {"protocol_version": "1", "node": "n", "applied_revision": 0, "policy_digest": b""}]),
     CloseReason.MALFORMED_FRAME),                                  # wrong type
    (pack(["hello", {"protocol_version": 1, "node": "n", "applied_revision": -1, "policy_digest": b""}]),
     CloseReason.MALFORMED_FRAME),                                  # negative revision
    (pack(["hello", {"protocol_version": 1, "node": "n", "applied_revision": 0, "policy_digest": b"",
                     "extra": 1}]), CloseReason.MALFORMED_FRAME),   # unknown field
    (msgpack.packb(["hello", {"node": msgpack.ExtType(1, b"x")}]), CloseReason.MALFORMED_FRAME),
    (b"\xa2\xff\xfe", CloseReason.MALFORMED_FRAME),                 # str that is not UTF-8
    (b"\x91" * 5000, CloseReason.MALFORMED_FRAME),                  # nesting deeper than msgpack allows
    (pack(["make_coffee", {}]), CloseReason.UNKNOWN_MESSAGE),
    (pack(["welcome", {"protocol_version": 1, "controller": "c", "latest_revision": 0}]),
     CloseReason.UNEXPECTED_MESSAGE),                               # a controller message sent to a controller
    (pack(["ack", {"revision": 1, "digest": b""}]), CloseReason.UNEXPECTED_MESSAGE),   # before the hello
], ids=range(14))
def test_malformed_frames_close_with_a_reason(body, reason):
    closed_with(ControllerConnection("c"), struct.pack(">I", len(body)) + body, reason)


def test_zero_length_frame_is_malformed():
    closed_with(ControllerConnection("c"), b"\0\0\0\0", CloseReason.MALFORMED_FRAME)


def test_unknown_version_closes_on_both_sides():
    controller = ControllerConnection("c")
    event = closed_with(controller, encode_frame(message_to_wire(hello(version=99))), CloseReason.UNSUPPORTED_VERSION)
    assert "99" in event.message and controller.hello is None
    agent = AgentConnection(BundleVerifier([new_key().public_key()]))
    agent.send(hello())
    closed_with(agent, encode_frame(message_to_wire(Welcome(2, "c", 0))), CloseReason.UNSUPPORTED_VERSION)


def test_hello_must_name_the_certificate_node():
    controller = ControllerConnection("c", expected_node="edge-1")
    event = closed_with(controller, encode_frame(message_to_wire(hello("edge-2"))), CloseReason.BAD_CREDENTIALS)
    assert "edge-2" in event.message and "edge-1" in event.message


def test_wrong_state_messages_close():
    verifier = BundleVerifier([new_key().public_key()])
    agent, controller = open_pair(verifier)
    closed_with(controller, encode_frame(message_to_wire(hello())), CloseReason.UNEXPECTED_MESSAGE)  # a second hello
    agent, controller = open_pair(verifier)
    closed_with(agent, encode_frame(message_to_wire(SnapshotChunk(1, 0, "tenants"))), CloseReason.BAD_SNAPSHOT)
    agent, controller = open_pair(verifier)
    closed_with(agent, encode_frame(message_to_wire(Welcome(1, "c", 0))), CloseReason.UNEXPECTED_MESSAGE)


def test_events_before_a_bad_frame_are_delivered_and_nothing_after():
    verifier = BundleVerifier([new_key().public_key()])
    agent, controller = open_pair(verifier)
    good = agent.send(IncidentReport("inc-1", {"k": 1}))
    later = agent.send(IncidentReport("inc-2", {"k": 2}))
    got = feed(controller, good + b"\0\0\0\x01\xc1" + later)
    assert got[0] == IncidentReport("inc-1", {"k": 1})
    assert isinstance(got[1], ConnectionClosed) and len(got) == 2


def test_peer_close_and_lost_stream():
    verifier = BundleVerifier([new_key().public_key()])
    agent, controller = open_pair(verifier)
    got = feed(agent, controller.send(Close("shutdown", "bye")))
    assert got == [ConnectionClosed("shutdown", "bye", by_peer=True)]
    assert agent.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        agent.send(IncidentReport("x", {}))
    agent, controller = open_pair(verifier)
    controller.receive_data(agent.send(IncidentReport("x", {}))[:7])
    controller.receive_data(b"")
    (event,) = events(controller)
    assert event.reason == "connection_lost" and "inside a frame" in event.message


def test_local_misuse_raises():
    verifier = BundleVerifier([new_key().public_key()])
    agent = AgentConnection(verifier)
    with pytest.raises(LocalProtocolError):
        agent.send(IncidentReport("x", {}))                # before the hello
    with pytest.raises(LocalProtocolError):
        agent.send(Welcome(1, "c", 0))                     # not an agent message
    agent, controller = open_pair(verifier)
    with pytest.raises(LocalProtocolError, match="did not deliver"):
        agent.send(Ack(99, b"x"))
    with pytest.raises(LocalProtocolError, match="snapshot_frames"):
        controller.send(SnapshotEnd(1, 0))


def _check_fuzzed(conn, data: bytes, chunk: int) -> None:
    for i in range(0, len(data), chunk):
        conn.receive_data(data[i:i + chunk])
        for event in iter(conn.next_event, None):
            if isinstance(event, ConnectionClosed):
                assert event.reason in {r.value for r in CloseReason} and event.message
                sent = conn.data_to_send()
                assert decode_message(unpack(sent[4:])).reason == event.reason
                assert conn.next_event() is None
                return


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_fuzz_controller_decoder_arbitrary_bytes(data, chunk):
    controller = ControllerConnection("c")
    _check_fuzzed(controller, data, chunk)


_VERIFIER = BundleVerifier([new_key().public_key()])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_fuzz_open_agent_arbitrary_bytes_after_valid_frames(data, chunk):
    agent, _ = open_pair(_VERIFIER)
    _check_fuzzed(agent, data, chunk)


_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
                       | st.binary(max_size=8), lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(sorted(MESSAGES)), st.dictionaries(st.text(max_size=16), _values, max_size=8))
def test_fuzz_well_framed_msgpack_with_arbitrary_fields(name, fields):
    """Valid frames of valid msgpack naming real messages with arbitrary fields:
    each is either a message or a close with a reason, never an exception."""
    agent, controller = open_pair(_VERIFIER)
    frame = encode_frame([name, fields])
    for conn in (agent, controller):
        conn.receive_data(frame)
        event = conn.next_event()
        if isinstance(event, ConnectionClosed):
            assert event.reason in {r.value for r in CloseReason}


def test_frame_error_has_a_close_reason():
    with pytest.raises(FrameError) as err:
        unpack(b"\xc1")
    assert CloseReason(err.value.code) is CloseReason.MALFORMED_FRAME


def test_importable_without_compiled_modules_or_the_datapath():
    """The controller imports the wire on hosts with no BPF: nothing compiled, no datapath, no policy model."""
    import subprocess
    import sys
    script = """
import importlib.abc, sys
BLOCKED = ("agent._libbpf", "agent._prefixes", "agent._counters", "agent.datapath", "agent.policy")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith(BLOCKED):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import agent.wire, agent.wire.asyncio_client, agent.wire.asyncio_server, agent.wire.tls, agent.wire.transport
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
w = agent.wire
key = Ed25519PrivateKey.generate()
b = w.PolicyBundle.from_document({"revision": 1, "global": {"blocked_sources": ["192.0.2.0/24"]}, "tenants": []})
enc = w.SnapshotCache(w.BundleSigner(key)).get(b)
a, c = w.AgentConnection(w.BundleVerifier([key.public_key()])), w.ControllerConnection("c")
c.receive_data(a.send(w.Hello(w.PROTOCOL_VERSION, "n", 0, b"")))
c.next_event()
a.receive_data(c.send(w.Welcome(w.PROTOCOL_VERSION, "c", 1)))
a.next_event()
a.receive_data(b"".join(c.snapshot_frames(enc)))
event = a.next_event()
while isinstance(event, w.SnapshotProgress):
    event = a.next_event()
assert event.bundle.digest == b.digest, event
print("ok", sorted(m for m in sys.modules if m.startswith("agent.") and not m.startswith("agent.wire")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"


def test_outbox_priorities_and_order_within_one():
    from agent.wire.outbox import PRIORITY_EMERGENCY, PRIORITY_POLICY, PRIORITY_REPORT, Outbox
    from agent.wire.transport import frame_priority
    box = Outbox()
    box.put([b"chunk-0", b"chunk-1", b"chunk-2"], PRIORITY_POLICY)
    box.put(b"ack", PRIORITY_REPORT)
    box.put(b"emergency-low", PRIORITY_EMERGENCY + 1)
    box.put(b"emergency-high", PRIORITY_EMERGENCY + 9)
    box.put(b"delta", PRIORITY_POLICY)
    assert box.queued_bytes == sum(map(len, (b"chunk-0", b"chunk-1", b"chunk-2", b"ack", b"emergency-low",
                                             b"emergency-high", b"delta")))
    assert [box.pop() for _ in range(len(box))] == [b"emergency-high", b"emergency-low", b"ack", b"chunk-0",
                                                    b"chunk-1", b"chunk-2", b"delta"]
    assert box.pop() is None and box.queued_bytes == 0
    welcome, block = SAMPLES[1], SAMPLES[12]
    assert frame_priority(welcome) > frame_priority(block) > frame_priority(SAMPLES[8]) > frame_priority(SAMPLES[7])

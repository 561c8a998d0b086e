"""The asyncio transports over real mutual TLS on 127.0.0.1: certificates
from the fleet CA, two agents at once where one sends garbage and is
closed with a reason while the other completes snapshot, delta and acks;
a hello that does not match its certificate and a revoked node refused."""

import asyncio
import ssl

import pytest

from agent.wire import (
    PROTOCOL_VERSION, Ack, BundleSigner, BundleVerifier, Close, ConnectionClosed, DeltaReceived, EmergencyAck,
    EmergencyBlock, EmergencyReceived, FrameDecoder, SnapshotCache, SnapshotProgress, SnapshotReceived, Welcome, apply_delta,
    encode_frame,
)
from agent.wire.asyncio_client import ControllerRefused, connect
from agent.wire.asyncio_server import serve
from agent.wire.frames import unpack
from agent.wire.messages import decode_message, message_to_wire
from agent.wire.tls import CertificateError, NodeAuthority, client_context, server_context
from wire_peers import bundle, hello, new_key, random_prefixes, signed_delta, union


@pytest.fixture
def fleet(tmp_path):
    ca = NodeAuthority.create(tmp_path / "ca")
    server = ca.issue_controller("controller-1", ["127.0.0.1", "localhost"])
    nodes = {name: ca.issue_node(name) for name in ("edge-good", "edge-bad", "edge-liar", "edge-revoked")}
    return ca, server, nodes


def _client_ctx(ca, nodes, name) -> ssl.SSLContext:
    return client_context(nodes[name].cert_path, nodes[name].key_path, ca.cert_path)


def test_ca_refuses_bad_names_and_overwrites(fleet, tmp_path):
    ca, _, _ = fleet
    with pytest.raises(CertificateError, match="node name"):
        ca.issue_node("Edge 1")
    with pytest.raises(CertificateError, match="never overwritten"):
        NodeAuthority.create(tmp_path / "ca")
    with pytest.raises(CertificateError, match="no usable CA"):
        NodeAuthority(tmp_path / "nowhere")


def test_two_agents_over_tls_one_sends_garbage(fleet):
    ca, server_cert, nodes = fleet
    signer = BundleSigner(new_key())
    cache = SnapshotCache(signer)
    r1 = bundle(1, {"global/reputation": random_prefixes(120_000, v6_share=0.05)})
    r2 = bundle(2, {"global/reputation": union(r1.lists["global/reputation"], random_prefixes(100, seed=4))})
    delta = signed_delta(signer, r1, r2)
    emergency = signer.sign_emergency(EmergencyBlock("em-1", ["203.0.113.66/32"], "C2", 5, "", b""))
    seen: dict[str, list] = {}

    async def handler(link):
        log = seen.setdefault(link.node, [])
        link.send(Welcome(PROTOCOL_VERSION, "controller-1", 2))
        link.send_snapshot(cache.get(r1))
        link.send(emergency)          # overtakes the queued snapshot chunks
        while True:
            event = await link.next_event()
            log.append(event)
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, Ack) and event.revision == 1:
                link.send(delta)
            if isinstance(event, Ack) and event.revision == 2:
                await link.close()
                return

    async def good_agent():
        verifier = BundleVerifier([signer.private_key.public_key()])
        link = await connect("127.0.0.1", port, ssl_context=_client_ctx(ca, nodes, "edge-good"),
                             hello=hello("edge-good"), verifier=verifier)
        assert link.welcome.latest_revision == 2
        got, applied = [], None
        while True:
            event = await link.next_event()
            if isinstance(event, SnapshotProgress):
                continue
            got.append(event)
            if isinstance(event, EmergencyReceived):
                await link.send(EmergencyAck(event.block.emergency_id))
            elif isinstance(event, SnapshotReceived):
                applied = event.bundle
                await link.send(Ack(applied.revision, applied.digest))
            elif isinstance(event, DeltaReceived):
                applied = apply_delta(applied, event.delta)
                await link.send(Ack(applied.revision, applied.digest))
            elif isinstance(event, ConnectionClosed):
                return got, applied, verifier

    async def garbage_agent():
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx(ca, nodes, "edge-bad"),
                                                       server_hostname="127.0.0.1")
        writer.write(encode_frame(message_to_wire(hello("edge-bad"))))
        writer.write(b"\x00\x00\x00\x08not msgpack at all")
        await writer.drain()
        decoder, frames = FrameDecoder(), []
        while data := await reader.read(65536):
            decoder.feed(data)
            while (body := decoder.next_body()) is not None:
                frames.append(decode_message(unpack(body)))
        writer.close()
        return frames

    async def main():
        nonlocal port
        server = await serve(handler, "127.0.0.1", 0, controller="controller-1",
                             ssl_context=server_context(server_cert.cert_path, server_cert.key_path, ca.cert_path))
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await asyncio.wait_for(asyncio.gather(good_agent(), garbage_agent()), 60)

    port = 0
    (got, applied, verifier), garbage_frames = asyncio.run(main())

    # the garbage sender: closed with a reason, told so in a Close frame
    assert isinstance(garbage_frames[-1], Close) and garbage_frames[-1].reason == "malformed_frame"
    bad_log = seen["edge-bad"]
    assert isinstance(bad_log[-1], ConnectionClosed) and bad_log[-1].reason == "malformed_frame"
    assert not bad_log[-1].by_peer and not any(isinstance(e, Ack) for e in bad_log)
    # the other agent: the emergency block first, the snapshot, the delta, each acknowledged
    kinds = [type(e) for e in got]
    assert kinds == [EmergencyReceived, SnapshotReceived, DeltaReceived, ConnectionClosed]
    assert got[1].bundle.digest == r1.digest and applied.digest == r2.digest and verifier.applied_revision == 2
    assert got[-1].reason == "normal" and got[-1].by_peer
    good_log = seen["edge-good"]
    assert [e for e in good_log if isinstance(e, (Ack, EmergencyAck))] == [
        EmergencyAck("em-1"), Ack(1, r1.digest), Ack(2, r2.digest)]
    assert cache.encodings == 1


def test_hello_for_another_node_and_revoked_node_are_refused(fleet):
    ca, server_cert, nodes = fleet
    verifier = BundleVerifier([new_key().public_key()])
    names = []

    async def handler(link):
        names.append(link.node)
        link.send(Welcome(PROTOCOL_VERSION, "controller-1", 0))
        await link.next_event()

    async def main():
        server = await serve(handler, "127.0.0.1", 0, controller="controller-1",
                             ssl_context=server_context(server_cert.cert_path, server_cert.key_path, ca.cert_path),
                             authorize=lambda node: "revoked by admin" if node == "edge-revoked" else None)
        port = server.sockets[0].getsockname()[1]
        results = []
        async with server:
            for cert_name, hello_name in (("edge-liar", "edge-good"), ("edge-revoked", "edge-revoked")):
                with pytest.raises(ControllerRefused) as err:
                    await connect("127.0.0.1", port, ssl_context=_client_ctx(ca, nodes, cert_name),
                                  hello=hello(hello_name), verifier=verifier)
                results.append(err.value)
            # without a client certificate the TLS handshake itself fails
            bare = ssl.create_default_context(cafile=str(ca.cert_path))
            with pytest.raises((ssl.SSLError, ConnectionError)):
                link = await connect("127.0.0.1", port, ssl_context=bare, hello=hello("edge-good"),
                                     verifier=verifier)
                await link.next_event()
        return results

    liar, revoked = asyncio.run(asyncio.wait_for(main(), 30))
    assert liar.reason == "bad_credentials" and "edge-liar" in str(liar)
    assert revoked.reason == "bad_credentials" and "revoked by admin" in str(revoked)
    assert names == []


def test_reconnect_delays_double_with_jitter_up_to_the_cap():
    from agent.wire.asyncio_client import reconnect_delays
    lows = [d for d, _ in zip(reconnect_delays(0.5, 30, rand=lambda: 0.0), range(12))]
    highs = [d for d, _ in zip(reconnect_delays(0.5, 30, rand=lambda: 1.0), range(12))]
    assert lows[:4] == [0.25, 0.5, 1.0, 2.0] and highs[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(highs) == 30 and lows[-1] == 15
    spread = {round(d, 6) for d, _ in zip(reconnect_delays(1, 1), range(50))}
    assert len(spread) > 40 and all(0.5 <= d <= 1 for d in spread)

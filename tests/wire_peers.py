"""Shared by the wire tests: signing keys, sample bundles and a way to
drive an agent and a controller connection against each other in memory."""

from __future__ import annotations

import ipaddress
import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire import (
    PROTOCOL_VERSION, AgentConnection, BundleSigner, BundleVerifier, ControllerConnection, Delta, Hello,
    PolicyBundle, PrefixList, SnapshotProgress, Welcome, make_changes,
)

DOCUMENT = {
    "revision": 7,
    "global": {"blocked_sources": ["192.0.2.0/26", "2001:db8:3::/64", "10.0.0.0/8"]},
    "tenants": [
        {"id": 1, "name": "shop", "state": "active",
         "vips": ["203.0.113.10", {"address": "203.0.113.20", "protocol": "tcp", "port": 443}],
         "blocked_ports": ["tcp/25", "udp/6000-6010"], "blocked_sources": ["198.51.100.64/26"]},
        {"id": 2, "name": "video", "state": "suspended", "vips": ["2001:db8::5"],
         "blocked_ports": [], "blocked_sources": []},
    ],
}


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def random_prefixes(count: int, seed: int = 1, v6_share: float = 0.0) -> PrefixList:
    """`count` distinct prefixes (mostly /32 and /24, as reputation lists are), IPv6 for `v6_share` of them."""
    rng = random.Random(seed)
    v4, v6 = set(), set()
    while len(v4) + len(v6) < count:
        if rng.random() < v6_share:
            length = rng.choice((48, 64, 128))
            address = (0x20010db8 << 96) | rng.getrandbits(96)
            v6.add(((address >> (128 - length)) << (128 - length)).to_bytes(16, "big") + bytes([length]))
        else:
            length = rng.choice((32, 32, 32, 24, 16))
            address = rng.getrandbits(32)
            v4.add(((address >> (32 - length)) << (32 - length)).to_bytes(4, "big") + bytes([length]))
    return PrefixList(b"".join(sorted(v4)), b"".join(sorted(v6)))


def bundle(revision: int = 7, lists: dict | None = None, document: dict = DOCUMENT) -> PolicyBundle:
    return PolicyBundle.from_document({**document, "revision": revision}, lists)


def signed_delta(signer: BundleSigner, old: PolicyBundle, new: PolicyBundle, **override) -> Delta:
    """signer.make_delta, with fields replaced before signing (for deltas a controller must not make)."""
    if not override:
        return signer.make_delta(old, new)
    fields = dict(from_revision=old.revision, to_revision=new.revision, to_digest=new.digest, key_id="",
                  signature=b"", **make_changes(old, new))
    fields.update(override)
    return signer.sign_delta(Delta(**fields))


def hello(node: str = "edge-1", revision: int = 0, digest: bytes = b"", version: int = PROTOCOL_VERSION) -> Hello:
    return Hello(version, node, revision, digest, "test")


def open_pair(verifier: BundleVerifier, node: str = "edge-1") -> tuple[AgentConnection, ControllerConnection]:
    """An agent and a controller connection past hello and welcome."""
    agent, controller = AgentConnection(verifier), ControllerConnection("controller-1", expected_node=node)
    controller.receive_data(agent.send(hello(node, verifier.applied_revision, verifier.applied_digest)))
    assert isinstance(controller.next_event(), Hello)
    agent.receive_data(controller.send(Welcome(PROTOCOL_VERSION, "controller-1", 0)))
    assert isinstance(agent.next_event(), Welcome)
    return agent, controller


def events(conn, progress: bool = False) -> list:
    """Every event available now (SnapshotProgress left out unless asked for)."""
    out = []
    while (event := conn.next_event()) is not None:
        if progress or not isinstance(event, SnapshotProgress):
            out.append(event)
    return out


def feed(conn, data: bytes, byte_by_byte: bool = False, progress: bool = False) -> list:
    """Feed bytes (all at once, or one at a time asking for events after each) and collect the events."""
    if not byte_by_byte:
        conn.receive_data(data)
        return events(conn, progress)
    out = []
    for i in range(len(data)):
        conn.receive_data(data[i:i + 1])
        out.extend(events(conn, progress))
    return out


def network(text: str):
    return ipaddress.ip_network(text)


def union(a: PrefixList, b: PrefixList) -> PrefixList:
    return PrefixList(*(b"".join(sorted(set(a.records(f)) | set(b.records(f)))) for f in (4, 6)))

"""Revisions on the wire: packed prefix lists against a plain set, the
policy digest, deltas made and applied, chunked snapshots reassembled
exactly and encoded once for every connection, and the signature and
ordering checks (wrong key, rotated keys, tampered content, replayed,
backwards, wrong base) refusing with a reason and applying nothing."""

import dataclasses
import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.wire import (
    MAX_FRAME_SIZE, Ack, AgentConnection, BundleSigner, Close, IncidentAck, SnapshotProgress, BundleVerifier, ConnectionClosed, DeltaError, DeltaReceived, EmergencyBlock,
    EmergencyReceived, EncodedRevision, KeyFileError, LocalProtocolError, PolicyBundle, PrefixList, PrefixListError, Reject,
    RejectReason, RevisionRejected, SnapshotBegin, SnapshotCache, SnapshotReceived, apply_delta, keygen,
    RevisionFileError, fits_in_frame, load_private_key, load_public_key, public_key_text, read_revision,
    write_revision,
)
from agent.wire.frames import encode_frame, unpack
from agent.wire.messages import decode_message, message_to_wire
from agent.wire.snapshot import CHUNK_RECORD_BYTES
from wire_peers import DOCUMENT, bundle, events, feed, hello, new_key, open_pair, random_prefixes, signed_delta

# ---------------------------------------------------------------- prefix lists
_v4 = st.builds(lambda a, n: ipaddress.ip_network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32))
_v6 = st.builds(lambda a, n: ipaddress.ip_network((a, n), strict=False), st.integers(0, 2**128 - 1),
                st.integers(0, 128))
_nets = st.lists(st.one_of(_v4, _v6), max_size=40)


@settings(max_examples=200, deadline=None)
@given(_nets, _nets)
def test_prefix_list_matches_a_set(before, after):
    old, new = PrefixList.from_networks(before), PrefixList.from_networks(after)
    assert set(old.networks()) == set(before)
    assert list(old.networks()) == sorted(set(before), key=lambda n: (n.version, n.network_address, n.prefixlen))
    added, removed = old.difference(new)
    assert set(added.networks()) == set(after) - set(before)
    assert set(removed.networks()) == set(before) - set(after)
    assert old.apply(added, removed) == new
    assert PrefixList.from_packed(new.v4, new.v6) == new


@pytest.mark.parametrize("seed", range(4))
def test_difference_of_long_lists_against_a_set(seed):
    """Long equal runs, changes at the ends, clustered and scattered: the merge skips runs by memcmp."""
    rng = random.Random(seed)
    old = random_prefixes(30_000, seed=seed, v6_share=0.1)
    records = {f: list(old.records(f)) for f in (4, 6)}
    new_blocks = {}
    for family, recs in records.items():
        keep = set(recs)
        for index in rng.sample(range(len(recs)), 40) + [0, len(recs) - 1] + list(range(100, 140)):
            keep.discard(recs[index])
        keep |= set(random_prefixes(60, seed=seed + 100, v6_share=0.5).records(family))
        new_blocks[family] = b"".join(sorted(keep))
    new = PrefixList(new_blocks[4], new_blocks[6])
    added, removed = old.difference(new)
    for family in (4, 6):
        before, after = set(old.records(family)), set(new.records(family))
        assert added.block(family) == b"".join(sorted(after - before))
        assert removed.block(family) == b"".join(sorted(before - after))
    assert old.apply(added, removed) == new


def test_prefix_list_apply_refuses_a_change_from_another_base():
    base = PrefixList.from_networks(["192.0.2.0/24", "2001:db8::/32"])
    with pytest.raises(PrefixListError, match="198.51.100.0/24 to remove is not in the list"):
        base.apply(PrefixList(), PrefixList.from_networks(["198.51.100.0/24"]))
    with pytest.raises(PrefixListError, match="already in the list"):
        base.apply(PrefixList.from_networks(["2001:db8::/32"]), PrefixList())


@pytest.mark.parametrize("v4, message", [
    (b"\xc0\x00\x02\x00", "not a whole number"),
    (b"\xc0\x00\x02\x00\x21", "prefix length 33"),
    (b"\xc0\x00\x02\x01\x18", "host bits"),
    (b"\xc6\x33\x64\x00\x18\xc0\x00\x02\x00\x18", "out of order"),
    (b"\xc0\x00\x02\x00\x18" * 2, "repeated"),
])
def test_packed_records_are_checked(v4, message):
    with pytest.raises(PrefixListError, match=message):
        PrefixList.from_packed(v4, b"")


def test_native_prefix_set_from_a_received_list():
    from agent._prefixes import PrefixSet   # the optional fast path, built by `make build`
    prefixes = random_prefixes(5000, v6_share=0.2)             # overlapping entries: compiled on the way
    entries = [(r[:-1], r[-1]) for f in (4, 6) for r in prefixes.records(f)]
    assert prefixes.to_prefix_set() == PrefixSet.from_list(entries)
    compiled = PrefixList.from_prefix_set(PrefixSet.from_list(entries))   # minimal: taken over as it is
    assert compiled.to_prefix_set() == PrefixSet.from_list(entries)
    assert PrefixList.from_packed(compiled.v4, compiled.v6) == compiled
    assert [(bytes(a), n) for a, n in PrefixSet.from_list(entries).to_list()] == \
        [(r[:-1], r[-1]) for f in (4, 6) for r in compiled.records(f)]


# ---------------------------------------------------------------- digest and deltas
def test_digest_ignores_list_order_and_revision():
    shuffled = {**DOCUMENT, "global": {"blocked_sources": list(reversed(DOCUMENT["global"]["blocked_sources"]))},
                "tenants": [dict(t, vips=list(reversed(t["vips"]))) for t in reversed(DOCUMENT["tenants"])]}
    assert bundle(7).digest == PolicyBundle.from_document(shuffled).digest == bundle(8).digest
    changed = {**DOCUMENT, "tenants": [dict(DOCUMENT["tenants"][0], state="suspended"), DOCUMENT["tenants"][1]]}
    assert PolicyBundle.from_document(changed).digest != bundle().digest
    assert bundle(lists={"global/extra": PrefixList.from_networks(["203.0.113.0/24"])}).digest != bundle().digest


def test_bundle_gives_back_the_document():
    again = bundle().full_document()
    assert again["revision"] == 7
    assert PolicyBundle.from_document(again).digest == bundle().digest
    assert set(again["global"]["blocked_sources"]) == set(DOCUMENT["global"]["blocked_sources"])
    assert again["tenants"][0]["blocked_sources"] == ["198.51.100.64/26"]
    with pytest.raises(ValueError, match="reserved"):
        bundle(lists={"tenant-1/policy": PrefixList.from_networks(["192.0.2.0/24"])})
    with pytest.raises(ValueError, match="not 'global/NAME'"):
        PolicyBundle(1, {}, {"tenant-0/x": PrefixList()})


def test_delta_round_trip_and_wrong_base():
    signer = BundleSigner(new_key())
    old = bundle(7, {"global/reputation": random_prefixes(20000)})
    reputation = old.lists["global/reputation"]
    added = random_prefixes(50, seed=9)
    removed = PrefixList(reputation.v4[:50 * 5])
    new_doc = {**DOCUMENT, "revision": 8,
               "tenants": [DOCUMENT["tenants"][0] | {"name": "shop-2"}, {"id": 9, "name": "new", "vips": []}]}
    new = PolicyBundle.from_document(new_doc, {"global/reputation": reputation.apply(added, removed)})
    delta = signed_delta(signer, old, new)
    assert len(delta.lists_changed) == 1 and delta.tenants_removed == [2]
    assert len(encode_frame(message_to_wire(delta))) < 2000
    result = apply_delta(old, delta)
    assert result.digest == new.digest and result.revision == 8
    with pytest.raises(DeltaError) as err:
        apply_delta(bundle(6, {"global/reputation": reputation}), delta)
    assert err.value.reason == "wrong_base"
    # same revision number, other content: the removals do not fit
    with pytest.raises(DeltaError) as err:
        apply_delta(bundle(7, {"global/reputation": random_prefixes(20000, seed=2)}), delta)
    assert err.value.reason == "wrong_base"
    with pytest.raises(DeltaError) as err:
        apply_delta(old, dataclasses.replace(delta, to_digest=b"\0" * 32))
    assert err.value.reason == "digest_mismatch"


# ---------------------------------------------------------------- snapshots
def test_large_list_snapshot_in_bounded_chunks_reassembled_exactly():
    signer = BundleSigner(new_key())
    lists = {"global/reputation": random_prefixes(200_000, v6_share=0.1), "tenant-1/abuse": random_prefixes(3000, 5)}
    tenants = [{"id": i, "name": f"t{i}", "state": "active", "vips": [f"2001:db8::{i:x}"], "blocked_ports": []}
               for i in range(1, 20001)]
    original = bundle(21, lists, {**DOCUMENT, "tenants": tenants})
    encoded = EncodedRevision(original, signer)
    assert len(encoded.frames) > 10
    assert max(len(f) for f in encoded.frames) <= CHUNK_RECORD_BYTES + 1024 < MAX_FRAME_SIZE
    verifier = BundleVerifier([signer.private_key.public_key()])
    agent, controller = open_pair(verifier)
    got = feed(agent, b"".join(controller.snapshot_frames(encoded)))
    assert len(got) == 1 and isinstance(got[0], SnapshotReceived)
    received = got[0].bundle
    assert received.digest == original.digest and received.revision == 21
    assert dict(received.lists) == dict(original.lists) and received.document == original.document
    controller.receive_data(agent.send(Ack(21, received.digest)))
    assert controller.next_event() == Ack(21, received.digest) and verifier.applied_revision == 21


def test_snapshot_byte_by_byte():
    signer = BundleSigner(new_key())
    encoded = EncodedRevision(bundle(3, {"global/x": random_prefixes(2000)}), signer)
    agent, controller = open_pair(BundleVerifier([signer.private_key.public_key()]))
    got = feed(agent, b"".join(controller.snapshot_frames(encoded)), byte_by_byte=True)
    assert [type(e) for e in got] == [SnapshotReceived] and got[0].bundle.digest == encoded.digest


def test_emergency_block_overtakes_received_chunks_not_yet_processed():
    signer = BundleSigner(new_key())
    encoded = EncodedRevision(bundle(3, {"global/x": random_prefixes(300_000)}), signer)
    agent, controller = open_pair(BundleVerifier([signer.private_key.public_key()]))
    block = controller.send(signer.sign_emergency(EmergencyBlock("em-1", ["198.51.100.7/32"], "C2", 1, "", b"")))
    report = controller.send(IncidentAck("inc-1"))   # not urgent: keeps its place
    got = feed(agent, b"".join(encoded.frames[:3]) + report + b"".join(encoded.frames[3:]) + block, progress=True)
    assert isinstance(got[0], EmergencyReceived)
    progress = [e for e in got if isinstance(e, SnapshotProgress)]
    assert [p.received for p in progress] == list(range(1, len(encoded.frames) - 1))
    assert got.index(IncidentAck("inc-1")) == 3 and isinstance(got[-1], SnapshotReceived)
    # not before the welcome: an emergency block then is out of place, as any other message
    early = AgentConnection(BundleVerifier([signer.private_key.public_key()]))
    early.send(hello())
    (event,) = feed(early, block + controller.send(Close("normal", "")))
    assert isinstance(event, ConnectionClosed) and event.reason == "unexpected_message"


def test_snapshot_encoded_once_and_shared_by_every_connection():
    signer = BundleSigner(new_key())
    cache = SnapshotCache(signer)
    revision = bundle(5, {"global/x": random_prefixes(100_000)})
    verifier = BundleVerifier([signer.private_key.public_key()])
    sent = [open_pair(verifier, f"edge-{i}")[1].snapshot_frames(cache.get(revision)) for i in range(5)]
    assert cache.encodings == 1
    assert all(a is b for frames in sent[1:] for a, b in zip(frames, sent[0]))
    cache.get(bundle(6, {"global/x": random_prefixes(10)}))
    cache.get(bundle(7))
    assert cache.encodings == 3 and len(cache._encoded) == 2


def _tamper_chunk(frames, index, change):
    chunk = decode_message(unpack(frames[index][4:]))
    return frames[:index] + (encode_frame(message_to_wire(change(chunk))),) + frames[index + 1:]


def test_tampered_snapshot_is_refused_and_nothing_is_handed_on():
    signer = BundleSigner(new_key())
    frames = EncodedRevision(bundle(3, {"global/x": random_prefixes(2000)}), signer).frames
    x = next(i for i, f in enumerate(frames[1:-1], 1) if decode_message(unpack(f[4:])).list_key == "global/x")
    begin = decode_message(unpack(frames[0][4:]))
    verifier = BundleVerifier([signer.private_key.public_key()])

    def fed(frames):
        agent, _ = open_pair(verifier)
        got = feed(agent, b"".join(frames))
        assert len(got) == 1, got
        return got[0], agent.data_to_send()

    # one record taken out, the announced count fixed to match: every frame adds up, the signed digest does not
    dropped = _tamper_chunk(frames, x, lambda c: dataclasses.replace(c, data=c.data[:-5]))
    recounted = (encode_frame(message_to_wire(dataclasses.replace(begin, prefixes=begin.prefixes - 1))),) + dropped[1:]
    event, sent = fed(recounted)
    assert isinstance(event, RevisionRejected) and event.reason is RejectReason.DIGEST_MISMATCH
    assert decode_message(unpack(sent[4:])) == Reject(3, "digest_mismatch", event.message)
    # the digest changed to match: the signature no longer verifies
    redigested = (encode_frame(message_to_wire(dataclasses.replace(begin, digest=b"\0" * 32))),) + frames[1:]
    event, _ = fed(redigested)
    assert isinstance(event, RevisionRejected) and event.reason is RejectReason.BAD_SIGNATURE
    # the count left alone: the stream itself does not add up
    event, sent = fed(dropped)
    assert isinstance(event, ConnectionClosed) and event.reason == "bad_snapshot" and "announced" in event.message
    assert verifier.applied_revision == 0


def test_snapshot_chunks_out_of_order_close_the_connection():
    signer = BundleSigner(new_key())
    frames = EncodedRevision(bundle(3, {"global/x": random_prefixes(200_000)}), signer).frames
    agent, _ = open_pair(BundleVerifier([signer.private_key.public_key()]))
    got = feed(agent, b"".join((frames[0], frames[2], frames[1]) + frames[3:]))
    assert [type(e) for e in got] == [ConnectionClosed] and got[0].reason == "bad_snapshot"
    assert "chunk 1: expected chunk 0" in got[0].message


# ---------------------------------------------------------------- signatures and order
def test_wrong_key_and_tampered_delta_are_refused():
    signer, stranger = BundleSigner(new_key()), BundleSigner(new_key())
    verifier = BundleVerifier([signer.private_key.public_key()], 7, bundle(7).digest)
    agent, controller = open_pair(verifier)
    new = bundle(8, {"global/x": random_prefixes(10)})
    got = feed(agent, controller.send(signed_delta(stranger, bundle(7), new)))
    assert got[0].reason is RejectReason.UNKNOWN_KEY and stranger.key_id in got[0].message
    forged = dataclasses.replace(signed_delta(stranger, bundle(7), new), key_id=signer.key_id)
    got = feed(agent, controller.send(forged))
    assert got[0].reason is RejectReason.BAD_SIGNATURE
    good = signed_delta(signer, bundle(7), new)
    tampered = dataclasses.replace(good, tenants_removed=[1])
    got = feed(agent, controller.send(tampered))
    assert got[0].reason is RejectReason.BAD_SIGNATURE
    # the agent told the controller each time, and the controller will not push those again
    controller.receive_data(agent.data_to_send())
    rejects = events(controller)
    assert [r.reason for r in rejects] == ["unknown_key", "bad_signature", "bad_signature"]
    assert 8 in controller.rejected
    assert verifier.applied_revision == 7
    with pytest.raises(LocalProtocolError, match="rejected"):
        controller.send(good)                 # revision 8 is not pushed to this agent again
    (event,) = feed(agent, encode_frame(message_to_wire(good)))   # the genuine one still applies
    assert isinstance(event, DeltaReceived)


def test_rotated_keys_two_trusted_at_once():
    old_key, new_key_ = BundleSigner(new_key()), BundleSigner(new_key())
    verifier = BundleVerifier([old_key.private_key.public_key(), new_key_.private_key.public_key()])
    agent, controller = open_pair(verifier)
    first = EncodedRevision(bundle(1), old_key)
    (event,) = feed(agent, b"".join(controller.snapshot_frames(first)))
    agent.send(Ack(1, event.bundle.digest))
    (event,) = feed(agent, controller.send(signed_delta(new_key_, bundle(1), bundle(2, {"global/x": random_prefixes(3)}))))
    assert isinstance(event, DeltaReceived)
    agent.send(Ack(2, event.delta.to_digest))
    # the old key retired: only the new one is trusted now
    retired = BundleVerifier([new_key_.private_key.public_key()], 2, event.delta.to_digest)
    agent, controller = open_pair(retired)
    (event,) = feed(agent, b"".join(controller.snapshot_frames(EncodedRevision(bundle(3), old_key))))
    assert event.reason is RejectReason.UNKNOWN_KEY
    (event,) = feed(agent, b"".join(controller.snapshot_frames(EncodedRevision(bundle(3), new_key_))))
    assert isinstance(event, SnapshotReceived)


def test_replayed_backwards_and_wrong_base_are_refused():
    signer = BundleSigner(new_key())
    verifier = BundleVerifier([signer.private_key.public_key()])
    agent, controller = open_pair(verifier)
    r5, r6, r7 = bundle(5), bundle(6, {"global/x": random_prefixes(5)}), bundle(7, {"global/x": random_prefixes(6)})
    snap5 = EncodedRevision(r5, signer)
    (event,) = feed(agent, b"".join(snap5.frames))
    agent.send(Ack(5, event.bundle.digest))
    delta56 = signed_delta(signer, r5, r6)
    (event,) = feed(agent, encode_frame(message_to_wire(delta56)))
    agent.send(Ack(6, r6.digest))
    agent.data_to_send()

    def refused(frames) -> RevisionRejected:
        (event,) = feed(agent, b"".join(frames))
        assert isinstance(event, RevisionRejected)
        reject = decode_message(unpack(agent.data_to_send()[4:]))
        assert isinstance(reject, Reject) and reject.reason == event.reason.value and reject.message
        return event

    assert refused(snap5.frames).reason is RejectReason.REPLAYED
    assert refused([encode_frame(message_to_wire(delta56))]).reason is RejectReason.REPLAYED
    other5 = EncodedRevision(bundle(5, {"global/y": random_prefixes(3)}), signer)
    assert refused(other5.frames).reason is RejectReason.BACKWARDS
    assert refused([encode_frame(message_to_wire(signed_delta(signer, r7, r6)))]).reason is RejectReason.BACKWARDS
    wrong_base = signed_delta(signer, r5, r7)
    event = refused([encode_frame(message_to_wire(wrong_base))])
    assert event.reason is RejectReason.WRONG_BASE and "revision 6 is applied" in event.message
    # a refused snapshot's chunks are skipped; the connection stays usable and nothing was applied
    assert verifier.applied_revision == 6
    (event,) = feed(agent, b"".join(EncodedRevision(r6, signer).frames))   # a resync of the applied revision
    assert isinstance(event, SnapshotReceived) and event.bundle.digest == r6.digest
    (event,) = feed(agent, encode_frame(message_to_wire(signed_delta(signer, r6, r7))))
    assert isinstance(event, DeltaReceived) and apply_delta(r6, event.delta).digest == r7.digest


def test_emergency_block_verified():
    signer, stranger = BundleSigner(new_key()), BundleSigner(new_key())
    agent, controller = open_pair(BundleVerifier([signer.private_key.public_key()]))
    block = EmergencyBlock("em-1", ["198.51.100.7/32"], "C2 server", 9, "", b"", 0, 1764600000)
    (event,) = feed(agent, controller.send(signer.emergency("em-1", ["198.51.100.7/32"], "C2 server", 9)))
    assert isinstance(event, EmergencyReceived) and event.block.prefixes == ["198.51.100.7/32"]
    assert event.block.key_id == signer.key_id and event.block.issued_at > 1764600000
    (event,) = feed(agent, controller.send(stranger.sign_emergency(block)))
    assert isinstance(event, RevisionRejected) and "em-1" in event.message


def test_key_files(tmp_path):
    kid = keygen(tmp_path / "signing.key")
    private = load_private_key(tmp_path / "signing.key")
    assert (tmp_path / "signing.key").stat().st_mode & 0o777 == 0o600
    public_pem = load_public_key(str(tmp_path / "signing.key.pub"))
    raw = public_key_text(public_pem)
    assert BundleSigner(private).key_id == kid
    payload_signer = BundleSigner(private)
    begin_key, signature = payload_signer.sign_snapshot(1, b"d" * 32)
    for trusted in (public_pem, load_public_key(raw), load_public_key((tmp_path / "signing.key.pub").read_text())):
        BundleVerifier([trusted]).check_snapshot(SnapshotBegin(1, b"d" * 32, kid, signature, 0, 0))
    with pytest.raises(KeyFileError, match="exists"):
        keygen(tmp_path / "signing.key")
    (tmp_path / "bad").write_text("not a key")
    with pytest.raises(KeyFileError, match="neither PEM nor base64"):
        load_public_key(tmp_path / "bad")
    with pytest.raises(KeyFileError, match="at least one"):
        BundleVerifier([])


def test_bundle_from_a_policy_and_back():
    from agent.policy import policy_from_document
    from policies import FIXED_POLICY
    bundle_ = PolicyBundle.from_policy(FIXED_POLICY, {"tenant-2/abuse": random_prefixes(100)})
    again = policy_from_document(bundle_.full_document())
    # the same policy, block lists in prefix order rather than the order the document listed them
    assert set(again.blocked_sources) == set(FIXED_POLICY.blocked_sources)
    assert [(t.id, t.vips, set(t.blocked_sources)) for t in again.tenants] == \
        [(t.id, t.vips, set(t.blocked_sources)) for t in FIXED_POLICY.tenants]
    assert PolicyBundle.from_policy(again, bundle_.named_lists()).digest == bundle_.digest
    assert set(bundle_.named_lists()) == {"tenant-2/abuse"}
    assert {"global/policy", "tenant-1/policy", "tenant-2/policy"} <= set(bundle_.lists)


def test_a_delta_too_large_for_a_frame_is_detected():
    signer = BundleSigner(new_key())
    old, new = bundle(1), bundle(2, {"global/big": random_prefixes(250_000)})
    delta = signed_delta(signer, old, new)
    assert not fits_in_frame(delta)
    assert fits_in_frame(signed_delta(signer, old, bundle(2, {"global/big": random_prefixes(1000)})))


_doc_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=6)
                           | st.binary(max_size=6), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=15)


@settings(max_examples=200, deadline=None)
@given(_doc_values, st.randoms(use_true_random=False))
def test_canonical_encoding_survives_msgpack_and_ignores_map_order(value, rnd):
    from agent.wire.canonical import canonical_bytes, unordered_canonical_bytes

    def shuffled(v, lists: bool):
        if isinstance(v, dict):
            items = list(v.items())
            rnd.shuffle(items)
            return {k: shuffled(x, lists) for k, x in items}
        if isinstance(v, list):
            items = [shuffled(x, lists) for x in v]
            if lists:
                rnd.shuffle(items)
            return items
        return v

    assert canonical_bytes(unpack(canonical_bytes(value))) == canonical_bytes(value)
    assert canonical_bytes(shuffled(value, False)) == canonical_bytes(value)
    assert unordered_canonical_bytes(shuffled(value, True)) == unordered_canonical_bytes(value)
    assert unpack(canonical_bytes(value)) == unpack(encode_frame(value)[4:])


_SIGNER = BundleSigner(new_key())
_R1 = bundle(1, {"global/x": random_prefixes(3000, v6_share=0.2)})
_R2 = bundle(2, {"global/x": random_prefixes(3001, v6_share=0.2)})
_STREAM = b"".join(EncodedRevision(_R1, _SIGNER).frames) + encode_frame(message_to_wire(_SIGNER.make_delta(_R1, _R2)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_STREAM) - 1), st.integers(1, 255)), min_size=1, max_size=6),
       st.integers(0, len(_STREAM)))
def test_fuzz_corrupted_stream_never_hands_on_altered_revisions(flips, cut):
    """Bytes of a valid snapshot + delta stream flipped and the stream cut: whatever
    comes out is the genuine revision, a refusal with a reason, or a close with a reason."""
    data = bytearray(_STREAM)
    for at, xor in flips:
        data[at] ^= xor
    verifier = BundleVerifier([_SIGNER.private_key.public_key()])
    agent, _ = open_pair(verifier)
    agent.receive_data(bytes(data[:cut]))
    for event in iter(agent.next_event, None):
        if isinstance(event, SnapshotReceived):
            assert event.bundle.digest == _R1.digest and dict(event.bundle.lists) == dict(_R1.lists)
            agent.send(Ack(1, event.bundle.digest))
        elif isinstance(event, DeltaReceived):
            assert apply_delta(_R1, event.delta).digest == _R2.digest
        elif isinstance(event, RevisionRejected):
            assert event.message and event.reason in RejectReason
        elif isinstance(event, ConnectionClosed):
            assert event.reason and event.message


def test_revision_file_keeps_the_proof(tmp_path):
    signer, stranger = BundleSigner(new_key()), BundleSigner(new_key())
    verifier = BundleVerifier([signer.private_key.public_key()])
    agent, controller = open_pair(verifier)
    r1, r2 = bundle(1, {"global/x": random_prefixes(50_000)}), bundle(2, {"global/x": random_prefixes(50_001)})
    (snapshot,) = feed(agent, b"".join(EncodedRevision(r1, signer).frames))
    write_revision(tmp_path / "rev", snapshot.bundle, snapshot.proof)
    assert read_revision(tmp_path / "rev", BundleVerifier([signer.private_key.public_key()])).digest == r1.digest
    agent.send(Ack(1, r1.digest))
    (delta,) = feed(agent, controller.send(signer.make_delta(r1, r2)))
    write_revision(tmp_path / "rev", apply_delta(snapshot.bundle, delta.delta), delta.delta)
    again = read_revision(tmp_path / "rev", BundleVerifier([signer.private_key.public_key()]))
    assert again.digest == r2.digest and again.revision == 2 and dict(again.lists) == dict(r2.lists)
    # refused: another key, a byte changed on disk, a proof of another revision, a truncated file
    with pytest.raises(RevisionFileError, match="unknown_key"):
        read_revision(tmp_path / "rev", BundleVerifier([stranger.private_key.public_key()]))
    data = bytearray((tmp_path / "rev").read_bytes())
    data[-40] ^= 0x01
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(RevisionFileError, match="corrupt|not trusted"):
        read_revision(tmp_path / "bad", verifier)
    write_revision(tmp_path / "other", r2, snapshot.proof)
    with pytest.raises(RevisionFileError, match="digest_mismatch"):
        read_revision(tmp_path / "other", verifier)
    (tmp_path / "short").write_bytes((tmp_path / "rev").read_bytes()[:-3])
    with pytest.raises(RevisionFileError, match="truncated"):
        read_revision(tmp_path / "short", verifier)
    with pytest.raises(RevisionFileError, match="cannot read"):
        read_revision(tmp_path / "missing", verifier)

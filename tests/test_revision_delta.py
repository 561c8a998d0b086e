"""The agent's side of a delta without a daemon: a wire list change turned
into a change of the compiled union (overlapping records included), the
stored revision growing by appended signed deltas (and refusing a
tampered one, ignoring a torn one), and the block tables' digests: order
independent, moved exactly by an in-place delta on a real datapath, and
telling a table changed by hand from one the agent wrote."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from agent._prefixes import PrefixSet
from agent.daemon.revision_delta import compiled_change, delta_list_changes, only_list_entries, prefix_listed
from agent.datapath import abi
from agent.datapath.apply import apply_policy_to_maps
from agent.datapath.blocktables import SwappableTable, node_key
from agent.datapath.compile import GLOBAL_TABLES
from agent.datapath.list_delta import ListState, apply_delta_to_maps
from agent.datapath.named_lists import ListId
from agent.datapath.private import PrivateDatapath
from agent.datapath.table_digest import TableDigests, check_tables, entries_digest, entry_table_digest
from agent.policy import Policy
from agent.wire import (
    BundleSigner, BundleVerifier, PolicyBundle, PrefixList, RevisionFileError, read_revision, write_revision,
)
from agent.wire.messages import SnapshotBegin
from agent.wire.revision_file import append_delta
from wire_peers import bundle, new_key, random_prefixes


def _net(rng: random.Random):
    if rng.random() < 0.2:
        n = rng.choice((32, 48, 56, 64, 128))
        a = (0x20010DB8 << 96) | rng.getrandbits(96)
        return ipaddress.ip_network(((a >> (128 - n)) << (128 - n), n))
    n = rng.choice((8, 12, 16, 20, 24, 28, 30, 32))
    a = (10 << 24) | rng.getrandbits(24) if rng.random() < 0.7 else rng.getrandbits(32)
    return ipaddress.ip_network(((a >> (32 - n)) << (32 - n), n))


@pytest.mark.parametrize("seed", range(6))
def test_a_wire_list_change_is_the_same_change_of_the_compiled_union(seed):
    """Overlapping records (a /8 with /16s and /32s inside it): removing one
    takes out only what no other record still covers."""
    rng = random.Random(seed)
    for _ in range(80):
        old_nets = sorted({_net(rng) for _ in range(rng.randint(0, 80))}, key=str)
        removed = rng.sample(old_nets, min(len(old_nets), rng.randint(0, 12)))
        added = [n for n in {_net(rng) for _ in range(rng.randint(0, 12))} if n not in old_nets]
        old = PrefixList.from_networks(old_nets)
        new = PrefixList.from_networks([n for n in old_nets if n not in removed] + added)
        add, remove = compiled_change(new, PrefixList.from_networks(added), PrefixList.from_networks(removed))
        assert old.to_prefix_set().subtract(remove).union(add) == new.to_prefix_set()


def test_delta_list_changes_and_what_goes_in_place():
    signer = BundleSigner(new_key())
    r1 = bundle(1, {"global/feed": PrefixList.from_networks(["10.0.0.0/8", "10.1.0.0/16", "192.0.2.7/32"])})
    lists = r1.named_lists()
    lists["global/feed"] = PrefixList.from_networks(["10.0.0.0/8", "192.0.2.8/32"])
    r2 = bundle(2, lists)
    delta = signer.make_delta(r1, r2)
    assert only_list_entries(delta)
    [(list_id, added, removed)] = delta_list_changes(r2.lists, delta)
    assert list_id == ListId("feed")
    # 10.1.0.0/16 is still inside 10.0.0.0/8: removing it from the list unblocks nothing
    assert removed == PrefixSet.from_list([(bytes([192, 0, 2, 7]), 32)])
    assert added == PrefixSet.from_list([(bytes([192, 0, 2, 8]), 32)])
    assert prefix_listed(r2.lists["global/feed"], "192.0.2.8/32")
    assert not prefix_listed(r2.lists["global/feed"], "192.0.2.7/32")
    fewer_tenants = PolicyBundle(3, {**r2.document, "tenants": r2.document["tenants"][:1]}, r2.lists)
    assert not only_list_entries(signer.make_delta(r2, fewer_tenants))


def test_the_stored_revision_grows_by_appended_deltas(tmp_path):
    signer, stranger = BundleSigner(new_key()), BundleSigner(new_key())
    verifier = BundleVerifier([signer.private_key.public_key()])
    path = tmp_path / "revision"
    base = random_prefixes(20_000, seed=4)
    revisions = [bundle(1, {"global/feed": base})]
    rng = random.Random(9)
    for revision in range(2, 6):
        extra = [ipaddress.ip_network((rng.getrandbits(32), 32)) for _ in range(100)]
        lists = {"global/feed": PrefixList.from_networks([*revisions[-1].lists["global/feed"].networks(), *extra])}
        revisions.append(bundle(revision, lists))
    begin = SnapshotBegin(1, revisions[0].digest, *signer.sign_snapshot(1, revisions[0].digest), 1, len(base))
    write_revision(path, revisions[0], begin)
    sizes = [path.stat().st_size]
    for old, new in zip(revisions, revisions[1:]):
        sizes.append(append_delta(path, signer.make_delta(old, new)))
        stored = read_revision(path, verifier)
        assert stored.revision == new.revision and stored.digest == new.digest
    assert sizes[-1] - sizes[0] < 4 * 1000 + 4 * 200     # four small deltas, not four lists again
    # a torn last delta (a crash while appending): the revision before it
    whole = path.read_bytes()
    (tmp_path / "torn").write_bytes(whole[:-7])
    assert read_revision(tmp_path / "torn", verifier).revision == 4
    # a delta signed by a key not trusted, appended: refused
    (tmp_path / "foreign").write_bytes(whole)
    append_delta(tmp_path / "foreign", stranger.make_delta(revisions[-1], bundle(6, revisions[-1].named_lists())))
    with pytest.raises(RevisionFileError, match="unknown_key"):
        read_revision(tmp_path / "foreign", verifier)
    # a delta from another base, appended: refused
    (tmp_path / "based").write_bytes(whole)
    append_delta(tmp_path / "based", signer.make_delta(revisions[1], bundle(7, revisions[1].named_lists())))
    with pytest.raises(RevisionFileError, match="wrong_base"):
        read_revision(tmp_path / "based", verifier)


def test_entries_digest_ignores_order_and_sees_every_byte():
    rng = random.Random(2)
    entries = [(rng.randbytes(4), rng.randbytes(72)) for _ in range(500)]
    keys, values = b"".join(k for k, _ in entries), b"".join(v for _, v in entries)
    digest = entries_digest(keys, values, 4, 72)
    shuffled = entries[:]
    rng.shuffle(shuffled)
    assert entries_digest(b"".join(k for k, _ in shuffled), b"".join(v for _, v in shuffled), 4, 72) == digest
    for at in (0, 3, 4, 75, len(values) - 1):
        changed = bytearray(values)
        changed[at] ^= 0x10
        assert entries_digest(keys, bytes(changed), 4, 72) != digest
    assert entries_digest(keys[:-4], values[:-72], 4, 72) != digest
    assert entries_digest(b"", b"", 4, 72) == 0


def test_digests_follow_in_place_deltas_and_catch_a_change_by_hand():
    rng = random.Random(7)
    base = PrefixSet.from_list([(rng.getrandbits(32).to_bytes(4, "big"), rng.choice((24, 32)))
                                for _ in range(20_000)])
    policy = Policy(revision=1)
    feed = ListId("feed")
    with PrivateDatapath() as datapath:
        maps = datapath.program.maps
        apply_policy_to_maps(maps, policy, {None: base}, frozenset(GLOBAL_TABLES))
        state = ListState(policy, {feed: base})
        digests = TableDigests()
        digests.reset(maps)
        assert check_tables(digests, maps).drifted == [] and check_tables(digests, maps).decided
        current = base
        for _ in range(5):
            entries = current.to_list()
            removed = PrefixSet.from_list(rng.sample(entries, 50))
            added = PrefixSet.from_list([(rng.getrandbits(32).to_bytes(4, "big"), 32) for _ in range(50)])
            apply_delta_to_maps(maps, state, feed, added, removed, digests=digests)
            current = current.subtract(removed).union(added)
            check = check_tables(digests, maps)
            assert check.decided and check.drifted == [], "the kept digests left what the tables hold"
        table = SwappableTable(maps["ew_gblock_v4"])
        assert digests.expected["ew_gblock_v4"] == entry_table_digest(table.entries_table())
        # by hand: one node deleted from the live table
        key = next(iter(table.entries()))
        with table.inner() as inner:
            value = inner.lookup(key)
            inner.delete(key)
        assert check_tables(digests, maps).drifted == ["ew_gblock_v4"]
        with table.inner() as inner:
            inner.update(key, value)
        assert check_tables(digests, maps).drifted == []
        # by hand: one node added
        extra = struct.pack("=I", node_key(abi.BLOCK_LEVEL_16, 0xC000))
        if extra not in table.entries():
            with table.inner() as inner:
                inner.update(extra, value)
            assert check_tables(digests, maps).drifted == ["ew_gblock_v4"]
            with table.inner() as inner:
                inner.delete(extra)
        # the scope's first IPv6 entry goes the full way (its flags change): the digests are read back
        first_v6 = PrefixSet.from_list([(ipaddress.ip_address("2001:db8:77::").packed, 48)])
        apply_delta_to_maps(maps, state, feed, first_v6, PrefixSet(), digests=digests)
        check = check_tables(digests, maps)
        assert check.decided and check.drifted == []
        assert digests.expected["ew_gblock_v6"] != 0
        # while a change is being written, a readback decides nothing
        with digests.writing():
            assert not check_tables(digests, maps).decided

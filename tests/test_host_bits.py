"""The IPv4 host bits (agent/datapath/host_bits.py, ew_host_bits_v4):

(a) the update protocol, on a stand-in array that logs every store: for any
    old and new global list (with /24s that share an entry), a reader that
    takes the tag, a hosts word and the tag again at any three moments of
    the update (bpf/blocklist.h host_bits_v4) never lets a source both
    versions block through, never blocks a source neither blocks, and the
    array ends holding exactly the new table's level-24 nodes, one /24 on
    every entry some /24 wants; whole versions and in-place deltas alike.
    Teeth: the same check catches a tag written before its hosts and a
    reader that skips the second read of the tag;
(b) the kernel judges every source as the reference (agent/reference.py)
    does, across random versions applied one after the other;
(c) under traffic, while a policy flips between two versions that move
    sources between a held partial /24, a /24 that shares its entry, a /24
    blocked whole and no list, swapped whole or changed in place, no packet
    from a source both versions block passes and none from a source neither
    blocks is dropped.
"""

import ipaddress
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent._prefixes import EntryTable
from agent.blocklist import compile_prefixes_reference
from agent.datapath import abi, host_bits
from agent.datapath.blocktables import global_v4_entries, v4_block_nodes
from agent.datapath.host_bits import (ENTRY_WORDS, FIRST_HOST_WORD, TAG, HostBitsUpdate, entry_of, held_24s,
                                      host_bits_mismatches)
from agent.datapath.private import PrivateDatapath
from agent.datapath.program import read_revision
from agent.datapath.syscalls import test_run
from agent.policy import policy_from_document
from frames import tcp_ipv4_frame
from oracle import Oracle

XDP_DROP, XDP_PASS = 1, 2
V4 = ipaddress.IPv4Network
VALID = abi.HOST_BITS_VALID << 32
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ==========================================================================
# (a) The protocol, store by store


class LoggedArray:
    """Stands in for HostBitsArray: the words in memory, every 8-byte store
    logged as (entry, word, value); a copy of free entries (fill_free) is
    logged word by word, as it may land in any order."""

    def __init__(self):
        self.entries = abi.HOST_BITS_V4_ENTRIES
        self.words = np.zeros((self.entries, ENTRY_WORDS), dtype=np.uint64)
        self.log: list[tuple[int, int, int]] = []

    def store(self, entry, word, value):
        self.words[int(entry), word] = np.uint64(int(value))
        self.log.append((int(entry), word, int(value)))

    def fill_free(self, entries, hosts):
        for entry, row in zip(entries, hosts):
            for i, value in enumerate(row):
                self.store(entry, FIRST_HOST_WORD + i, value)


def node_table(networks) -> EntryTable:
    entries = global_v4_entries(v4_block_nodes(networks))
    return EntryTable.from_packed(b"".join(entries), b"".join(entries.values()), 4, 72)


def entry_states(start: np.ndarray, log, entry: int) -> list[np.ndarray]:
    """The words of `entry` before the update and after each store to it."""
    states = [start[entry].copy()]
    for logged, word, value in log:
        if logged == entry:
            state = states[-1].copy()
            state[word] = np.uint64(value)
            states.append(state)
    return states


def reader_answers(states, address: int, reread: bool = True) -> set[int]:
    """Every answer host_bits_v4 can give for `address` when its three reads
    fall on states i <= j <= k (None: the table decides)."""
    index24, answers = address >> 8, set()
    for i, first in enumerate(states):
        tag = int(first[TAG])
        if not tag & VALID or (tag >> 32) & 0xFFFFFF != index24:
            continue
        for j in range(i, len(states)):
            word = int(states[j][FIRST_HOST_WORD + ((address >> 6) & 3)])
            for k in range(j, len(states)):
                if reread and int(states[k][TAG]) != tag:
                    continue
                answers.add((word >> (address & 63)) & 1)
    return answers


def check_update(old, new, addresses, make_update, reread=True) -> list[str]:
    """Sync the array to `old`, run the update to `new`, and check every
    reader of every address against the two versions."""
    array = LoggedArray()
    HostBitsUpdate.for_table(array, node_table(old)).apply()
    start = array.words.copy()
    array.log.clear()
    make_update(array, node_table(old), node_table(new)).apply()
    problems = []
    for address in addresses:
        a = int(address)
        in_old, in_new = any(address in n for n in old), any(address in n for n in new)
        answers = reader_answers(entry_states(start, array.log, int(entry_of(a >> 8))), a, reread)
        if in_old and in_new and 0 in answers:
            problems.append(f"{address}, blocked by both versions, read as not blocked")
        if not in_old and not in_new and 1 in answers:
            problems.append(f"{address}, blocked by neither version, read as blocked")
    problems += final_state_problems(array.words, new)
    return problems


def final_state_problems(words: np.ndarray, networks) -> list[str]:
    """The array holds only the table's level-24 nodes, exactly."""
    index24, hosts = host_bits.level24_nodes(node_table(networks))
    nodes = {int(i): h for i, h in zip(index24, hosts)}
    problems = []
    for entry in np.nonzero(words[:, TAG] & np.uint64(VALID))[0]:
        held = (int(words[entry, TAG]) >> 32) & 0xFFFFFF
        if entry_of(held) != entry or held not in nodes:
            problems.append(f"entry {entry} holds {held:#x}, not a level-24 node of its own")
        elif not np.array_equal(nodes[held], words[entry, FIRST_HOST_WORD:FIRST_HOST_WORD + 4]):
            problems.append(f"entry {entry} holds other hosts than the node of {held:#x}")
    return problems


def full_update(array, old_table, new_table):
    return HostBitsUpdate.for_table(array, new_table)


def delta_update(array, old_table, new_table):
    writes, stale = old_table.diff(new_table)
    update = HostBitsUpdate.for_writes(array, list(writes.items()), [k for k, _ in stale.items()])
    return update or _NoUpdate()     # None: the delta has no level-24 node


class _NoUpdate:
    def apply(self):
        pass


# Prefixes in 10.0.0.0/15, 11.0.0.0/15 and 12.0.0.0/15: /24s 2^16 apart share
# an entry, so entries are contended; mostly longer than /24.
_address = st.builds(lambda first, rest: (first << 24) | rest, st.sampled_from([10, 11, 12]), st.integers(0, 2**17 - 1))
_prefix = st.builds(lambda a, length: V4((a, length), strict=False), _address,
                    st.sampled_from([16, 23, 24, 25, 27, 29, 30, 31, 32, 32, 32]))


@st.composite
def versions(draw):
    old = draw(st.lists(_prefix, max_size=10))
    new = [n for n in old if draw(st.booleans())] + draw(st.lists(_prefix, max_size=6))
    # Sources in the /24s of both, and their neighbours in the other regions.
    nets = compile_prefixes_reference(old + new)
    addresses = set()
    for n in nets:
        first = int(n.network_address)
        for value in (first, first + n.num_addresses - 1, first - 1, first + n.num_addresses):
            for shift in (0, 1 << 24, 2 << 24):
                addresses.add(ipaddress.IPv4Address((value + shift) & 0xFFFFFFFF))
    addresses |= set(draw(st.lists(_address.map(ipaddress.IPv4Address), max_size=10)))
    return compile_prefixes_reference(old), compile_prefixes_reference(new), sorted(addresses)


@SETTINGS
@given(v=versions())
def test_a_whole_version_never_lets_a_reader_see_a_torn_or_foreign_entry(v):
    old, new, addresses = v
    assert check_update(old, new, addresses, full_update) == []


@SETTINGS
@given(v=versions())
def test_an_in_place_delta_never_lets_a_reader_see_a_torn_or_foreign_entry(v):
    old, new, addresses = v
    assert check_update(old, new, addresses, delta_update) == []


@SETTINGS
@given(v=versions())
def test_every_wanted_entry_is_held_after_a_whole_version(v):
    _, new, _ = v
    array = LoggedArray()
    HostBitsUpdate.for_table(array, node_table(new)).apply()
    index24, _ = host_bits.level24_nodes(node_table(new))
    wanted = {int(entry_of(i)) for i in index24}
    held = set(np.nonzero(array.words[:, TAG] & np.uint64(VALID))[0].tolist())
    assert held == wanted


# X's entry goes to Y (same entry), X gone: the old hosts of X block 10.7.7.5,
# which neither version blocks in Y (11.7.7.5), and Y's hosts block 11.7.7.9,
# whose twin in X (10.7.7.9) neither version blocks.
TEETH_OLD = [V4("10.7.7.5/32")]
TEETH_NEW = [V4("11.7.7.9/32")]
TEETH_ADDRESSES = [ipaddress.IPv4Address(a) for a in ("10.7.7.5", "10.7.7.9", "11.7.7.5", "11.7.7.9")]


def test_the_check_catches_a_tag_written_before_its_hosts(monkeypatch):
    assert check_update(TEETH_OLD, TEETH_NEW, TEETH_ADDRESSES, full_update) == []

    hosts_only = LoggedArray.fill_free

    def tag_first(self, entries, hosts):
        for entry, tag in zip(getattr(self, "taken", ()), getattr(self, "taken_tags", ())):
            self.store(entry, TAG, tag)
        hosts_only(self, entries, hosts)
    monkeypatch.setattr(LoggedArray, "fill_free", tag_first, raising=True)
    assert any("neither" in p for p in check_update(TEETH_OLD, TEETH_NEW, TEETH_ADDRESSES, _remember_taken))


def _remember_taken(array, old_table, new_table):
    update = HostBitsUpdate.for_table(array, new_table)
    array.taken, array.taken_tags = update.taken, update.taken_tags
    return update


def test_the_check_catches_a_reader_that_reads_the_tag_once():
    problems = check_update(TEETH_OLD, TEETH_NEW, TEETH_ADDRESSES, full_update, reread=False)
    assert any("10.7.7.9" in p and "neither" in p for p in problems)


# ==========================================================================
# (b) The kernel against the reference, version after version

VIP = "203.0.113.1"


def document(revision, global_sources):
    return {"revision": revision, "global": {"blocked_sources": [str(n) for n in global_sources]},
            "tenants": [{"id": 1, "name": "t1", "vips": [VIP]}]}


@pytest.fixture(scope="module")
def shared_datapath():
    with PrivateDatapath() as datapath:
        yield datapath


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(versions(), min_size=1, max_size=3))
def test_the_kernel_judges_every_source_as_the_reference_across_versions(shared_datapath, sequence):
    """One program for every example: each version replaces the one before,
    in place or swapped, from whatever the array holds."""
    datapath = shared_datapath
    for _, new, addresses in sequence:
        policy = policy_from_document(document(read_revision(datapath.program.maps) + 1, new))
        datapath.apply(policy)
        assert host_bits_mismatches(datapath.program.maps) == []
        oracle = Oracle(datapath, policy)
        for address in addresses:
            oracle.check(tcp_ipv4_frame(str(address), VIP, 40000, 443), counters=False)


def test_the_kernel_decides_from_the_array_and_falls_back_for_a_shared_entry():
    """10.7.7.0/24 holds the entry 11.7.7.0/24 also wants: both are enforced,
    one through the array, the other through the table."""
    policy = policy_from_document(document(1, ["10.7.7.5/32", "11.7.7.9/32", "198.51.100.128/25"]))
    with PrivateDatapath(policy) as datapath:
        assert held_24s(datapath.program.maps) == {0x0A0707, 0xC63364}
        oracle = Oracle(datapath, policy)
        for source in ("10.7.7.5", "10.7.7.6", "11.7.7.9", "11.7.7.5", "198.51.100.200", "198.51.100.1"):
            oracle.check(tcp_ipv4_frame(source, VIP, 40000, 443))
        # The array alone decides for a held /24: a host bit set in the
        # array (never in the table) drops; cleared again, it passes.
        with host_bits.HostBitsArray(datapath.program.maps[host_bits.MAP_NAME]) as array:
            entry = int(entry_of(0xC63364))
            word = FIRST_HOST_WORD + (1 >> 6)
            array.store(entry, word, int(array.words[entry, word]) | 1 << 1)
            assert datapath.run(tcp_ipv4_frame("198.51.100.1", VIP, 40000, 443)) == XDP_DROP
            array.store(entry, word, int(array.words[entry, word]) & ~(1 << 1))
            assert datapath.run(tcp_ipv4_frame("198.51.100.1", VIP, 40000, 443)) == XDP_PASS


def test_without_following_the_table_the_kernel_disagrees_with_the_reference(monkeypatch):
    """(b) has teeth: an array left as the old version judges by it."""
    with PrivateDatapath(policy_from_document(document(1, ["198.51.100.0/25"]))) as datapath:
        monkeypatch.setattr(HostBitsUpdate, "apply", lambda self: None)
        datapath.apply(policy_from_document(document(2, ["198.51.100.128/25"])))
        assert datapath.run(tcp_ipv4_frame("198.51.100.1", VIP, 40000, 443)) == XDP_DROP
        assert host_bits_mismatches(datapath.program.maps)


# ==========================================================================
# (c) Under traffic, while versions flip

BOTH = {   # source: (version 0, version 1), both blocking it
    "198.51.100.77": ("198.51.100.64/26", "198.51.100.72/29"),   # held partial /24, hosts change
    "11.7.7.9": ("11.7.7.9/32", "11.7.7.8/31"),                   # shares 10.7.7.0/24's entry, then holds it
    "192.0.2.77": ("192.0.2.64/26", "192.0.2.0/24"),              # partial /24 -> whole /24
    "100.64.9.9": ("100.64.9.0/24", "100.64.9.8/30"),             # whole /24 -> partial /24
    "10.20.30.40": ("10.20.30.32/28", "10.20.0.0/16"),            # partial /24 -> whole /16
}
ONLY_OLD = ["10.7.7.5/32", "172.16.3.1/32"]     # 10.7.7.0/24 holds the shared entry in version 0 only
NEITHER = ["198.51.100.1", "10.7.7.6", "11.7.7.200", "100.64.10.1", "172.16.3.2"]
FILLER = 5000   # host routes in distinct /24s: enough to swap the v4 table whole


def flip_documents(swap: bool):
    fillers = [[f"{30 + v}.{i >> 8}.{i & 255}.1" for i in range(FILLER if swap else 40)] for v in (0, 1)]
    docs = []
    for v in (0, 1):
        sources = [p[v] for p in BOTH.values()] + (ONLY_OLD if v == 0 else []) + fillers[v]
        docs.append(document(v + 1, sources))
    return [policy_from_document(d) for d in docs]


def run_flips(swap: bool, flips: int):
    versions_ = flip_documents(swap)
    frames = [(tcp_ipv4_frame(s, VIP, 40000, 443), XDP_DROP) for s in BOTH]
    frames += [(tcp_ipv4_frame(s, VIP, 40000, 443), XDP_PASS) for s in NEITHER]
    with PrivateDatapath(versions_[0]) as datapath:
        fd = datapath.program.prog_fd
        for frame, expect in frames:
            assert test_run(fd, frame).retval == expect
        stop, wrong, runs = threading.Event(), [], [0]

        def traffic():
            while not stop.is_set():
                for frame, expect in frames:
                    if test_run(fd, frame).retval != expect:
                        wrong.append(frame)
                    runs[0] += 1

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            reports = []
            for i in range(flips):
                reports.append(datapath.apply(versions_[(i + 1) % 2]))
                assert host_bits_mismatches(datapath.program.maps) == []
        finally:
            stop.set()
            sender.join()
        held = held_24s(datapath.program.maps)
        return reports, wrong, runs[0], held


def test_no_source_gets_a_verdict_of_neither_version_while_the_table_is_swapped():
    reports, wrong, runs, held = run_flips(swap=True, flips=6)
    assert all("ew_gblock_v4" in r.swapped for r in reports), [r.summary() for r in reports]
    assert runs > 100, "too little traffic during the flips to mean anything"
    assert wrong == []
    assert 0xC63364 in held    # 198.51.100.0/24 is decided by the array


def test_no_source_gets_a_verdict_of_neither_version_while_the_table_changes_in_place():
    reports, wrong, runs, held = run_flips(swap=False, flips=20)
    assert all(not r.swapped for r in reports), [r.summary() for r in reports]
    assert runs > 100, "too little traffic during the flips to mean anything"
    assert wrong == []
    assert 0xC63364 in held


# ==========================================================================
# Adoption: maps pinned by an edgewarden without the array get one built
# from the pinned table.

def test_a_program_loaded_beside_pins_without_the_array_builds_it_from_the_table():
    from agent.datapath.apply import apply_policy_to_maps
    from agent.datapath.program import LoadedProgram
    pin_dir = Path("/sys/fs/bpf") / f"ew-test-hostbits-{uuid.uuid4().hex[:8]}"
    pin_dir.mkdir()
    policy = policy_from_document(document(1, ["198.51.100.128/25", "10.7.7.5/32", "11.7.7.9/32"]))
    try:
        with LoadedProgram(pin_dir=pin_dir) as first:
            first.commit_slot_maps()
            apply_policy_to_maps(first.maps, policy)
        (pin_dir / host_bits.MAP_NAME).unlink()       # as pinned before the array existed
        with LoadedProgram(pin_dir=pin_dir) as adopted:
            adopted.commit_slot_maps()
            assert held_24s(adopted.maps) == {0x0A0707, 0xC63364}
            assert host_bits_mismatches(adopted.maps) == []
            for source, expect in (("198.51.100.200", XDP_DROP), ("198.51.100.1", XDP_PASS),
                                   ("11.7.7.9", XDP_DROP), ("10.7.7.6", XDP_PASS)):
                assert test_run(adopted.prog_fd, tcp_ipv4_frame(source, VIP, 40000, 443)).retval == expect
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)

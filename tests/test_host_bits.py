"""The IPv4 host bits (agent/datapath/host_bits.py, ew_host_bits_v4 for the
global list, ew_thost_bits_v4 for the tenants' lists):

(a) the update protocol, on a stand-in array that logs every store: for any
    old and new global list, or tenants' lists (with (tenant, /24)s that
    share an entry), a reader that takes the tag, the tenant and hosts
    words and the tag again at any moments of the update (bpf/blocklist.h
    host_bits_v4) never lets a source both versions block through, never
    blocks a source neither blocks, and the array ends holding exactly the
    new table's level-24 nodes, one owner on every entry some owner wants;
    whole versions and in-place deltas alike. Teeth: the same check catches
    a tag written before its hosts, a reader that skips the second read of
    the tag, and one that ignores the tenant word;
(b) the kernel judges every source as the reference (agent/reference.py)
    does, across random versions applied one after the other;
(c) under traffic, while a policy flips between two versions that move
    sources between a held partial /24, a /24 that shares its entry, a /24
    blocked whole and no list, swapped whole or changed in place, no packet
    from a source both versions block passes and none from a source neither
    blocks is dropped;
and a program loaded beside pins without the arrays builds them.
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
from agent.datapath.blocktables import global_v4_entries, tenant_v4_entries, v4_block_nodes
from agent.datapath.host_bits import (ENTRY_WORDS, FIRST_HOST_WORD, TAG, TENANT_WORD, HostBitsUpdate, entry_of,
                                      held_owners, host_bits_mismatches, owner_key)
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

    def fill_free(self, entries, tenants, hosts):
        for entry, tenant, row in zip(entries, tenants, hosts):
            for i, value in enumerate(row):
                self.store(entry, FIRST_HOST_WORD + i, value)
            self.store(entry, TENANT_WORD, tenant)


# Scopes: None is the global table (u32 node keys, tenant 0 in the array);
# tenant ids key the tenant table. Tenants 1 and 1 + 34560 put (1, /24 X + 256)
# and (34561, /24 X) on one entry (34560 x EW_HOST_BITS_TENANT_SPREAD = 256
# mod 2^16), tenants 1 and 1 + 2^16 the same /24 on the same entry, so tenants
# contend for entries as /24s 2^16 apart do.
SHARING_TENANT = 1 + 34560
assert (SHARING_TENANT - 1) * abi.HOST_BITS_TENANT_SPREAD % abi.HOST_BITS_V4_ENTRIES == 256
TWIN_TENANT = 1 + abi.HOST_BITS_V4_ENTRIES     # the same /24 on the same entry as tenant 1


def node_table(lists: dict) -> EntryTable:
    """The v4 node table of {None: prefixes} (global) or {tenant id: prefixes}."""
    if None in lists:
        entries, key_size = global_v4_entries(v4_block_nodes(lists[None])), 4
    else:
        entries, key_size = {}, 8
        for tenant_id, networks in lists.items():
            entries |= tenant_v4_entries(tenant_id, v4_block_nodes(networks))
    return EntryTable.from_packed(b"".join(entries), b"".join(entries.values()), key_size, 72)


def entry_states(start: np.ndarray, log, entry: int) -> list[np.ndarray]:
    """The words of `entry` before the update and after each store to it."""
    states = [start[entry].copy()]
    for logged, word, value in log:
        if logged == entry:
            state = states[-1].copy()
            state[word] = np.uint64(value)
            states.append(state)
    return states


def reader_answers(states, tenant_id: int, address: int, reread: bool = True, tenant_checked: bool = True) -> set[int]:
    """Every answer host_bits_v4 can give for (`tenant_id`, `address`) when
    its reads fall on states i <= j <= k (tag; tenant and hosts; tag again)."""
    index24, answers = address >> 8, set()
    for i, first in enumerate(states):
        tag = int(first[TAG])
        if not tag & VALID or (tag >> 32) & 0xFFFFFF != index24:
            continue
        for j in range(i, len(states)):
            word = int(states[j][FIRST_HOST_WORD + ((address >> 6) & 3)])
            if tenant_checked and int(states[j][TENANT_WORD]) & 0xFFFFFFFF != tenant_id:
                continue
            for k in range(j, len(states)):
                if reread and int(states[k][TAG]) != tag:
                    continue
                answers.add((word >> (address & 63)) & 1)
    return answers


def check_update(old: dict, new: dict, probes, make_update, reread=True, tenant_checked=True) -> list[str]:
    """Sync the array to `old`, run the update to `new`, and check every
    reader of every (scope, address) probe against the two versions."""
    array = LoggedArray()
    HostBitsUpdate.for_table(array, node_table(old)).apply()
    start = array.words.copy()
    array.log.clear()
    make_update(array, node_table(old), node_table(new)).apply()
    problems = []
    for scope, address in probes:
        a, tenant_id = int(address), scope or 0
        in_old = any(address in n for n in old.get(scope, ()))
        in_new = any(address in n for n in new.get(scope, ()))
        states = entry_states(start, array.log, int(entry_of(owner_key(tenant_id, a >> 8))))
        answers = reader_answers(states, tenant_id, a, reread, tenant_checked)
        if in_old and in_new and 0 in answers:
            problems.append(f"{address} (scope {scope}), blocked by both versions, read as not blocked")
        if not in_old and not in_new and 1 in answers:
            problems.append(f"{address} (scope {scope}), blocked by neither version, read as blocked")
    problems += final_state_problems(array.words, new)
    return problems


def final_state_problems(words: np.ndarray, lists: dict) -> list[str]:
    """The array holds only the table's level-24 nodes, exactly, each on its entry."""
    owners, hosts = host_bits.level24_nodes(node_table(lists))
    nodes = {int(o): h for o, h in zip(owners, hosts)}
    problems = []
    for entry in np.nonzero(words[:, TAG] & np.uint64(VALID))[0]:
        held = int(owner_key(int(words[entry, TENANT_WORD]) & 0xFFFFFFFF, (int(words[entry, TAG]) >> 32) & 0xFFFFFF))
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
def versions(draw, scopes=(None,)):
    """(old, new, probes): {scope: compiled prefixes} twice, and (scope, address) probes."""
    old, new, probes = {}, {}, set()
    for scope in scopes:
        before = draw(st.lists(_prefix, max_size=8))
        after = [n for n in before if draw(st.booleans())] + draw(st.lists(_prefix, max_size=5))
        old[scope], new[scope] = compile_prefixes_reference(before), compile_prefixes_reference(after)
    # Each prefix's edges, in each region and the /16 next to it, for every scope.
    for n in compile_prefixes_reference([n for lists in (old, new) for ns in lists.values() for n in ns]):
        first = int(n.network_address)
        for value in (first, first + n.num_addresses - 1, first - 1, first + n.num_addresses):
            for shift in (0, 1 << 24, 2 << 24, 1 << 16, -(1 << 16)):
                for scope in scopes:
                    probes.add((scope, ipaddress.IPv4Address((value + shift) & 0xFFFFFFFF)))
    probes |= {(scope, ipaddress.IPv4Address(a)) for scope in scopes for a in draw(st.lists(_address, max_size=6))}
    return old, new, sorted(probes, key=lambda p: (p[0] or 0, p[1]))


TENANTS = (1, SHARING_TENANT, TWIN_TENANT)


@SETTINGS
@given(v=st.one_of(versions(), versions(TENANTS)))
def test_a_whole_version_never_lets_a_reader_see_a_torn_or_foreign_entry(v):
    old, new, probes = v
    assert check_update(old, new, probes, full_update) == []


@SETTINGS
@given(v=st.one_of(versions(), versions(TENANTS)))
def test_an_in_place_delta_never_lets_a_reader_see_a_torn_or_foreign_entry(v):
    old, new, probes = v
    assert check_update(old, new, probes, delta_update) == []


@SETTINGS
@given(v=st.one_of(versions(), versions(TENANTS)))
def test_every_wanted_entry_is_held_after_a_whole_version(v):
    _, new, _ = v
    array = LoggedArray()
    HostBitsUpdate.for_table(array, node_table(new)).apply()
    owners, _ = host_bits.level24_nodes(node_table(new))
    wanted = {int(entry_of(o)) for o in owners}
    held = set(np.nonzero(array.words[:, TAG] & np.uint64(VALID))[0].tolist())
    assert held == wanted


# X's entry goes to Y (same entry), X gone: the old hosts of X block 10.7.7.5,
# which neither version blocks in Y (11.7.7.5), and Y's hosts block 11.7.7.9,
# whose twin in X (10.7.7.9) neither version blocks.
TEETH_OLD = {None: [V4("10.7.7.5/32")]}
TEETH_NEW = {None: [V4("11.7.7.9/32")]}
TEETH_PROBES = [(None, ipaddress.IPv4Address(a)) for a in ("10.7.7.5", "10.7.7.9", "11.7.7.5", "11.7.7.9")]


def test_the_check_catches_a_tag_written_before_its_hosts(monkeypatch):
    assert check_update(TEETH_OLD, TEETH_NEW, TEETH_PROBES, full_update) == []

    hosts_only = LoggedArray.fill_free

    def tag_first(self, entries, tenants, hosts):
        for entry, tag in zip(getattr(self, "taken", ()), getattr(self, "taken_tags", ())):
            self.store(entry, TAG, tag)
        hosts_only(self, entries, tenants, hosts)
    monkeypatch.setattr(LoggedArray, "fill_free", tag_first, raising=True)
    assert any("neither" in p for p in check_update(TEETH_OLD, TEETH_NEW, TEETH_PROBES, _remember_taken))


def _remember_taken(array, old_table, new_table):
    update = HostBitsUpdate.for_table(array, new_table)
    array.taken, array.taken_tags = update.taken, update.taken_tags
    return update


def test_the_check_catches_a_reader_that_reads_the_tag_once():
    problems = check_update(TEETH_OLD, TEETH_NEW, TEETH_PROBES, full_update, reread=False)
    assert any("10.7.7.9" in p and "neither" in p for p in problems)


def test_the_check_catches_a_reader_that_ignores_the_tenant():
    """Tenants 1 and 65537 put the same /24 on the same entry: a reader
    that did not compare the tenant word would judge one tenant's source
    by the other's list."""
    old, new = {1: [V4("10.7.7.5/32")], TWIN_TENANT: []}, {1: [], TWIN_TENANT: [V4("10.7.7.9/32")]}
    probes = [(scope, ipaddress.IPv4Address(a)) for scope in (1, TWIN_TENANT) for a in ("10.7.7.5", "10.7.7.9")]
    assert check_update(old, new, probes, full_update) == []
    problems = check_update(old, new, probes, full_update, tenant_checked=False)
    assert any("10.7.7.9 (scope 1)" in p and "neither" in p for p in problems)


# ==========================================================================
# (b) The kernel against the reference, version after version

VIPS = {None: "203.0.113.1", 1: "203.0.113.1", SHARING_TENANT: "203.0.113.2", TWIN_TENANT: "203.0.113.3"}
VIP = VIPS[1]
SCOPES = (None, 1, SHARING_TENANT, TWIN_TENANT)


def document(revision, lists: dict):
    """The global list (scope None) and each tenant's (1, SHARING_TENANT, TWIN_TENANT)."""
    text = {scope: [str(n) for n in nets] for scope, nets in lists.items()}
    return {"revision": revision, "global": {"blocked_sources": text.get(None, [])},
            "tenants": [{"id": t, "name": f"t{t}", "vips": [VIPS[t]], "blocked_sources": text.get(t, [])}
                        for t in SCOPES if t is not None]}


def frame_for(scope, source: str) -> bytes:
    return tcp_ipv4_frame(source, VIPS[scope], 40000, 443)


@pytest.fixture(scope="module")
def shared_datapath():
    with PrivateDatapath() as datapath:
        yield datapath


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(versions(SCOPES), min_size=1, max_size=3))
def test_the_kernel_judges_every_source_as_the_reference_across_versions(shared_datapath, sequence):
    """One program for every example: each version replaces the one before,
    in place or swapped, from whatever the arrays hold."""
    datapath = shared_datapath
    for _, new, probes in sequence:
        policy = policy_from_document(document(read_revision(datapath.program.maps) + 1, new))
        datapath.apply(policy)
        for table in host_bits.MAPS:
            assert host_bits_mismatches(datapath.program.maps, table) == []
        oracle = Oracle(datapath, policy)
        for scope, address in probes[::max(1, len(probes) // 150)]:
            oracle.check(frame_for(scope, str(address)), counters=False)


def test_the_kernel_decides_from_the_arrays_and_falls_back_for_a_shared_entry():
    """10.7.7.0/24 holds the entry 11.7.7.0/24 also wants, tenant 1's
    100.70.1.0/24 the one its twin's wants: all are enforced, through the
    array or through the table, each tenant by its own list."""
    policy = policy_from_document(document(1, {
        None: ["10.7.7.5/32", "11.7.7.9/32", "198.51.100.128/25"],
        1: ["100.70.1.0/29"], TWIN_TENANT: ["100.70.1.9/32"]}))
    with PrivateDatapath(policy) as datapath:
        maps = datapath.program.maps
        assert held_owners(maps) == {0x0A0707, 0xC63364}
        assert held_owners(maps, host_bits.TENANT_TABLE) == {int(owner_key(1, 0x644601))}
        oracle = Oracle(datapath, policy)
        for scope, source in ((None, "10.7.7.5"), (None, "10.7.7.6"), (None, "11.7.7.9"), (None, "11.7.7.5"),
                              (None, "198.51.100.200"), (None, "198.51.100.1"), (1, "100.70.1.7"),
                              (1, "100.70.1.9"), (TWIN_TENANT, "100.70.1.9"), (TWIN_TENANT, "100.70.1.7")):
            oracle.check(frame_for(scope, source))
        # The array alone decides for a held /24: a host bit set in the
        # array (never in the table) drops; cleared again, it passes.
        for name, owner, source, scope in ((host_bits.MAP_NAME, 0xC63364, "198.51.100.1", None),
                                           (host_bits.TENANT_MAP_NAME, owner_key(1, 0x644601), "100.70.1.9", 1)):
            host = int(ipaddress.IPv4Address(source)) & 0xFF
            with host_bits.HostBitsArray(maps[name]) as array:
                entry, word = int(entry_of(owner)), FIRST_HOST_WORD + (host >> 6)
                array.store(entry, word, int(array.words[entry, word]) | 1 << (host & 63))
                assert datapath.run(frame_for(scope, source)) == XDP_DROP
                array.store(entry, word, int(array.words[entry, word]) & ~(1 << (host & 63)))
                assert datapath.run(frame_for(scope, source)) == XDP_PASS


def test_without_following_the_table_the_kernel_disagrees_with_the_reference(monkeypatch):
    """(b) has teeth: an array left as the old version judges by it."""
    with PrivateDatapath(policy_from_document(document(1, {None: ["198.51.100.0/25"], 1: ["100.70.1.0/25"]}))) \
            as datapath:
        monkeypatch.setattr(HostBitsUpdate, "apply", lambda self: None)
        datapath.apply(policy_from_document(document(2, {None: ["198.51.100.128/25"], 1: ["100.70.1.128/25"]})))
        assert datapath.run(frame_for(None, "198.51.100.1")) == XDP_DROP
        assert datapath.run(frame_for(1, "100.70.1.1")) == XDP_DROP
        assert host_bits_mismatches(datapath.program.maps)
        assert host_bits_mismatches(datapath.program.maps, host_bits.TENANT_TABLE)


# ==========================================================================
# (c) Under traffic, while versions flip

BOTH = {   # (scope, source): (version 0, version 1), both blocking it
    (None, "198.51.100.77"): ("198.51.100.64/26", "198.51.100.72/29"),   # held partial /24, hosts change
    (None, "11.7.7.9"): ("11.7.7.9/32", "11.7.7.8/31"),                   # shares 10.7.7.0/24's entry, then holds it
    (None, "192.0.2.77"): ("192.0.2.64/26", "192.0.2.0/24"),              # partial /24 -> whole /24
    (None, "100.64.9.9"): ("100.64.9.0/24", "100.64.9.8/30"),             # whole /24 -> partial /24
    (None, "10.20.30.40"): ("10.20.30.32/28", "10.20.0.0/16"),            # partial /24 -> whole /16
    (1, "100.70.1.7"): ("100.70.1.0/29", "100.70.1.4/30"),                # tenant 1 holds the /24, hosts change
    (TWIN_TENANT, "100.70.1.9"): ("100.70.1.9/32", "100.70.1.8/31"),      # the same entry: the table decides
    (1, "100.71.2.3"): ("100.71.2.0/24", "100.71.2.3/32"),                # whole /24 -> partial /24
}
ONLY_OLD = {None: ["10.7.7.5/32", "172.16.3.1/32"]}     # 10.7.7.0/24 holds the shared entry in version 0 only
NEITHER = [(None, "198.51.100.1"), (None, "10.7.7.6"), (None, "11.7.7.200"), (None, "100.64.10.1"),
           (None, "172.16.3.2"), (1, "100.70.1.9"), (TWIN_TENANT, "100.70.1.7"), (1, "100.71.3.1")]
FILLER = 5000   # host routes in distinct /24s: enough to swap the v4 tables whole


def flip_documents(swap: bool):
    count = FILLER if swap else 40
    docs = []
    for v in (0, 1):
        lists = {scope: [] for scope in SCOPES}
        for (scope, _), prefixes in BOTH.items():
            lists[scope].append(prefixes[v])
        if v == 0:
            for scope, prefixes in ONLY_OLD.items():
                lists[scope] += prefixes
        lists[None] += [f"{30 + v}.{i >> 8}.{i & 255}.1" for i in range(count)]
        lists[1] += [f"{40 + v}.{i >> 8}.{i & 255}.1" for i in range(count)]
        docs.append(document(v + 1, lists))
    return [policy_from_document(d) for d in docs]


def run_flips(swap: bool, flips: int):
    versions_ = flip_documents(swap)
    frames = [(frame_for(scope, source), XDP_DROP) for scope, source in BOTH]
    frames += [(frame_for(scope, source), XDP_PASS) for scope, source in NEITHER]
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
                for table in host_bits.MAPS:
                    assert host_bits_mismatches(datapath.program.maps, table) == []
        finally:
            stop.set()
            sender.join()
        held = held_owners(datapath.program.maps) | held_owners(datapath.program.maps, host_bits.TENANT_TABLE)
        return reports, wrong, runs[0], held


HELD = {0xC63364, int(owner_key(1, 0x644601))}     # 198.51.100.0/24; tenant 1's 100.70.1.0/24


def test_no_source_gets_a_verdict_of_neither_version_while_the_tables_are_swapped():
    reports, wrong, runs, held = run_flips(swap=True, flips=6)
    assert all({"ew_gblock_v4", "ew_tblock_v4"} <= set(r.swapped) for r in reports), [r.summary() for r in reports]
    assert runs > 100, "too little traffic during the flips to mean anything"
    assert wrong == []
    assert HELD <= held


def test_no_source_gets_a_verdict_of_neither_version_while_the_tables_change_in_place():
    reports, wrong, runs, held = run_flips(swap=False, flips=20)
    assert all(not r.swapped for r in reports), [r.summary() for r in reports]
    assert runs > 100, "too little traffic during the flips to mean anything"
    assert wrong == []
    assert HELD <= held


# ==========================================================================
# Adoption: maps pinned by an edgewarden without the array get one built
# from the pinned table.

def test_a_program_loaded_beside_pins_without_the_array_builds_it_from_the_table():
    from agent.datapath.apply import apply_policy_to_maps
    from agent.datapath.program import LoadedProgram
    pin_dir = Path("/sys/fs/bpf") / f"ew-test-hostbits-{uuid.uuid4().hex[:8]}"
    pin_dir.mkdir()
    policy = policy_from_document(document(1, {None: ["198.51.100.128/25", "10.7.7.5/32", "11.7.7.9/32"],
                                                1: ["100.70.1.0/29"]}))
    try:
        with LoadedProgram(pin_dir=pin_dir) as first:
            first.commit_slot_maps()
            apply_policy_to_maps(first.maps, policy)
        for name in host_bits.MAPS.values():
            (pin_dir / name).unlink()       # as pinned before the arrays existed
        with LoadedProgram(pin_dir=pin_dir) as adopted:
            adopted.commit_slot_maps()
            assert held_owners(adopted.maps) == {0x0A0707, 0xC63364}
            assert held_owners(adopted.maps, host_bits.TENANT_TABLE) == {int(owner_key(1, 0x644601))}
            for table in host_bits.MAPS:
                assert host_bits_mismatches(adopted.maps, table) == []
            for scope, source, expect in ((None, "198.51.100.200", XDP_DROP), (None, "198.51.100.1", XDP_PASS),
                                          (None, "11.7.7.9", XDP_DROP), (None, "10.7.7.6", XDP_PASS),
                                          (1, "100.70.1.7", XDP_DROP), (1, "100.70.1.9", XDP_PASS)):
                assert test_run(adopted.prog_fd, frame_for(scope, source)).retval == expect
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)

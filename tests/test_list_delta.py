"""Deltas to named block lists (agent.datapath.list_delta): the native set
algebra they use held to ipaddress; random deltas on top of base lists
leave the real program's tables exactly as a full rebuild of the same lists
would; overlapping lists of one scope keep what another still covers; the
kernel's verdicts follow the deltas; the list store's journal replays them."""

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent._prefixes import PrefixSet
from agent.blocklist import compile_prefixes_reference
from agent.datapath.apply import apply_policy_to_maps
from agent.datapath.blocktables import SwappableTable
from agent.datapath.compile import BLOCK_TABLES
from agent.datapath.errors import InterfaceError
from agent.datapath.host_bits import host_bits_mismatches
from agent.datapath.prefilter import prefilter_bits
from agent.datapath.list_delta import ListState, apply_delta_to_maps
from agent.datapath.named_lists import ListId, ListStore, scope_unions
from agent.datapath.private import PrivateDatapath
from agent.policy import policy_from_document
from frames import tcp_ipv4_frame, tcp_ipv6_frame

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
XDP_DROP, XDP_PASS = 1, 2

# ==========================================================================
# Pure-Python reference of the set algebra (ipaddress)


def ref_subtract(nets, removed):
    work = list(nets)
    for r in removed:
        kept = []
        for n in work:
            if n.version != r.version or not n.overlaps(r):
                kept.append(n)
            elif n.subnet_of(r):
                continue
            else:
                kept += list(n.address_exclude(r))
        work = kept
    return compile_prefixes_reference(work)


def ref_restrict(nets, regions):
    out = []
    for r in regions:
        for n in nets:
            if n.version == r.version and n.overlaps(r):
                out.append(r if r.subnet_of(n) else n)
    return compile_prefixes_reference(out)


def to_set(nets) -> PrefixSet:
    return PrefixSet.from_list([(n.network_address.packed, n.prefixlen) for n in nets])


def to_nets(s: PrefixSet):
    return [ipaddress.ip_network((int.from_bytes(a, "big"), n)) if len(a) == 4
            else ipaddress.IPv6Network((a, n)) for a, n in s.to_list()]


V4_ANCHORS = [int(ipaddress.IPv4Address(a)) for a in ("10.0.0.0", "10.1.0.0", "10.0.255.0", "198.51.100.0",
                                                      "172.16.0.0")]
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))

v4_nets = st.builds(lambda anchor, off, length: ipaddress.IPv4Network(((anchor + off) & ~((1 << (32 - length)) - 1)
                                                                     & 0xFFFFFFFF, length)),
                    st.sampled_from(V4_ANCHORS), st.integers(0, 1023), st.integers(12, 32))
v6_nets = st.builds(lambda hi, lo, length: ipaddress.IPv6Network(((V6_BASE | hi << 88 | lo)
                                                                 & ~((1 << (128 - length)) - 1), length)),
                    st.integers(0, 255), st.integers(0, 255), st.integers(32, 128))
nets = st.lists(st.one_of(v4_nets, v6_nets), max_size=25)


@SETTINGS
@given(nets, nets)
def test_subtract_union_and_restrict_match_ipaddress(a, b):
    sa, sb = to_set(a), to_set(b)
    assert to_nets(sa.subtract(sb)) == ref_subtract(a, b)
    assert to_nets(sa.union(sb)) == compile_prefixes_reference(a + b)
    assert to_nets(sa.restricted_to(sb)) == ref_restrict(compile_prefixes_reference(a), compile_prefixes_reference(b))
    for r in b[:5]:
        clipped = sa.overlapping(r.network_address.packed, r.prefixlen, clip=True)
        assert to_nets(clipped) == ref_restrict(compile_prefixes_reference(a), [r])
        entries = to_nets(sa.overlapping(r.network_address.packed, r.prefixlen))
        assert entries == [n for n in compile_prefixes_reference(a) if n.version == r.version and n.overlaps(r)]


@SETTINGS
@given(st.lists(v4_nets, min_size=200, max_size=400), st.lists(v4_nets, max_size=3))
def test_union_and_subtract_of_a_large_set_and_a_small_one(big, small):
    """The lopsided union (bulk copies between the small set's entries) and the run-skipping subtract."""
    sb, ss = to_set(big), to_set(small)
    assert to_nets(sb.union(ss)) == to_nets(ss.union(sb)) == compile_prefixes_reference(big + small)
    assert to_nets(sb.subtract(ss)) == ref_subtract(compile_prefixes_reference(big), small)
    assert to_nets(ss.subtract(sb)) == ref_subtract(small, compile_prefixes_reference(big))


# ==========================================================================
# Deltas on a real program: the tables equal a full rebuild

DOC = {"revision": 5, "global": {"blocked_sources": ["10.0.3.0/24", "2001:db8:0:0:1::/80"]},
       "tenants": [{"id": 1, "name": "t1", "vips": ["203.0.113.10", "2001:db8:10::10"],
                    "blocked_sources": ["10.1.0.7/32"]},
                   {"id": 2, "name": "t2", "vips": ["203.0.113.20"], "blocked_sources": []}]}
POLICY = policy_from_document(DOC)


@pytest.fixture(scope="module")
def datapaths():
    with PrivateDatapath(POLICY) as live, PrivateDatapath(POLICY) as rebuilt:
        yield live, rebuilt


def tables(datapath) -> dict:
    return {name: SwappableTable(datapath.program.maps[name]).entries() for name in BLOCK_TABLES}


def full_apply(datapath, lists: dict) -> None:
    apply_policy_to_maps(datapath.program.maps, POLICY, scope_unions(lists), conntrack=datapath.program.conntrack)


def reference_change(s: PrefixSet, added, removed) -> PrefixSet:
    return to_set(compile_prefixes_reference(ref_subtract(to_nets(s), removed) + added))


LIST_IDS = [ListId("a"), ListId("b"), ListId("a", 1), ListId("b", 1), ListId("c", 2)]
deltas = st.lists(st.tuples(st.sampled_from(LIST_IDS), nets, nets), min_size=1, max_size=4)


@SETTINGS
@given(base_a=nets, base_b=nets, steps=deltas)
def test_random_deltas_leave_the_tables_of_a_full_rebuild(datapaths, base_a, base_b, steps):
    live, rebuilt = datapaths
    lists = {ListId("a"): to_set(base_a), ListId("b"): to_set(base_b),
             ListId("a", 1): to_set(base_b), ListId("b", 1): to_set(base_a[:5])}
    full_apply(live, lists)
    state = ListState(POLICY, lists)
    for list_id, added, removed in steps:
        apply_delta_to_maps(live.program.maps, state, list_id, to_set(added), to_set(removed),
                            conntrack=live.program.conntrack)
        lists[list_id] = reference_change(lists.get(list_id, PrefixSet()), added, removed)
        assert state.list(list_id) == lists[list_id]
        full_apply(rebuilt, lists)
        assert tables(live) == tables(rebuilt)
        # the IPv4 prefilter: the global words exactly as a rebuild has them,
        # the tenant word a superset (a delta never clears other tenants' bits)
        live_bits, rebuilt_bits = prefilter_bits(live.program.maps), prefilter_bits(rebuilt.program.maps)
        assert (live_bits[:, :2] == rebuilt_bits[:, :2]).all()
        assert ((live_bits[:, 2] & rebuilt_bits[:, 2]) == rebuilt_bits[:, 2]).all()
        # the host bits hold only the live tables' level-24 nodes, exactly
        # (which /24 holds a shared entry may differ from a rebuild's choice)
        for table in ("ew_gblock_v4", "ew_tblock_v4"):
            assert host_bits_mismatches(live.program.maps, table) == []
        # the rest of the maps too (config flags, tenant flags)
        for name in ("ew_config", "ew_tenants"):
            assert live.program.maps[name].items() == rebuilt.program.maps[name].items()


def net(text):
    return ipaddress.ip_network(text)


def verdict(datapath, src: str, dst: str = "203.0.113.10") -> int:
    if ":" in src:
        return datapath.run(tcp_ipv6_frame(src, "2001:db8:10::10", 40000, 80))
    return datapath.run(tcp_ipv4_frame(src, dst, 40000, 80))


def test_overlapping_lists_keep_what_another_covers_and_the_kernel_follows():
    with PrivateDatapath(POLICY) as live:
        lists = {ListId("a"): to_set([net("192.0.2.0/24"), net("2001:db8:bad::/48")]),
                 ListId("b"): to_set([net("192.0.2.128/25")]),
                 ListId("a", 1): to_set([net("198.51.100.0/24")])}
        full_apply(live, lists)
        state = ListState(POLICY, lists)
        maps = live.program.maps
        assert verdict(live, "192.0.2.1") == verdict(live, "192.0.2.200") == XDP_DROP
        # Removing the /24 from list a: the half list b covers stays blocked.
        apply_delta_to_maps(maps, state, ListId("a"), PrefixSet(), to_set([net("192.0.2.0/24")]))
        assert verdict(live, "192.0.2.1") == XDP_PASS
        assert verdict(live, "192.0.2.200") == XDP_DROP
        # The policy's own blocked_sources are a source of the scope too.
        apply_delta_to_maps(maps, state, ListId("b"), PrefixSet(), to_set([net("10.0.3.0/24")]))
        assert verdict(live, "10.0.3.9") == XDP_DROP
        # IPv6, and a tenant list: added then removed.
        assert verdict(live, "2001:db8:bad::1") == XDP_DROP
        apply_delta_to_maps(maps, state, ListId("a"), to_set([net("2001:db8:bad:1::/64")]),
                            to_set([net("2001:db8:bad::/48")]))
        assert verdict(live, "2001:db8:bad::1") == XDP_PASS
        assert verdict(live, "2001:db8:bad:1::1") == XDP_DROP
        assert verdict(live, "100.64.9.9") == XDP_PASS
        apply_delta_to_maps(maps, state, ListId("a", 1), to_set([net("100.64.9.0/24")]), PrefixSet())
        assert verdict(live, "100.64.9.9") == XDP_DROP
        assert verdict(live, "100.64.9.9", dst="203.0.113.20") == XDP_PASS    # tenant 2: not its list
        apply_delta_to_maps(maps, state, ListId("a", 1), PrefixSet(), to_set([net("100.64.0.0/16")]))
        assert verdict(live, "100.64.9.9") == XDP_PASS
        # the end state is the full rebuild's
        with PrivateDatapath(POLICY) as rebuilt:
            full_apply(rebuilt, {list_id: state.list(list_id) for list_id in lists})
            assert tables(live) == tables(rebuilt)


def test_a_list_of_a_tenant_not_in_the_policy_is_refused():
    with PrivateDatapath(POLICY) as live:
        state = ListState(POLICY, {})
        with pytest.raises(InterfaceError, match="tenant 9 is not in the live policy"):
            apply_delta_to_maps(live.program.maps, state, ListId("a", 9), to_set([net("192.0.2.0/24")]),
                                PrefixSet())


def test_hooks_are_called_before_writes_and_after_deletes():
    calls = []

    class Hooks:
        def before_writes(self, maps, tenant_id, blocked):
            calls.append(("before", tenant_id, to_nets(blocked), verdict(live, "192.0.2.1")))

        def after_deletes(self, maps, tenant_id, unblocked, state):
            calls.append(("after", tenant_id, to_nets(unblocked), verdict(live, "198.51.100.1")))

    with PrivateDatapath(POLICY) as live:
        lists = {ListId("a"): to_set([net("198.51.100.0/24")])}
        full_apply(live, lists)
        state = ListState(POLICY, lists)
        apply_delta_to_maps(live.program.maps, state, ListId("a"), to_set([net("192.0.2.0/24")]),
                            to_set([net("198.51.100.0/24")]), Hooks())
    # before: not yet blocked; after: already unblocked
    assert calls == [("before", None, [net("192.0.2.0/24")], XDP_PASS),
                     ("after", None, [net("198.51.100.0/24")], XDP_PASS)]


# ==========================================================================
# The list store's journal


def test_the_journal_replays_deltas_onto_its_base_only(tmp_path):
    store = ListStore(tmp_path)
    lid = ListId("feed", 3)
    store.save(lid, to_set([net("192.0.2.0/24")]))
    store.append_delta(lid, to_set([net("198.51.100.0/24")]), to_set([net("192.0.2.0/25")]))
    store.append_delta(lid, to_set([net("2001:db8::/32")]), PrefixSet())
    expected = to_set([net("192.0.2.128/25"), net("198.51.100.0/24"), net("2001:db8::/32")])
    assert store.load_all() == {lid: expected}
    journal = tmp_path / "tenant-3" / "feed.journal"
    # A torn last record (a crash while appending) is ignored.
    with open(journal, "ab") as out:
        out.write(struct.pack("<II", 500, 10) + b"partial")
    assert store.load_all() == {lid: expected}
    # A journal written against another base is not replayed onto this one.
    data = journal.read_bytes()
    store.save(lid, to_set([net("203.0.113.0/24")]))
    assert not journal.exists()
    journal.write_bytes(data)
    assert store.load_all() == {lid: to_set([net("203.0.113.0/24")])}
    store.remove(lid)
    assert not journal.exists() and store.load_all() == {}


def test_blocked_anywhere_sees_every_scope():
    lists = {ListId("a"): to_set([net("192.0.2.0/25")]), ListId("a", 1): to_set([net("192.0.2.128/26")])}
    state = ListState(POLICY, lists)
    assert to_nets(state.blocked_anywhere(to_set([net("192.0.2.0/24"), net("10.0.0.0/8")]))) == \
        [net("10.0.3.0/24"), net("10.1.0.7/32"), net("192.0.2.0/25"), net("192.0.2.128/26")]

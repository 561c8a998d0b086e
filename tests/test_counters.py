"""The Cython counter aggregator against its plain-Python reference: totals,
rates on a monotonic clock, wrap and reset, tenants that appear and
disappear, top-N; and the live scanner over a real per-CPU array."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent._counters import CounterAggregator
from agent.datapath import abi
from agent.datapath.counters import AggregatorReference, CounterMonitor, new_aggregator
from agent.datapath.private import PrivateDatapath
from agent.policy import policy_from_document
from frames import icmp_ipv4_frame

FIELDS = 5
LAYOUT = dict(packet_fields=[0, 1], byte_fields=[2], drop_fields=[1])
U64 = 2**64 - 1

values = st.one_of(st.integers(0, 1000), st.integers(2**62 - 10, 2**62 + 10), st.integers(U64 - 1000, U64))


@st.composite
def scan_sequences(draw):
    ncpus = draw(st.integers(1, 4))
    tenant_pool = [0, 1, 2, 3, 70000]
    scans = []
    now = draw(st.integers(0, 10**12))
    for _ in range(draw(st.integers(1, 5))):
        tenants = draw(st.lists(st.sampled_from(tenant_pool), unique=True, max_size=5))
        rows = [draw(st.lists(values, min_size=FIELDS * ncpus, max_size=FIELDS * ncpus)) for _ in tenants]
        now += draw(st.integers(0, 3 * 10**9))       # includes a zero interval
        scans.append((tenants, rows, now))
    return ncpus, scans


def pack(rows):
    return struct.pack(f"={sum(len(r) for r in rows)}Q", *[v for r in rows for v in r])


@settings(max_examples=300, deadline=None)
@given(scan_sequences())
def test_native_aggregator_matches_reference(seq):
    ncpus, scans = seq
    native = CounterAggregator(FIELDS, **LAYOUT)
    reference = AggregatorReference(FIELDS, **LAYOUT)
    for tenants, rows, now in scans:
        raw = pack(rows)
        got = native.scan(raw, tenants, ncpus, now)
        totals, rates, seconds = reference.scan(raw, tenants, ncpus, now)
        for i in range(len(tenants)):
            got_totals, got_rates = got.row(i)
            assert got_totals == totals[i]
            assert got_rates == pytest.approx(rates[i], rel=1e-9)
        for by in ("packets", "bytes", "drops"):
            for use_rates in (True, False):
                assert [t for t, _ in got.top(3, by=by, use_rates=use_rates)] == \
                    [t for t, _ in reference.top(tenants, totals, rates, 3, by=by, use_rates=use_rates)]


def test_wrap_and_reset():
    agg = CounterAggregator(1, [0], [0], [0])
    agg.scan(struct.pack("=Q", U64 - 9), [5], 1, 0)
    wrapped = agg.scan(struct.pack("=Q", 10), [5], 1, 10**9)
    assert wrapped.row(0)[1] == [20.0]            # 10 to the top, 10 after
    agg.scan(struct.pack("=Q", 1000), [5], 1, 2 * 10**9)
    reset = agg.scan(struct.pack("=Q", 7), [5], 1, 3 * 10**9)
    assert reset.row(0)[1] == [7.0]               # slot zeroed: only what came since


def test_new_tenant_has_no_rate_and_vanished_tenant_is_forgotten():
    agg = CounterAggregator(1, [0], [0], [0])
    agg.scan(struct.pack("=Q", 100), [1], 1, 0)
    scan = agg.scan(struct.pack("=2Q", 150, 999), [1, 2], 1, 10**9)
    assert scan.row(0)[1] == [50.0] and scan.row(1)[1] == [0.0]
    scan = agg.scan(struct.pack("=Q", 5), [2], 1, 2 * 10**9)     # tenant 1 gone
    assert scan.row(0)[1] == [5.0]                                # 999 -> 5 is a reset: 5 counted
    scan = agg.scan(struct.pack("=2Q", 160, 10), [1, 2], 1, 3 * 10**9)
    assert scan.row(0)[1] == [0.0], "a tenant that disappeared starts again without a baseline"


def test_errors():
    with pytest.raises(ValueError, match="at most 64 fields"):
        CounterAggregator(65, [0], [0], [0])
    agg = CounterAggregator(2, [0], [1], [1])
    with pytest.raises(ValueError, match="too short"):
        agg.scan(b"\0" * 8, [1], 1, 0)
    with pytest.raises(ValueError, match="top by"):
        agg.scan(b"\0" * 16, [1], 1, 0).top(1, by="colour")


def test_monitor_over_live_counters_both_read_paths():
    """The slots in use read with one batched read of the array's first
    slots, or, when few of them are held, with a lookup per slot."""
    policy = policy_from_document({"revision": 1, "tenants": [
        {"id": 9, "name": "a", "vips": ["203.0.113.9"]}, {"id": 4, "name": "b", "vips": ["203.0.113.4"]}]})
    with PrivateDatapath(policy) as datapath:
        clock = iter(range(0, 100 * 10**9, 10**9))
        monitor = CounterMonitor(datapath.program.maps, clock=lambda: next(clock))
        monitor.sparse_ratio = 0        # force the per-slot lookups
        monitor.scan()
        for _ in range(5):
            datapath.run(icmp_ipv4_frame("192.0.2.1", "203.0.113.9"))
        datapath.run(icmp_ipv4_frame("192.0.2.1", "203.0.113.4"))
        few = monitor.scan()
        assert dict(few.top(2)) == {9: 5.0, 4: 1.0}
        assert monitor._few_tenants, "read slot by slot"
        # Same numbers through the batched read, of the slots in use only.
        batched = CounterMonitor(datapath.program.maps, clock=lambda: 0)
        scan = batched.scan()
        assert not batched._few_tenants and len(scan.tenant_ids) == 3 < datapath.program.maps["ew_counters"].max_entries
        assert {t: scan.row(i)[0][12] for i, t in enumerate(scan.tenant_ids) if t in (4, 9)} == {9: 5, 4: 1}


def test_new_aggregator_uses_the_abi_layout():
    native, reference = new_aggregator(), new_aggregator(reference=True)
    assert native.fields == reference.fields == 44
    assert len(native.drop_fields) == len(abi.DROP_REASONS) == sum(r.name.startswith("drop_") for r in abi.VerdictReason)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
                min_size=0, max_size=50))
def test_add_counts_adds_what_was_counted_between_two_reads(values):
    """add_counts (the late counts of a slot-map growth): total + after - before per u64, modulo 2**64."""
    from agent._counters import add_counts
    total = bytearray(struct.pack(f"={len(values)}Q", *(t for t, _, _ in values)))
    add_counts(total, struct.pack(f"={len(values)}Q", *(a for _, a, _ in values)),
               struct.pack(f"={len(values)}Q", *(b for _, _, b in values)))
    assert list(struct.unpack(f"={len(values)}Q", total)) == [(t + a - b) % 2**64 for t, a, b in values]


def test_add_counts_refuses_blocks_of_other_sizes():
    from agent._counters import add_counts
    with pytest.raises(ValueError, match="cannot be added"):
        add_counts(bytearray(16), b"\0" * 8, b"\0" * 16)

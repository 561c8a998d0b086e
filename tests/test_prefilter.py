"""The IPv4 source prefilter (agent/datapath/prefilter.py, ew_prefilter_v4):

(a) its bitmaps say exactly which /24s a list touches and which the global
    list blocks whole, for any set of lists (against a brute force over the
    prefixes, not against the node encoding it is derived from);
(b) in the kernel, it is what apply leaves behind, and a source the prefilter
    skips is judged as the reference judges it;
(c) under traffic, while a policy flips between two versions that move
    sources between "/24 blocked whole", "host in a partial /24", "tenant
    list" and "no list", no packet from a source both versions block passes
    (the prefilter is widened before the tables change and narrowed after).
"""

import ipaddress
import threading

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.datapath.abi import VerdictReason
from agent.datapath.compile import compile_policy
from agent.datapath.prefilter import (ENTRY_WORDS, GLOBAL_LISTED, GLOBAL_WHOLE, TENANT_LISTED, desired_entries,
                                      prefilter_bits)
from agent.datapath.private import PrivateDatapath
from agent.datapath.syscalls import test_run
from agent.policy import policy_from_document
from frames import tcp_ipv4_frame
from oracle import Oracle

XDP_DROP, XDP_PASS = 1, 2
V4 = ipaddress.IPv4Network


def expected_bits(global_prefixes, tenant_prefixes) -> dict[tuple[int, int], bool]:
    """(word, /24 index) -> bit, by brute force over the prefixes, for every
    /24 any prefix touches (all others must be clear)."""
    bits: dict[tuple[int, int], bool] = {}
    for word, prefixes in ((GLOBAL_LISTED, global_prefixes), (TENANT_LISTED, tenant_prefixes)):
        for net in prefixes:
            first = int(net.network_address) >> 8
            count = 1 << max(0, 24 - net.prefixlen)
            for index in range(first, first + count):
                bits[(word, index)] = True
                if word == GLOBAL_LISTED and net.prefixlen <= 24:
                    bits[(GLOBAL_WHOLE, index)] = True
    return bits


def bit(entries: np.ndarray, word: int, index24: int) -> bool:
    return bool((int(entries[index24 >> 6, word]) >> (index24 & 63)) & 1)


def set_bits(entries: np.ndarray) -> set[tuple[int, int]]:
    found = set()
    for entry, word in zip(*np.nonzero(entries)):
        value = int(entries[entry, word])
        found |= {(int(word), int(entry) * 64 + b) for b in range(64) if value >> b & 1}
    return found


# Prefixes inside 10.0.0.0/12 (room for /16-wide and host-sized ones alike).
_prefix = st.builds(lambda a, length: V4((0x0A000000 | a, length), strict=False),
                    st.integers(0, 2**20 - 1), st.integers(12, 32))


def document(revision, global_sources, tenants):
    return {"revision": revision, "global": {"blocked_sources": global_sources},
            "tenants": [{"id": t, "name": f"t{t}", "vips": [f"203.0.113.{t}"], "blocked_sources": s}
                        for t, s in tenants.items()]}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(global_prefixes=st.lists(_prefix, max_size=6), one=st.lists(_prefix, max_size=4),
       two=st.lists(_prefix, max_size=4))
def test_bitmaps_are_exactly_the_touched_and_whole_24s(global_prefixes, one, two):
    policy = policy_from_document(document(1, [str(n) for n in global_prefixes],
                                           {1: [str(n) for n in one], 2: [str(n) for n in two]}))
    compiled = compile_policy(policy)
    entries = desired_entries(np.zeros((1 << 18, ENTRY_WORDS), dtype=np.uint64), compiled.tables)
    expected = {key for key, value in expected_bits(global_prefixes, one + two).items() if value}
    assert set_bits(entries) == expected


def test_apply_leaves_the_bitmaps_of_the_policy_and_the_kernel_judges_by_them():
    doc = document(1, ["10.0.0.0/16", "192.0.2.0/24", "198.51.100.128/25"], {1: ["100.64.5.7/32"]})
    policy = policy_from_document(doc)
    with PrivateDatapath(policy) as datapath:
        live = prefilter_bits(datapath.program.maps)
        expected = {key for key, value in expected_bits(policy.blocked_sources,
                                                          policy.tenant(1).blocked_sources).items() if value}
        assert set_bits(live) == expected
        oracle = Oracle(datapath, policy)
        judged = {source: oracle.check(tcp_ipv4_frame(source, "203.0.113.1", 40000, 443)).reason
                  for source in ("10.0.77.1", "192.0.2.9", "198.51.100.200", "198.51.100.9", "100.64.5.7",
                                 "100.64.5.8", "203.0.113.200")}
        assert judged == {"10.0.77.1": VerdictReason.drop_global_block, "192.0.2.9": VerdictReason.drop_global_block,
                          "198.51.100.200": VerdictReason.drop_global_block,
                          "198.51.100.9": VerdictReason.pass_allowed,
                          "100.64.5.7": VerdictReason.drop_tenant_block, "100.64.5.8": VerdictReason.pass_allowed,
                          "203.0.113.200": VerdictReason.pass_allowed}
        # Removing the lists clears every bit.
        datapath.apply(policy_from_document(document(2, [], {1: []})))
        assert not prefilter_bits(datapath.program.maps).any()


# Sources blocked by both versions, each moving between the encodings.
IN_BOTH = {
    "192.0.2.77": ("192.0.2.0/24", "192.0.2.64/26"),          # whole /24 -> host bits in a partial /24
    "198.51.100.5": ("198.51.100.5/32", "198.51.100.0/23"),   # partial /24 -> whole /24s
    "10.20.30.40": ("10.20.0.0/16", "10.20.30.32/28"),        # whole /16 -> partial /24
}
TENANT_IN_BOTH = {"100.64.9.9": ("100.64.9.9/32", "100.64.8.0/22")}
FILLER = 5000   # host routes in distinct /24s: enough to swap the v4 tables whole


def flip_versions(swap: bool):
    fillers = [[f"{30 + v}.{i >> 8}.{i & 255}.1" for i in range(FILLER if swap else 40)] for v in (0, 1)]
    docs = [document(v + 1, [p[v] for p in IN_BOTH.values()] + fillers[v],
                     {1: [p[v] for p in TENANT_IN_BOTH.values()] + [f"100.{70 + v}.0.0/16"]}) for v in (0, 1)]
    return [policy_from_document(d) for d in docs]


def run_flips(swap: bool, flips: int):
    versions = flip_versions(swap)
    frames = [tcp_ipv4_frame(source, "203.0.113.1", 40000, 443) for source in (*IN_BOTH, *TENANT_IN_BOTH)]
    with PrivateDatapath(versions[0]) as datapath:
        fd = datapath.program.prog_fd
        for frame in frames:
            assert test_run(fd, frame).retval == XDP_DROP
        stop, passed, runs = threading.Event(), [], [0]

        def traffic():
            while not stop.is_set():
                for frame in frames:
                    if test_run(fd, frame).retval != XDP_DROP:
                        passed.append(frame)
                    runs[0] += 1

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            reports = [datapath.apply(versions[(i + 1) % 2]) for i in range(flips)]
        finally:
            stop.set()
            sender.join()
        return reports, passed, runs[0]


def test_no_source_blocked_by_both_versions_passes_while_tables_are_swapped():
    reports, passed, runs = run_flips(swap=True, flips=6)
    assert all("ew_gblock_v4" in r.swapped for r in reports), [r.summary() for r in reports]
    assert runs > 100, "too little traffic during the flips to mean anything"
    assert passed == []


def test_no_source_blocked_by_both_versions_passes_while_tables_change_in_place():
    reports, passed, runs = run_flips(swap=False, flips=20)
    assert all(not r.swapped for r in reports), [r.summary() for r in reports]
    assert runs > 100, "too little traffic during the flips to mean anything"
    assert passed == []


def test_the_flip_test_catches_a_prefilter_narrowed_too_early(monkeypatch):
    """The check above has teeth: without widening first, the new version's
    bitmaps go in before its tables and sources blocked by both pass."""
    from agent.datapath import prefilter
    monkeypatch.setattr(prefilter.PrefilterUpdate, "widen", lambda self: None)
    _, passed, _ = run_flips(swap=False, flips=20)
    assert passed

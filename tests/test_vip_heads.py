"""The IPv4 VIP heads (ew_vip_heads_v4, agent/datapath/vip_heads.py): the
kernel judges every destination as the reference does whether its VIP is in
its bucket, overflowed to ew_vips_v4 or no VIP at all, and while VIPs move
between tenants, appear and vanish under traffic no packet of a VIP held by
both versions is taken for "no VIP" or judged by a mix of two heads."""

from __future__ import annotations

import ipaddress
import threading
import time

import numpy as np

from agent.datapath import vip_heads
from agent.datapath.abi import VerdictReason
from agent.datapath.private import PrivateDatapath
from agent.datapath.syscalls import test_run
from agent.policy import policy_from_document
from frames import tcp_ipv4_frame
from oracle import Oracle

XDP_DROP, XDP_PASS = 1, 2


def same_bucket_addresses(count: int, start: str = "10.0.0.1") -> list[str]:
    """`count` addresses whose heads share one bucket (BPF_PROG_TEST_RUN
    sends nothing, so they need not be documentation addresses)."""
    first = ipaddress.IPv4Address(start)
    home = vip_heads.bucket_of(first.packed)
    found, candidate = [], int(first)
    while len(found) < count:
        address = ipaddress.IPv4Address(candidate)
        if vip_heads.bucket_of(address.packed) == home:
            found.append(str(address))
        candidate += 1
    return found


def document(revision, tenants):
    return {"revision": revision, "global": {"blocked_sources": ["198.51.100.128/25", "100.64.0.0/10"]},
            "tenants": tenants}


def test_vips_in_their_bucket_overflowed_or_absent_are_judged_as_the_reference_judges():
    crowded = same_bucket_addresses(12)     # 11 VIPs for 8 ways, and one address of that bucket that is no VIP
    tenants = [
        {"id": 1, "name": "plain", "vips": crowded[:6] + ["203.0.113.10"], "flood": {}},
        {"id": 2, "name": "ports", "vips": crowded[6:11], "blocked_ports": ["tcp/25"],
         "blocked_sources": ["192.0.2.64/26"]},
        {"id": 3, "name": "suspended", "vips": ["203.0.113.30"], "state": "suspended"},
    ]
    policy = policy_from_document(document(1, tenants))
    with PrivateDatapath(policy) as datapath:
        heads = vip_heads.live_heads(datapath.program.maps)
        crowded_bucket = heads[vip_heads.bucket_of(ipaddress.IPv4Address(crowded[0]).packed)]
        assert len(crowded_bucket) == vip_heads.WAYS and vip_heads.OVERFLOW_WAY in crowded_bucket
        oracle = Oracle(datapath, policy)
        reasons = set()
        for destination in [*crowded, "203.0.113.10", "203.0.113.30", "203.0.113.99"]:
            for source in ("198.51.100.200", "100.64.1.1", "192.0.2.70", "203.0.113.250"):
                for port in (443, 25):
                    reasons.add(oracle.check(tcp_ipv4_frame(source, destination, 40000, port, "S")).reason)
        # Every way a verdict can be reached by a head or by the map was seen.
        assert {VerdictReason.drop_global_block, VerdictReason.drop_tenant_block, VerdictReason.drop_port_block,
                VerdictReason.drop_tenant_suspended, VerdictReason.pass_allowed} <= reasons

        # Fewer VIPs than ways: the overflow mark goes, and every VIP has its way.
        fewer = [{**tenants[0], "vips": crowded[:3]}, {**tenants[1], "vips": crowded[3:5]}, tenants[2]]
        smaller = policy_from_document(document(2, fewer))
        datapath.apply(smaller)
        crowded_bucket = vip_heads.live_heads(datapath.program.maps)[
            vip_heads.bucket_of(ipaddress.IPv4Address(crowded[0]).packed)]
        assert len(crowded_bucket) == 5 and vip_heads.OVERFLOW_WAY not in crowded_bucket
        oracle = Oracle(datapath, smaller)
        for destination in crowded:
            oracle.check(tcp_ipv4_frame("203.0.113.250", destination, 40000, 443, "S"))

        # No VIPs: no heads.
        datapath.apply(policy_from_document(document(3, [])))
        assert vip_heads.live_heads(datapath.program.maps) == {}


def flip_versions():
    """Two versions; every VIP in `held` is held by both, by a suspended
    tenant in each (so its every packet drops: one taken for "no VIP"
    passes), with its head moving between tenants, slots and ways, VIPs of
    one version only crowding its bucket in and out of overflow."""
    crowded = same_bucket_addresses(14, "10.9.0.1")
    held = crowded[:4]
    versions = []
    for v in (0, 1):
        extra = crowded[4:14] if v == 0 else crowded[4:6]
        tenants = [
            {"id": 1, "name": "one", "state": "suspended", "vips": held[:2] if v == 0 else held[2:]},
            {"id": 2, "name": "two", "state": "suspended", "vips": held[2:] if v == 0 else held[:2],
             "blocked_ports": ["tcp/25"] if v else []},
            {"id": 3 + v, "name": f"extra{v}", "vips": extra},
        ]
        versions.append(policy_from_document(document(v + 1, tenants)))
    return held, versions


def flip_under_traffic(versions, frames, flips: int) -> tuple[list, int]:
    """`frames` (each dropped by both versions) test-run in a loop while the
    datapath flips between the two `versions`: the frames that passed, and
    how many runs there were."""
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
            for i in range(flips):
                datapath.apply(versions[(i + 1) % 2])
        finally:
            stop.set()
            sender.join()
        return passed, runs[0]


def run_flips(flips: int):
    held, versions = flip_versions()
    return flip_under_traffic(versions, [tcp_ipv4_frame("203.0.113.250", d, 40000, 443, "S") for d in held], flips)


def test_no_vip_held_by_both_versions_is_taken_for_no_vip_while_heads_change():
    passed, runs = run_flips(flips=16)
    assert runs > 100, "too little traffic during the flips to mean anything"
    assert passed == []


def test_the_flip_test_catches_heads_cleared_before_they_are_written(monkeypatch):
    """The check above has teeth: a sync that empties a bucket before
    writing it back leaves VIPs of both versions unfound for a moment."""
    original = vip_heads.VipHeads._sync_bucket

    def clear_first(self, bucket, want):
        for way in range(vip_heads.WAYS):
            self._store(bucket, way, 0)
        # The moment a careless writer takes between its stores (a sleep lets
        # the traffic thread, and the GIL, run inside it).
        time.sleep(0.005)
        original(self, bucket, want)

    monkeypatch.setattr(vip_heads.VipHeads, "_sync_bucket", clear_first)
    passed, _ = run_flips(flips=16)
    assert passed


def test_a_head_and_its_slot_entry_judge_a_tenant_with_ports_and_lists_without_its_vip_value():
    """A tenant with port ranges, a source list and sampling is judged from
    its head and its slot's ew_slot_tenants entry alone (the VIP value gone
    from ew_vips_v4 changes nothing); an entry that is being written, or
    that names another head, sends the packet to ew_vips_v4."""
    vip = "203.0.113.10"
    tenants = [{"id": 7, "name": "shop", "vips": [vip], "blocked_ports": ["tcp/25", "udp/1900"],
                "blocked_sources": ["192.0.2.64/26"]}]
    policy = policy_from_document(document(1, tenants))
    frames = {
        "pass": tcp_ipv4_frame("203.0.113.250", vip, 40000, 443, "S"),
        "port": tcp_ipv4_frame("203.0.113.250", vip, 40000, 25, "S"),
        "listed": tcp_ipv4_frame("192.0.2.70", vip, 40000, 443, "S"),
        "near": tcp_ipv4_frame("192.0.2.10", vip, 40000, 443, "S"),
    }
    with PrivateDatapath(policy) as datapath:
        maps = datapath.program.maps
        oracle = Oracle(datapath, policy)
        expected = {name: oracle.check(frame).reason for name, frame in frames.items()}
        assert expected == {"pass": VerdictReason.pass_allowed, "port": VerdictReason.drop_port_block,
                            "listed": VerdictReason.drop_tenant_block, "near": VerdictReason.pass_allowed}
        slot = next(iter(vip_heads.live_slot_tenants(maps)))
        assert vip_heads.live_slot_tenants(maps)[slot][1] == 7

        key = ipaddress.IPv4Address(vip).packed
        value = maps["ew_vips_v4"].lookup(key)
        maps["ew_vips_v4"].delete(key)
        for name, frame in frames.items():
            assert datapath.run(frame) == oracle.check(frame, counters=False).action, name

        # An entry mid-write (odd stamp): the packet asks ew_vips_v4, which
        # has no VIP now, so it is nobody's and passes.
        with vip_heads.SlotTenants(maps[vip_heads.SLOT_TENANTS_MAP]) as entries:
            stamp = int(entries.words[slot, 0])
            entries.words[slot, 0] = stamp | 1 << 32
        assert datapath.run(frames["port"]) == XDP_PASS
        # The map has it again: judged from the value.
        maps["ew_vips_v4"].update(key, value)
        assert datapath.run(frames["port"]) == XDP_DROP
        # The next sync writes the entry again under an even stamp.
        vip_heads.sync_vip_heads(maps)
        after = vip_heads.live_slot_tenants(maps)[slot][0]
        assert after >> 32 & 1 == 0 and after >> 32 > stamp >> 32
        maps["ew_vips_v4"].delete(key)
        assert datapath.run(frames["port"]) == XDP_DROP


def port_flip_versions():
    """Two versions of one tenant that both block tcp/25, in different
    places of its ranges (first in one, second in the other): a packet that
    read half of each version's ranges could miss it."""
    vips = ["203.0.113.10", "203.0.113.11"]
    ports = (["tcp/25"], ["tcp/10-20", "tcp/25", "udp/53"])
    return vips, [policy_from_document(document(v + 1, [{"id": 1, "name": "shop", "vips": vips,
                                                          "blocked_ports": ports[v]}])) for v in (0, 1)]


def run_port_flips(flips: int):
    vips, versions = port_flip_versions()
    return flip_under_traffic(versions, [tcp_ipv4_frame("203.0.113.250", vip, 40000, 25, "S") for vip in vips], flips)


def test_no_packet_reads_half_of_two_versions_of_a_tenants_port_ranges():
    passed, runs = run_port_flips(flips=16)
    assert runs > 100, "too little traffic during the flips to mean anything"
    assert passed == []


def test_the_port_flip_test_catches_an_entry_written_without_its_stamps(monkeypatch):
    """The check above has teeth: a writer that leaves the stamp even while
    it rewrites the ranges lets packets read half of each version."""
    def careless(self, slot, head, body):
        for word, value in enumerate(np.frombuffer(body, dtype=np.uint64).tolist(), start=1):
            self._store(slot, word, value)
            time.sleep(0.002)   # the moment between two stores, widened (and the GIL let go)
        self._store(slot, 0, (int(self.words[slot, 0]) >> 32) + 2 << 32 | head)

    monkeypatch.setattr(vip_heads.SlotTenants, "write", careless)
    passed, _ = run_port_flips(flips=16)
    assert passed

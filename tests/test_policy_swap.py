"""The policy arrays (ew_flood_policies, ew_config) change atomically for the
packet path: two policy versions whose flood policies differ in every field,
and whose ew_config values differ, are flipped while frames run through the
real program (BPF_PROG_TEST_RUN, repeat > 1) on another thread. Under either
version alone every frame is dropped, each kind with one reason (the
reference model says which); a packet judged by fields of both versions
would get another reason, most often a pass (version B's per-source limit
with version A's packet limit lets everything through). So every reason the
counters saw must be version A's or version B's for that kind of frame, and
every ew_config value read meanwhile must be one version's whole."""

import os
import shutil
import threading
from pathlib import Path

import pytest

from agent._libbpf import ffi, lib
from agent.datapath import abi
from agent.datapath.abi import VerdictReason
from agent.datapath.compile import compile_policy, pack_u32
from agent.datapath.errors import InterfaceError
from agent.datapath.policy_arrays import OUTER_LAYOUT, PolicyArray
from agent.datapath.private import PrivateDatapath
from agent.datapath.program import LoadedProgram
from agent.datapath.syscalls import BpfMap, create_map, obj_pin, test_run
from agent.policy import policy_from_document
from agent.reference import ReferenceBuckets, judge
from frames import ipv4_fragment_frame, tcp_ipv4_frame, udp_ipv4_frame, udp_ipv6_frame
from oracle import Oracle, counters_snapshot, delta

CLIENT, CLIENT_V6, LISTED_V6 = "198.51.100.9", "2001:db8:77::9", "2001:db8:bad::7"
# A test run with repeat > 1 yields the CPU when others wait for it (a
# scheduler slice on a loaded machine), and a swap waits for running programs
# (an RCU grace period): both take milliseconds, so the flips are counted.
FULL_FLIPS, ARRAY_FLIPS = 6, 300
TENANT_CAPACITY = 64    # small arrays: a swap of the flood policies copies all of them
REPEAT = 64             # runs per BPF_PROG_TEST_RUN call

# One tenant (and VIP) per kind of frame, so its counters say how that kind was judged.
KINDS = {
    "udp_from_53": lambda vip: udp_ipv4_frame(CLIENT, vip, 53, 40000, b"x" * 40),
    "udp_from_123": lambda vip: udp_ipv4_frame(CLIENT, vip, 123, 40000, b"x" * 40),
    "udp": lambda vip: udp_ipv4_frame(CLIENT, vip, 40001, 443, b"x" * 40),
    "nonfirst_fragment": lambda vip: ipv4_fragment_frame(CLIENT, vip, 17, b"y" * 48, frag_offset=185),
    "syn": lambda vip: tcp_ipv4_frame(CLIENT, vip, 40002, 443, "S"),
    "ack": lambda vip: tcp_ipv4_frame(CLIENT, vip, 40003, 443, "A"),
    "syn_ack": lambda vip: tcp_ipv4_frame(CLIENT, vip, 443, 40004, "SA"),
    "udp_v6": lambda vip: udp_ipv6_frame(CLIENT_V6, vip, 40005, 443, b"x" * 40),
    "udp_v6_listed": lambda vip: udp_ipv6_frame(LISTED_V6, vip, 40006, 443, b"x" * 40),
}
TENANTS = {kind: i + 1 for i, kind in enumerate(KINDS)}


def vip_of(kind: str) -> str:
    tenant = TENANTS[kind]
    return f"2001:db8:10::{tenant:x}" if kind.startswith("udp_v6") else f"203.0.113.{tenant}"


# Limits that never bind here: bursts no test drains.
OPEN, OPEN_B = (10**9, 10**10), (5 * 10**8, 5 * 10**9)
# A: amplification dropped (123 allowed), fragments dropped, SYN cookies,
# SYN-ACKs dropped; a byte burst smaller than any frame, so every frame that
# reaches the limits is dropped by them; sources open.
FLOOD_A = {"amplification": "drop", "allow_amplification_ports": [123], "fragments": "drop",
           "syn_cookies": True, "syn_ack": "drop",
           "packets_per_second": OPEN[0], "packet_burst": OPEN[1], "bits_per_second": 80, "bit_burst": 8,
           "syns_per_second": OPEN[0], "syn_burst": OPEN[1],
           "fragments_per_second": OPEN[0], "fragment_burst": OPEN[1],
           "source_packets_per_second": OPEN[0], "source_packet_burst": OPEN[1],
           "source_prefix_v4": 24, "source_prefix_v6": 64}
# B: every field otherwise; tenant-wide limits open, each source capped at
# one packet for good (rate 0; per-source buckets are kept per policy
# generation, so the cap, once spent, stays spent across the flips).
FLOOD_B = {"amplification": "pass", "allow_amplification_ports": [53], "fragments": "limit",
           "syn_cookies": False, "syn_ack": "pass",
           "packets_per_second": OPEN_B[0], "packet_burst": OPEN_B[1],
           "bits_per_second": 8 * OPEN_B[0], "bit_burst": 8 * OPEN_B[1],
           "syns_per_second": OPEN_B[0], "syn_burst": OPEN_B[1],
           "fragments_per_second": OPEN_B[0] // 2, "fragment_burst": OPEN_B[1] // 2,
           "source_packets_per_second": 0, "source_packet_burst": 1,
           "source_prefix_v4": 16, "source_prefix_v6": 48}


def document(revision: int, flood: dict, global_sources: list[str]) -> dict:
    return {"revision": revision, "global": {"blocked_sources": global_sources},
            "tenants": [{"id": TENANTS[kind], "name": kind.replace("_", "-"), "vips": [vip_of(kind)],
                         "flood": flood} for kind in KINDS]}


# ew_config differs too: the revision, and the flags (only A has a global IPv4
# list; both block LISTED_V6, so its frames drop the same under either).
A_DOC = document(1, FLOOD_A, ["192.0.2.0/25", "2001:db8:bad::/48"])
B_DOC = document(2, FLOOD_B, ["2001:db8:bad::/48"])


def frames():
    return {kind: build(vip_of(kind)) for kind, build in KINDS.items()}


def reference_reasons(policy) -> dict[str, set[VerdictReason]]:
    """kind -> the reason version `policy` alone gives its frames once each
    source's one-packet cap is spent (the second frame and every one after)."""
    buckets = ReferenceBuckets()
    buckets.apply(policy)
    return {kind: set([judge(policy, frame, buckets, 1 + i).reason for i in range(4)][1:])
            for kind, frame in frames().items()}


FLOOD_FIELDS = ("flags", "amplification_allowed", "source_prefix_v4", "source_prefix_v6", "generation")


def flood_fields(value: bytes) -> dict[str, int]:
    flood = ffi.from_buffer("struct ew_flood_policy *", value)
    fields = {name: getattr(flood, name) for name in FLOOD_FIELDS}
    for i in range(abi.BUCKET_KINDS):
        fields[f"limits[{i}].rate"], fields[f"limits[{i}].burst"] = flood.limits[i].rate, flood.limits[i].burst
    fields["per_source.rate"], fields["per_source.burst"] = flood.per_source.rate, flood.per_source.burst
    return fields


def test_the_two_versions_differ_in_every_field_and_every_verdict():
    a, b = compile_policy(policy_from_document(A_DOC)), compile_policy(policy_from_document(B_DOC))
    assert a.slots == b.slots
    for slot in a.slots.values():
        fa, fb = (flood_fields(c.maps["ew_flood_policies"][pack_u32(slot)]) for c in (a, b))
        assert [name for name in fa if fa[name] == fb[name]] == [], slot
    ca, cb = (ffi.from_buffer("struct ew_config *", c.maps["ew_config"][pack_u32(0)]) for c in (a, b))
    assert ca.policy_revision != cb.policy_revision and ca.flags != cb.flags
    ra, rb = reference_reasons(policy_from_document(A_DOC)), reference_reasons(policy_from_document(B_DOC))
    for kind in KINDS:
        assert len(ra[kind]) == len(rb[kind]) == 1, (kind, ra[kind], rb[kind])
        assert not (ra[kind] | rb[kind]) & {VerdictReason.pass_allowed, VerdictReason.answer_syn_cookie}, kind
    # The frames the lists do not decide differ by version: a frame judged by
    # the other version's policy would show.
    assert [k for k in KINDS if ra[k] == rb[k]] == ["udp_v6_listed"]


def reasons_by_kind(moved: dict[int, dict]) -> dict[str, dict[str, int]]:
    by_tenant = {tenant: kind for kind, tenant in TENANTS.items()}
    assert set(moved) <= set(by_tenant), moved
    return {by_tenant[t]: {r: n for r, n in fields["reason_packets"].items() if n} for t, fields in moved.items()}


def config_reader(outer: BpfMap) -> PolicyArray:
    """ew_config as another process reads it: its own fd, no pin (so by id)."""
    return PolicyArray(BpfMap(os.dup(outer.fd), outer.name, *OUTER_LAYOUT))


def test_policy_flipped_under_traffic_is_never_mixed():
    """Flipped by the agent's whole apply (FULL_FLIPS, each a compile and a
    diff, so slow), and by writing the two policy arrays alone the way that
    apply writes them (ARRAY_FLIPS, fast: more chances to catch a tear)."""
    a, b = policy_from_document(A_DOC), policy_from_document(B_DOC)
    ra, rb = reference_reasons(a), reference_reasons(b)
    allowed = {kind: {r.name for r in ra[kind] | rb[kind]} for kind in KINDS}
    batch = list(frames().values())
    compiled = [compile_policy(p) for p in (a, b)]
    configs = {c.maps["ew_config"][pack_u32(0)] for c in compiled}
    with PrivateDatapath(a, tenant_capacity=TENANT_CAPACITY) as datapath:
        maps = datapath.program.maps
        # Each version alone: the kernel agrees with the reference, frame by
        # frame, and B's per-source caps are spent (by the first frames).
        for policy, reasons in ((b, rb), (a, ra)):
            datapath.apply(policy)
            oracle = Oracle(datapath, policy, ReferenceBuckets())
            oracle.buckets.apply(policy)
            for kind, frame in frames().items():
                assert [oracle.check(frame).reason for _ in range(3)][1:] == [*reasons[kind]] * 2, kind

        rounds, failures, config_values = [0], [], set()
        stop, round_done = threading.Event(), threading.Condition()

        def traffic():
            try:
                with config_reader(maps["ew_config"].outer) as config:
                    while not stop.is_set():
                        for frame in batch:
                            test_run(datapath.program.prog_fd, frame, REPEAT)
                        config_values.add(config.lookup(pack_u32(0)))
                        with round_done:
                            rounds[0] += 1
                            round_done.notify_all()
            except BaseException as err:   # noqa: BLE001 (reported by the test thread)
                failures.append(err)
                with round_done:
                    round_done.notify_all()

        def after_a_round():
            # Every version is live for a round of traffic at least (the next
            # flip overlaps the round after): both are seen, whatever the load.
            seen = rounds[0]
            with round_done:
                assert round_done.wait_for(lambda: rounds[0] > seen or failures, 60), "no traffic for 60 s"

        before = counters_snapshot(datapath)
        threads = [threading.Thread(target=traffic)]
        for thread in threads:
            thread.start()
        try:
            for i in range(FULL_FLIPS):
                report = datapath.apply(b if i % 2 == 0 else a)
                assert report.changed["ew_flood_policies"] == len(KINDS) and report.changed["ew_config"] == 1
                after_a_round()
            for i in range(ARRAY_FLIPS):     # as fast as they go, under the traffic
                version = compiled[i % 2]     # A's block tables stay: no frame here comes from them
                for name in ("ew_flood_policies", "ew_config"):
                    maps[name].update_many(version.maps[name])
            after_a_round()
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not failures, failures
        moved = reasons_by_kind(delta(before, counters_snapshot(datapath)))

    mixed = {kind: {r: n for r, n in reasons.items() if r not in allowed[kind]} for kind, reasons in moved.items()}
    assert not any(mixed.values()), f"frames judged by a mix of the versions: {mixed}"
    # Both versions judged traffic of every kind while they flipped.
    for kind in KINDS:
        assert set(moved[kind]) == allowed[kind], (kind, moved[kind])
        assert sum(moved[kind].values()) >= FULL_FLIPS * REPEAT, (kind, moved[kind])
    # ew_config, read all along: one version's whole value every time.
    assert config_values and config_values <= configs, config_values - configs


def test_a_policy_array_holds_its_entries_across_swaps():
    """The agent's view of a policy array: each write is a swap of a fresh inner
    array holding the live entries and the change, in the kernel."""
    with PrivateDatapath(policy_from_document(A_DOC)) as datapath:
        floods = datapath.program.maps["ew_flood_policies"]
        assert isinstance(floods, PolicyArray) and floods.max_entries == datapath.program.maps["ew_tenants"].max_entries
        first_inner = floods.outer.lookup(pack_u32(0))
        live = {k: v for k, v in floods.items().items() if any(v)}
        assert set(live) == {pack_u32(s) for s in TENANTS.values()}
        changed = bytes(range(1, floods.value_size + 1))
        floods.update(pack_u32(3), changed)
        assert floods.outer.lookup(pack_u32(0)) != first_inner      # another inner map in the slot
        assert {k: v for k, v in floods.items().items() if any(v)} == live | {pack_u32(3): changed}


def test_pins_of_an_edgewarden_that_wrote_in_place_are_refused_with_what_to_do():
    pin_dir = Path("/sys/fs/bpf") / f"ew-test-torn-{os.getpid()}"
    pin_dir.mkdir()
    try:
        with create_map(lib.BPF_MAP_TYPE_ARRAY, "ew_config", "__u32", "struct ew_config", 1, 0) as old:
            obj_pin(old.fd, str(pin_dir / "ew_config"))
        with pytest.raises(InterfaceError, match="older edgewarden.*detach and attach again"):
            LoadedProgram(pin_dir)
        assert sorted(p.name for p in pin_dir.iterdir()) == ["ew_config"]     # nothing else was pinned
    finally:
        shutil.rmtree(pin_dir)

"""The DPDK engine held to the same oracle as the XDP program: the real
captures, the frame strategies and rate limits through net_pcap, compared
with the reference model packet by packet (verdict counts, counters, and
the passed frames byte for byte); policies it cannot enforce and bad
configurations end with a clear error."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.policy import policy_from_document
from agent.reference import ReferenceBuckets
from dpdk_harness import assert_matches_reference, engine_config, run_cli, run_frames
from frames import frames as frame_strategy, malformed_frames, udp_ipv4_frame, tcp_ipv4_frame
from policies import FIXED_POLICY, policies
from test_captures import CAPTURE_NAMES, VICTIM_POLICY

from agent.pcap import ethernet_frame, read_frames

ENGINE_RUNS = settings(max_examples=4, deadline=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.data_too_large,
                                              HealthCheck.too_slow])


@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_through_dpdk_matches_reference(captures_dir, tmp_path, name):
    frames = [ethernet_frame(c) for c in read_frames(captures_dir / name)]
    run = run_frames(tmp_path, VICTIM_POLICY, frames)
    reference = assert_matches_reference(run, VICTIM_POLICY, frames)
    reasons = {r for fields in reference.by_tenant.values() for r, n in fields["reason_packets"].items() if n}
    assert reasons & {"drop_global_block", "drop_tenant_block", "drop_port_block"}, reasons


@ENGINE_RUNS
@given(batch=st.lists(st.one_of(frame_strategy(), malformed_frames()), min_size=50, max_size=300))
def test_generated_frames_through_dpdk_match_reference(tmp_path_factory, batch):
    tmp = tmp_path_factory.mktemp("dpdk")
    assert_matches_reference(run_frames(tmp, FIXED_POLICY, batch), FIXED_POLICY, batch)


@ENGINE_RUNS
@given(policy=policies(), batch=st.lists(st.one_of(frame_strategy(), malformed_frames()), min_size=20, max_size=120))
def test_random_policies_through_dpdk_match_reference(tmp_path_factory, policy, batch):
    tmp = tmp_path_factory.mktemp("dpdk")
    if any(t.flood.syn_cookies or t.flood.syn_ack.value == "track" for t in policy.tenants):
        run = run_frames(tmp, policy, batch)
        assert run.returncode == 1 and "cannot enforce" in run.stderr, run.stderr
        return
    now = 5_000_000_000
    buckets = ReferenceBuckets()
    buckets.apply(policy)
    run = run_frames(tmp, policy, batch, test_clock_ns=now)
    assert_matches_reference(run, policy, batch, buckets, now)


LIMITED = policy_from_document({
    "revision": 3,
    "tenants": [
        {"id": 5, "name": "limited", "vips": ["203.0.113.5"],
          "flood": {"packets_per_second": 100, "packet_burst": 40, "syns_per_second": 10, "syn_burst": 7,
                   "source_packets_per_second": 50, "source_packet_burst": 12, "source_prefix_v4": 32,
                   "amplification": "drop"}},
    ],
}, "tests/test_dpdk.py")


def test_rate_limits_match_reference_under_a_fixed_clock(tmp_path):
    """Token buckets are the datapath's: with the clock held, exactly the burst passes."""
    frames = []
    for i in range(120):
        src = f"198.51.100.{i % 4}"
        if i % 3 == 0:
            frames.append(tcp_ipv4_frame(src, "203.0.113.5", 40000 + i, 80, flags="S"))
        elif i % 3 == 1:
            frames.append(udp_ipv4_frame(src, "203.0.113.5", 53 if i % 2 else 5000, 9999))
        else:
            frames.append(tcp_ipv4_frame(src, "203.0.113.5", 40000 + i, 443, flags="A"))
    now = 7_000_000_000
    buckets = ReferenceBuckets()
    buckets.apply(LIMITED)
    reference = assert_matches_reference(run_frames(tmp_path, LIMITED, frames, test_clock_ns=now), LIMITED,
                                         frames, buckets, now)
    reasons = reference.by_tenant[5]["reason_packets"]
    assert reasons["drop_source_rate"] and reasons["drop_syn_rate"] and reasons["pass_allowed"], dict(reasons)


def test_cookie_tenants_are_refused_with_a_clear_error(tmp_path):
    policy = policy_from_document({"revision": 1, "tenants": [
        {"id": 9, "name": "cookies", "vips": ["203.0.113.9"], "flood": {"syn_cookies": True}}]}, "test")
    run = run_frames(tmp_path, policy, [tcp_ipv4_frame("198.51.100.1", "203.0.113.9", 1000, 80, flags="S")])
    assert run.returncode == 1
    assert "tenant 9 (cookies): syn_cookies" in run.stderr and "nothing was applied" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("case", ["eal_arguments", "missing_interface", "no_memory", "no_worker_lcore"])
def test_bad_configuration_ends_with_a_clear_error(tmp_path, case):
    pcap_port = {"name": "net_pcap0", "vdev": f"net_pcap0,rx_pcap={tmp_path / 'none.pcap'},tx_pcap={tmp_path / 'o.pcap'}"}
    (tmp_path / "none.pcap").write_bytes(b"")
    from agent.dpdk.capture import write_pcap
    write_pcap(tmp_path / "none.pcap", [])
    if case == "eal_arguments":
        config = engine_config(tmp_path, [pcap_port], eal_args=["--no-huge", "--no-shconf", "--no-telemetry", "--bogus-option"])
        expect = "the DPDK EAL did not start"
    elif case == "missing_interface":
        config = engine_config(tmp_path, [{"name": "net_af_packet0",
                                           "vdev": "net_af_packet0,iface=ewmissing0"}])
        expect = "net_af_packet0"
    elif case == "no_memory":
        config = engine_config(tmp_path, [pcap_port], memory_mb=16, engine={"mbufs": 200000})
        expect = "cannot allocate 200000 packet buffers"
    else:
        text = engine_config(tmp_path, [pcap_port]).read_text().replace('lcores = "0,1"', 'lcores = "0"')
        config = tmp_path / "one-lcore.toml"
        config.write_text(text)
        expect = "no worker lcore"
    started = time.monotonic()
    done = run_cli(["run", "--config", str(config), "--seconds", "2"])
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])     # not a signal, not a crash
    assert expect in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60


def test_counters_of_several_lcores_add_up(tmp_path):
    """Two worker lcores, each polling its own queue of a null device that
    makes frames (all-zero, so not IP): each lcore counts in its own row, and
    the per-CPU aggregation sums them to what was received."""
    config = engine_config(tmp_path, [
        {"name": "net_null0", "vdev": "net_null0,size=64", "pass_to": "net_null1"},
        {"name": "net_null1", "vdev": "net_null1,no-rx=1", "judge": False}])
    config.write_text(config.read_text().replace('lcores = "0,1"', 'lcores = "0@0,1@1,2@1"'))
    done = run_cli(["run", "--config", str(config), "--seconds", "1", "--json"])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    per_lcore = report["packets_per_lcore"]
    assert len(per_lcore) == 2 and all(n > 0 for n in per_lcore), per_lcore
    unassigned = next(t for t in report["tenants"] if t["tenant_id"] == 0)
    assert unassigned["reason_packets"]["pass_non_ip"] == sum(per_lcore) == report["received"] == report["passed"]
    assert unassigned["class_packets"]["other"] == report["received"]
    assert unassigned["reason_bytes"]["pass_non_ip"] == 64 * report["received"]

"""The DPDK engine held to the independent oracles the XDP program is held
to, packet by packet (the engine's trace says which tenant, reason and class
each packet's counters moved, as the XDP tests read counter deltas): the
captures against tshark's dissection (tests/data/captures/expected), and the
scapy-built frames against the README's rules (tests/data/oracle). Tenants
with SYN cookies or SYN-ACK tracking are refused by the engine, so a policy
with them is checked to be refused, and the scapy cases of those tenants are
left out (their VIPs would belong to no one)."""

from dataclasses import replace

import pytest

from agent.pcap import ethernet_frame, read_frames
from agent.policy import load_policy
from agent.policy.model import SynAckPolicy
from dpdk_harness import run_frames
from agent.datapath.private import PrivateDatapath
from oracle import ACTION_NAMES, observe
from test_capture_oracle import CAPTURES, DATA, POLICIES, expected_rows, verdict_of
from test_oracle_frames import CASES, POLICY, expected_of


def observed(entry: dict) -> tuple:
    return ACTION_NAMES[entry["action"]], entry["tenant_id"], entry["reason"], entry["traffic_class"]


def needs_kernel(tenant) -> bool:
    return tenant.flood.syn_cookies or tenant.flood.syn_ack is SynAckPolicy.TRACK


@pytest.mark.parametrize("policy_name", POLICIES)
@pytest.mark.parametrize("capture", CAPTURES)
def test_capture_through_dpdk_gets_the_verdicts_tshark_says(captures_dir, tmp_path, capture, policy_name):
    policy = load_policy(DATA / "policies" / f"{policy_name}.toml")
    frames = [ethernet_frame(c) for c in read_frames(captures_dir / capture)]
    run = run_frames(tmp_path, policy, frames, trace=True)
    if any(needs_kernel(t) for t in policy.tenants):
        assert run.returncode == 1 and "cannot enforce" in run.stderr, run.stderr[-2000:]
        return
    assert run.returncode == 0, run.stderr[-2000:]
    rows = expected_rows(capture)
    trace = run.report["trace"]
    assert len(trace) == len(rows) == len(frames)
    mismatches = []
    for i, (entry, row) in enumerate(zip(trace, rows)):
        reason = row[f"{policy_name}_reason"]
        expected = (verdict_of(reason), int(row[f"{policy_name}_tenant"]), reason)
        got = observed(entry)[:3]
        if got != expected:
            mismatches.append(f"packet {i}: expected {expected}, the DPDK engine said {got}")
    assert not mismatches, f"{len(mismatches)} of {len(rows)} differ:\n  " + "\n  ".join(mismatches[:8])


@pytest.fixture(scope="module")
def scapy_run(tmp_path_factory):
    """The oracle's frames, in file order, through the engine (one run) and
    through the XDP program: (steps, engine trace, XDP observations)."""
    refused = {t.id for t in POLICY.tenants if needs_kernel(t)}
    assert refused, "the oracle policy was expected to have a cookie tenant"
    policy = replace(POLICY, tenants=tuple(t for t in POLICY.tenants if t.id not in refused))
    cases = [case for case in CASES.values()
             if not any(step.get("tenant") in refused for step in case["frames"])]
    steps = [step for case in cases for step in case["frames"]]
    assert len(steps) > 80
    frames = [bytes.fromhex(step["hex"]) for step in steps]
    run = run_frames(tmp_path_factory.mktemp("scapy"), policy, frames, trace=True)
    assert run.returncode == 0, run.stderr[-2000:]
    with PrivateDatapath(policy) as datapath:
        xdp = [observe(datapath, frame) for frame in frames]
    return steps, run.report["trace"], xdp


def test_scapy_frames_through_dpdk_as_through_xdp(scapy_run):
    """Packet by packet the XDP program's own verdict, tenant, reason and class."""
    steps, trace, xdp = scapy_run
    assert len(trace) == len(steps)
    differ = [(i, observed(entry), (o.verdict, o.tenant_id, o.reason, o.traffic_class))
              for i, (entry, o) in enumerate(zip(trace, xdp))
              if observed(entry) != (o.verdict, o.tenant_id, o.reason, o.traffic_class)]
    assert not differ, differ[:8]


def test_scapy_frames_through_dpdk_give_the_readme_verdicts(scapy_run):
    steps, trace, _ = scapy_run
    assert len(trace) == len(steps)
    mismatches = []
    for i, (entry, step) in enumerate(zip(trace, steps)):
        expected = expected_of(step)
        got = dict(zip(("verdict", "tenant", "reason", "class"), observed(entry)))
        got = {k: got[k] for k in expected}
        if got != expected:
            mismatches.append(f"frame {i} {step['hex'][:60]}...: expected {expected}, got {got}")
    assert not mismatches, "\n".join(mismatches[:8])

"""Every packet of every real attack capture through the XDP program under a
policy with a tenant on the victim address and a source block list: the
reference verdict for each packet, never XDP_ABORTED, and the same final
counters as the reference."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent._libbpf import lib
from agent.datapath.private import PrivateDatapath
from agent.pcap import ethernet_frame, read_frames
from agent.policy import load_policy
from agent.reference import ReferenceCounters, judge
from oracle import FIELDS

# Blocks chosen to hit real sources in the captures (checked below).
VICTIM_POLICY_FILE = Path(__file__).resolve().parent / "data" / "captures" / "policies" / "blocks.toml"
VICTIM_POLICY = load_policy(VICTIM_POLICY_FILE)

CAPTURE_NAMES = ["pkt.TCP.synflood.spoofed.pcap", "amp.UDP.snmp.src161.pcapng",
                 "amp.dns.RRSIG.fragmented.pcap", "amp.TCP.reflection.SYNACK.pcap"]


@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_matches_reference(captures_dir, name):
    path = captures_dir / name
    reference = ReferenceCounters()
    mismatches = []
    reasons_seen = set()
    with PrivateDatapath(VICTIM_POLICY) as datapath:
        for captured in read_frames(path):
            frame = ethernet_frame(captured)
            verdict = judge(VICTIM_POLICY, frame)
            action = datapath.run(frame)
            assert action != lib.XDP_ABORTED, f"packet {captured.index} aborted"
            expected = verdict.action
            if action != expected and len(mismatches) < 5:
                mismatches.append((captured.index, action, verdict))
            reference.count(verdict)
            reasons_seen.add(verdict.reason.name)
        kernel = datapath.counters()
    assert not mismatches, f"{name}: XDP and reference disagree, first ones: {mismatches}"
    for tenant_id, fields in reference.by_tenant.items():
        for field in FIELDS:
            got = {k: v for k, v in getattr(kernel[tenant_id], field).items() if v}
            assert got == dict(fields[field]), f"{name}: tenant {tenant_id} {field}"
    # The policy must actually exercise enforcement on real traffic.
    assert reasons_seen & {"drop_global_block", "drop_tenant_block", "drop_port_block"}, reasons_seen
    assert "pass_allowed" in reasons_seen


def test_classify_cli_json_is_stable(captures_dir):
    """`edgewarden classify --json` on a real capture: the documented schema and totals."""
    capture = captures_dir / "amp.UDP.snmp.src161.pcapng"
    out = subprocess.run([sys.executable, "-m", "agent.cli", "classify", str(capture), "--policy", str(VICTIM_POLICY_FILE),
                          "--json"], capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    assert set(doc) == {"capture", "policy_revision", "packets", "bytes", "actions", "reasons", "tenants"}
    assert doc["packets"] == 4373 and doc["policy_revision"] == 7
    assert doc["actions"]["aborted"] == 0
    assert doc["actions"]["drop"] + doc["actions"]["pass"] == doc["packets"]
    assert sum(r["packets"] for r in doc["reasons"].values()) == doc["packets"]
    drops = sum(r["packets"] for name, r in doc["reasons"].items() if name.startswith("drop_"))
    assert drops == doc["actions"]["drop"] > 0
    victim = next(t for t in doc["tenants"] if t["tenant_id"] == 10)
    assert victim["name"] == "victim"
    assert victim["reason_packets"]["drop_port_block"] > 0   # reflected SNMP to udp/12294
    assert set(victim) >= {"tenant_id", "name", "packets", "bytes", "passed_packets", "dropped_packets",
                           "class_packets", "class_bytes", "reason_packets", "reason_bytes"}


def test_classify_cli_reports_bad_capture(tmp_path):
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture")
    policy = tmp_path / "p.toml"
    policy.write_text("revision = 1\n")
    result = subprocess.run([sys.executable, "-m", "agent.cli", "classify", str(junk), "--policy", str(policy)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "junk.pcap" in result.stderr

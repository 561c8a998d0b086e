"""Every packet of the four real attack captures through the real XDP program
(BPF_PROG_TEST_RUN) under each policy of tests/data/captures/policies/,
compared packet by packet with the tenant and verdict reason computed from
tshark's dissection by tests/data/captures/make_expected.py (which imports
nothing from the project): the XDP verdict, and the one tenant and reason
whose counters the packet moved."""

import csv
import gzip
import io
from pathlib import Path

import pytest

from agent.datapath.private import PrivateDatapath
from agent.pcap import ethernet_frame, read_frames
from agent.policy import load_policy
from oracle import observe

DATA = Path(__file__).resolve().parent / "data" / "captures"
CAPTURES = ["pkt.TCP.synflood.spoofed.pcap", "amp.UDP.snmp.src161.pcapng",
            "amp.dns.RRSIG.fragmented.pcap", "amp.TCP.reflection.SYNACK.pcap"]
POLICIES = ["blocks", "cookies", "caps"]


def verdict_of(reason: str) -> str:
    """The README's table: drop_* drop, pass_* pass, the cookie answer is XDP_TX."""
    return "tx" if reason == "answer_syn_cookie" else reason.split("_", 1)[0]


def expected_rows(capture: str) -> list[dict]:
    path = DATA / "expected" / f"{capture}.csv.gz"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run tests/data/captures/make_expected.py")
    return list(csv.DictReader(io.StringIO(gzip.decompress(path.read_bytes()).decode())))


@pytest.mark.parametrize("policy_name", POLICIES)
@pytest.mark.parametrize("capture", CAPTURES)
def test_capture_gets_the_verdicts_tshark_says(captures_dir, capture, policy_name):
    policy = load_policy(DATA / "policies" / f"{policy_name}.toml")
    rows = expected_rows(capture)
    mismatches, count = [], 0
    reasons = set()
    with PrivateDatapath(policy) as datapath:
        for captured, row in zip(read_frames(captures_dir / capture), rows, strict=True):
            assert captured.index == int(row["index"])
            expected_reason = row[f"{policy_name}_reason"]
            expected = (verdict_of(expected_reason), int(row[f"{policy_name}_tenant"]), expected_reason)
            got = observe(datapath, ethernet_frame(captured))
            reasons.add(expected_reason)
            if (got.verdict, got.tenant_id, got.reason) != expected:
                count += 1
                if len(mismatches) < 8:
                    facts = {k: row[k] for k in ("src", "l4", "sport", "dport", "tcp_flags", "fragment",
                                                 "headers_whole")}
                    mismatches.append(f"packet {captured.index} {facts}: expected {expected}, "
                                      f"XDP said {(got.verdict, got.tenant_id, got.reason)}")
    assert not count, f"{capture} under {policy_name}: {count} of {len(rows)} packets differ:\n  " + \
        "\n  ".join(mismatches)
    # The policy must exercise more than one rule on this capture.
    assert len(reasons) > 1, reasons

"""Replaying real captures into the lab: frames pointed at the lab's victim
with valid checksums, and, live, the edge counts exactly what the reference
model says about the frames that were sent."""

import ipaddress
import json
import struct
from collections import Counter

import pytest

from agent.lab import FloodLab
from agent.policy import policy_from_document, policy_to_toml
from agent.reference import judge
from agent.lab.replay import prepare
from frames import checksum

VIP = "203.0.113.10"


def checksum_ok(data: bytes) -> bool:
    return checksum(data) == 0


@pytest.mark.parametrize("name", ["amp.UDP.snmp.src161.pcapng", "amp.TCP.reflection.SYNACK.pcap",
                                  "pkt.TCP.synflood.spoofed.pcap", "amp.dns.RRSIG.fragmented.pcap"])
def test_rewritten_frames_point_at_the_lab_with_valid_checksums(captures_dir, name):
    frames, skipped, pointed = prepare(captures_dir / name, VIP, b"\x02" * 6, b"\x04" * 6)
    target = ipaddress.IPv4Address(VIP).packed
    assert pointed > 0.9 * len(frames)
    checked = 0
    for f in frames:
        if f[12:14] != b"\x08\x00" or f[30:34] != target:
            continue
        assert f[:12] == b"\x04" * 6 + b"\x02" * 6
        ihl = (f[14] & 15) * 4
        assert checksum_ok(f[14:14 + ihl]), "IPv4 header checksum"
        proto, total = f[23], struct.unpack_from("!H", f, 16)[0]
        nonfragment = not struct.unpack_from("!H", f, 20)[0] & 0x3FFF
        if nonfragment and proto in (6, 17) and 14 + total <= len(f):
            segment = f[14 + ihl:14 + total]
            if proto == 17 and segment[6:8] == b"\0\0":
                continue                      # UDP without a checksum stays without
            assert checksum_ok(f[26:34] + struct.pack("!BBH", 0, proto, len(segment)) + segment)
            checked += 1
    assert checked > 0


@pytest.mark.live
def test_replayed_capture_is_counted_as_the_reference_says(captures_dir, tmp_path):
    policy = policy_from_document({"revision": 1, "tenants": [{"id": 1, "name": "victim", "vips": [VIP],
                                                               "blocked_ports": ["udp/12294"]}]})
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy_to_toml(policy))
    capture = captures_dir / "amp.UDP.snmp.src161.pcapng"
    lab = FloodLab()
    with lab:
        lab.attach(str(policy_file))
        try:
            edge_if, attacker_if = lab.links["attacker"]
            mac = lab.mac_of("edge", edge_if)
            out = lab.cli("attacker", "replay", str(capture), "--iface", attacker_if, "--target", VIP,
                          "--dst-mac", mac, "--pps", "20000", "--json").stdout
            result = json.loads(out)
            assert result["sent"] == result["frames"] == 4373
            frames, _, _ = prepare(capture, VIP, bytes(6), bytes.fromhex(mac.replace(":", "")))
            expected = Counter(judge(policy, f).reason.name for f in frames if judge(policy, f).tenant_id == 1)
            stats = json.loads(lab.edgewarden("stats", "--iface", edge_if, "--tenant", "1", "--json").stdout)
            got = {k: v for k, v in stats["interfaces"][edge_if]["tenants"][0]["reason_packets"].items() if v}
            assert got == dict(expected)
            assert got.get("drop_amplification", 0) > 0 and got.get("drop_port_block", 0) > 0
        finally:
            lab.detach()

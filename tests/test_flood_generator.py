"""The flood generator: every frame it produces is well-formed (checksums
recomputed, source inside the prefix, ports in range) — checked through a
plain test run that returns the frame — and a live lab run through the
edge, where edgewarden's counters see the flood and drop what the tenant's
flood policy says."""

import ipaddress
import json
import struct
import subprocess
import sys

import pytest

from agent._libbpf import lib
from agent.datapath.syscalls import test_run
from agent.lab.flood import FLOOD_TYPES, FloodGenerator, template_frame
from agent.lab import EdgeLab, FloodLab, victim_policy
from frames import checksum

SOURCE = ipaddress.IPv4Network("203.0.113.128/25")




@pytest.mark.parametrize("name", sorted(FLOOD_TYPES))
def test_generated_frames_are_well_formed(name):
    kind = FLOOD_TYPES[name]
    frame, l4_length = template_frame(kind, bytes(6), b"\x02" * 6, "203.0.113.10", 443)
    with FloodGenerator() as generator:
        generator.configure(SOURCE, kind, l4_length, (2000, 100) if kind.sport is not None else None, frame)
        sources, sports = set(), set()
        for _ in range(64):
            result = test_run(generator.prog_fd, frame, want_data=True)
            assert result.retval == lib.XDP_TX
            out = result.data_out
            ip, l4 = out[14:34], out[34:]
            assert checksum(ip) == 0, "IPv4 header checksum"
            src = ipaddress.IPv4Address(ip[12:16])
            assert src in SOURCE
            sources.add(src)
            if l4_length:
                pseudo = ip[12:20] + struct.pack("!BBH", 0, kind.proto, len(l4))
                assert checksum(pseudo + l4) == 0, f"{name}: L4 checksum"
                sport, dport = struct.unpack("!HH", l4[:4])
                sports.add(sport)
                if kind.sport is None:
                    assert 1024 <= sport < 1024 + 64511
                else:
                    assert sport == kind.sport and 2000 <= dport < 2100
            elif kind.proto == 1:
                assert checksum(l4) == 0, "ICMP checksum"
        assert len(sources) > 32, "sources are not varied"
        if l4_length and kind.sport is None:
            assert len(sports) > 32, "source ports are not varied"


SOURCE_V6 = ipaddress.IPv6Network("2001:db8:f00d::/48")


@pytest.mark.parametrize("name", sorted(n for n, k in FLOOD_TYPES.items() if not k.fragment))
def test_generated_ipv6_frames_are_well_formed(name):
    kind = FLOOD_TYPES[name]
    frame, l4_length = template_frame(kind, bytes(6), b"\x02" * 6, "2001:db8:10::10", 443)
    assert l4_length > 0, "every IPv6 L4 checksum covers the varied source"
    with FloodGenerator() as generator:
        generator.configure(SOURCE_V6, kind, l4_length, (2000, 100) if kind.sport is not None else None, frame)
        sources = set()
        for _ in range(64):
            result = test_run(generator.prog_fd, frame, want_data=True)
            assert result.retval == lib.XDP_TX
            out = result.data_out
            ip, l4 = out[14:54], out[54:]
            assert out[12:14] == b"\x86\xdd" and ip[0] >> 4 == 6
            assert struct.unpack("!H", ip[4:6])[0] == len(l4) == l4_length
            src = ipaddress.IPv6Address(ip[8:24])
            assert src in SOURCE_V6
            sources.add(src)
            pseudo = ip[8:40] + struct.pack("!IxxxB", len(l4), ip[6])
            assert checksum(pseudo + l4) == 0, f"{name}: L4 checksum"
            if kind.sport is not None:
                sport, dport = struct.unpack("!HH", l4[:4])
                assert sport == kind.sport and 2000 <= dport < 2100
        assert len(sources) == 64, "sources are not varied"


def test_an_ipv6_fragment_flood_or_mixed_families_are_refused():
    with pytest.raises(ValueError, match="IPv4 only"):
        template_frame(FLOOD_TYPES["fragment"], bytes(6), bytes(6), "2001:db8::1", 80)
    from agent.lab.flood import flood
    with pytest.raises(ValueError, match="different address families"):
        flood("udp", "lo", "2001:db8::1", "02:00:00:00:00:01", source="203.0.113.0/24", packets=1, seconds=1)


POLICY = victim_policy(syns_per_second=1000, syn_burst=1000)


@pytest.mark.live
def test_floods_through_the_lab(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    lab = FloodLab()
    with lab:
        lab.attach(str(policy))
        try:
            edge_if, attacker_if = lab.links["attacker"]
            mac = lab.mac_of("edge", edge_if)

            def flood(kind, packets):
                out = lab.cli("attacker", "flood", kind, "--iface", attacker_if, "--target", lab.vip,
                              "--dst-mac", mac, "--packets", str(packets), "--seconds", "5", "--json").stdout
                return json.loads(out)

            def victim():
                doc = json.loads(lab.edgewarden("stats", "--iface", edge_if, "--tenant", "1", "--json").stdout)
                return doc["interfaces"][edge_if]["tenants"][0]["reason_packets"]

            def server_udp():
                lines = EdgeLab.ns(lab.ns["server"], ["cat", "/proc/net/snmp"]).stdout.splitlines()
                names, values = [l.split()[1:] for l in lines if l.startswith("Udp:")][:2]
                return dict(zip(names, map(int, values)))

            dns = flood("dns", 20000)
            assert dns["packets"] == 20000 and dns["offered_pps"] > 0
            seen = victim()
            assert seen["drop_amplification"] > 0 and seen["pass_allowed"] == 0
            assert server_udp()["NoPorts"] + server_udp()["InDatagrams"] == 0, "amplification reached the server"

            syn = flood("syn", 20000)
            after = victim()
            assert after["drop_syn_rate"] > 0
            # at most the burst plus what the rate refills while the flood lasted (with a second's slack)
            assert after["pass_allowed"] <= 1000 + 1000 * (syn["seconds"] + 1)

            flood("udp", 5000)
            udp = server_udp()
            assert udp["NoPorts"] > 0 and udp["InCsumErrors"] == 0, udp
        finally:
            lab.detach()


@pytest.mark.live
def test_lab_up_and_down_through_the_cli(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    tag = "cli" + __import__("secrets").token_hex(2)
    cli = [sys.executable, "-m", "agent.cli"]
    try:
        out = subprocess.run(cli + ["lab", "up", "--tag", tag, "--policy", str(policy)], capture_output=True,
                             text=True, check=True, timeout=120).stdout
        assert f"lab {tag} is up" in out and "edgewarden flood syn" in out
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(f"ew-{tag}-{role}" in namespaces for role in ("attacker", "client", "edge", "server"))
    finally:
        subprocess.run(cli + ["lab", "down", tag], capture_output=True, text=True, timeout=120)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ew-{tag}-" not in namespaces
    from pathlib import Path
    assert not list(Path("/sys/fs/bpf/edgewarden").glob(f"**/ewa{tag}")), "lab down leaves no pins"

"""SYN cookies live, in the four-namespace lab: during a spoofed SYN flood
from the attacker namespace, a real client keeps completing TCP
transactions with the server behind the edge, and no spoofed SYN reaches
the server. The edge answers SYNs from XDP; nftables' synproxy (installed by
the agent) turns a returned cookie into a connection to the server."""

import json
import subprocess
import sys

import pytest

from agent.lab import EdgeLab, FloodLab, in_namespace, victim_policy
from packet_audit import syns_by_source
from waiting import wait_until

pytestmark = pytest.mark.live

PORT = 80
FLOOD_PACKETS = 20_000_000     # an upper bound: the flood stops after FLOOD_SECONDS
FLOOD_SECONDS = 5
COOKIE_POLICY = victim_policy(syn_cookies=True)
PLAIN_POLICY = victim_policy(revision=2, syn_cookies=False)

# Echo server: serves until killed or 60 s pass; prints each peer it accepted.
SERVER = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], {PORT})); s.listen(128); s.settimeout(1)
print('ready', flush=True)
end = time.time() + 60
while time.time() < end:
    try:
        c, peer = s.accept()
    except OSError:
        continue
    c.settimeout(3)
    try:
        c.sendall(c.recv(4096))
    except OSError:
        pass
    c.close()
    print(peer[0], flush=True)
"""

# Client: `n` transactions or `seconds`, whichever ends first; prints {"ok", "failed", "errors"}.
# A transaction every 2 ms at most: faster, the client wraps around its
# ephemeral ports within the server's TIME_WAIT, and reused 4-tuples fail
# with or without edgewarden (about 5,000 connections here).
CLIENT = f"""
import json, socket, sys, time
host, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = failed = 0
errors = {{}}
end = time.time() + seconds
while ok + failed < n and time.time() < end:
    try:
        with socket.create_connection((host, {PORT}), timeout=5) as s:
            s.sendall(b'ping'); ok += s.recv(16) == b'ping'
    except OSError as e:
        failed += 1
        errors[str(e)] = errors.get(str(e), 0) + 1
    time.sleep(0.002)
print(json.dumps({{"ok": ok, "failed": failed, "errors": errors}}))
"""


def snmp(lab: FloodLab, role: str, group: str) -> dict[str, int]:
    lines = EdgeLab.ns(lab.ns[role], ["cat", "/proc/net/snmp"]).stdout.splitlines()
    names, values = [line.split()[1:] for line in lines if line.startswith(f"{group}:")][:2]
    return dict(zip(names, map(int, values)))


def client_run(lab: FloodLab, n: int, seconds: float, host: str | None = None) -> dict:
    out = subprocess.run(in_namespace(lab.ns["client"], [sys.executable, "-c", CLIENT, host or lab.vip, str(n),
                                                         str(seconds)]),
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    return json.loads(out)


def answered_syns(lab: FloodLab, interface: str) -> int:
    doc = json.loads(lab.edgewarden("stats", "--iface", interface, "--tenant", "1", "--json").stdout)
    return doc["interfaces"][interface]["tenants"][0]["reason_packets"]["answer_syn_cookie"]


def nft_tables(lab: FloodLab) -> str:
    return EdgeLab.ns(lab.ns["edge"], ["nft", "list", "tables"]).stdout


def test_clients_connect_through_a_syn_flood_and_no_spoofed_syn_reaches_the_server(tmp_path):
    policy = tmp_path / "cookies.toml"
    policy.write_text(COOKIE_POLICY)
    lab = FloodLab()
    with lab:
        lab.attach(str(policy))
        server = None
        try:
            edge_if, attacker_if = lab.links["attacker"]
            for interface in lab.edge_ingress:
                assert f"edgewarden_{interface}" in nft_tables(lab)
            server = subprocess.Popen(in_namespace(lab.ns["server"], [sys.executable, "-c", SERVER, lab.vip]),
                                      stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            # Every SYN that reaches the server, counted by the server's kernel
            # (a capture can lose packets on a starved CPU; a counter cannot).
            audit = syns_by_source(lab.ns["server"], lab.client_link[1])
            opens_before = snmp(lab, "server", "Tcp")["PassiveOpens"]

            calm = client_run(lab, 20, 15)
            assert calm == {"ok": 20, "failed": 0, "errors": {}}

            mac = lab.mac_of("edge", edge_if)
            flood = subprocess.Popen(in_namespace(lab.ns["attacker"], [
                sys.executable, "-m", "agent.cli", "flood", "syn", "--iface", attacker_if, "--target", lab.vip,
                "--dst-mac", mac, "--dport", str(PORT), "--packets", str(FLOOD_PACKETS), "--seconds", str(FLOOD_SECONDS),
                "--threads", "1", "--json"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # The client measures under flood only once the flood reaches the edge.
            wait_until(lambda: answered_syns(lab, edge_if), lambda n: n >= 1000, FLOOD_SECONDS,
                       "the flood's SYNs being answered at the edge")
            under_flood = client_run(lab, 10_000, FLOOD_SECONDS - 1)
            out, err = flood.communicate(timeout=60)
            assert flood.returncode == 0, err
            sent = json.loads(out)["packets"]
            assert sent > 0
            # Connections take longer under flood (the client's SYN competes with
            # the flood for the edge's CPU), but every one completes.
            assert under_flood["ok"] > 0 and under_flood["failed"] == 0, under_flood

            opened = snmp(lab, "server", "Tcp")["PassiveOpens"] - opens_before
            assert opened == calm["ok"] + under_flood["ok"], "the server opened a connection nobody completed"
            doc = json.loads(lab.edgewarden("stats", "--iface", edge_if, "--tenant", "1", "--json").stdout)
            victim = doc["interfaces"][edge_if]["tenants"][0]
            # Every flood SYN that reached XDP was answered (most never get
            # there: the generator offers more than two shared cores can take).
            answered = victim["reason_packets"]["answer_syn_cookie"]
            assert answered > 10_000 and answered == victim["packets"] - victim["passed_packets"]
            assert victim["dropped_packets"] == 0
            # What passed is the client's handshakes and data, nothing more.
            assert victim["passed_packets"] <= 8 * (calm["ok"] + under_flood["ok"])
            # Only the client ever sent the server a SYN (through synproxy), one
            # at least for every connection the server opened.
            syns = audit.read()
            spoofed = syns["from_others"] + syns["from_other_family"]
            assert spoofed == 0, f"{spoofed} spoofed SYNs reached the server"
            assert syns["from_client"] >= opened
            print(f"flood: {sent} SYNs offered, {answered} answered with cookies; client "
                  f"{under_flood['ok']} transactions under flood; the server saw {syns['from_client']} SYNs")
        finally:
            if server is not None:
                server.kill()
                server.wait()
            lab.detach()
        for interface in lab.edge_ingress:
            assert f"edgewarden_{interface}" not in nft_tables(lab), "detach leaves no netfilter table"


def test_turning_cookies_off_removes_the_netfilter_half(tmp_path):
    on, off = tmp_path / "on.toml", tmp_path / "off.toml"
    on.write_text(COOKIE_POLICY)
    off.write_text(PLAIN_POLICY)
    lab = FloodLab()
    with lab:
        lab.attach(str(on))
        try:
            client_if = lab.links["client"][0]
            assert f"edgewarden_{client_if}" in nft_tables(lab)
            loose = EdgeLab.ns(lab.ns["edge"], ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_loose"]).stdout
            assert loose.strip() == "0"
            lab.edgewarden("policy", "apply", str(off), "--iface", client_if)
            assert f"edgewarden_{client_if}" not in nft_tables(lab)
            # Without cookies, SYNs pass to the server as before.
            server = subprocess.Popen(in_namespace(lab.ns["server"], [sys.executable, "-c", SERVER, lab.vip]),
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout.readline().strip() == "ready"
                assert client_run(lab, 3, 15) == {"ok": 3, "failed": 0, "errors": {}}
            finally:
                server.kill()
                server.wait()
            doc = json.loads(lab.edgewarden("stats", "--iface", client_if, "--tenant", "1", "--json").stdout)
            assert doc["interfaces"][client_if]["tenants"][0]["reason_packets"]["answer_syn_cookie"] == 0
        finally:
            lab.detach()


TRACK_POLICY = victim_policy(syn_ack="track")

# Listens on the client's address, accepts one connection, echoes; bounded.
CLIENT_SIDE_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000)); s.listen(8); s.settimeout(15)
print('ready', flush=True)
c, _ = s.accept(); c.settimeout(3); c.sendall(c.recv(64)); c.close()
"""
# Connects out from the VIP.
VIP_SIDE_CLIENT = """
import socket, sys
s = socket.socket(); s.settimeout(5); s.bind((sys.argv[1], 0)); s.connect((sys.argv[2], 9000))
s.sendall(b'outbound'); print(s.recv(64).decode())
"""


def test_syn_ack_tracking_passes_answers_to_the_vips_own_connections_and_drops_reflections(tmp_path):
    policy = tmp_path / "track.toml"
    policy.write_text(TRACK_POLICY)
    lab = FloodLab()
    with lab:
        lab.attach(str(policy))
        try:
            client_if = lab.links["client"][0]
            edge_if, attacker_if = lab.links["attacker"]
            assert f"edgewarden_{client_if}" in nft_tables(lab), "tracking needs conntrack on in the namespace"
            # The server opens a connection from its VIP to the client: the
            # client's SYN-ACK comes in through XDP and must pass.
            listener = subprocess.Popen(in_namespace(lab.ns["client"], [sys.executable, "-c", CLIENT_SIDE_SERVER,
                                                                        lab.client_link[1]]),
                                        stdout=subprocess.PIPE, text=True)
            try:
                assert listener.stdout.readline().strip() == "ready"
                out = subprocess.run(in_namespace(lab.ns["server"], [sys.executable, "-c", VIP_SIDE_CLIENT, lab.vip,
                                                                     lab.client_link[1]]),
                                     capture_output=True, text=True, timeout=30)
                assert out.stdout.strip() == "outbound", out.stderr
            finally:
                listener.kill()
                listener.wait()
            doc = json.loads(lab.edgewarden("stats", "--iface", client_if, "--tenant", "1", "--json").stdout)
            victim = doc["interfaces"][client_if]["tenants"][0]["reason_packets"]
            assert victim["pass_allowed"] >= 2 and victim["drop_syn_ack"] == 0   # the SYN-ACK and the rest
            # A SYN-ACK reflection flood at the VIP: no connection, all dropped.
            mac = lab.mac_of("edge", edge_if)
            flood = json.loads(lab.cli("attacker", "flood", "synack", "--iface", attacker_if, "--target", lab.vip,
                                       "--dst-mac", mac, "--packets", "50000", "--seconds", "5", "--json").stdout)
            doc = json.loads(lab.edgewarden("stats", "--iface", edge_if, "--tenant", "1", "--json").stdout)
            victim = doc["interfaces"][edge_if]["tenants"][0]
            assert victim["reason_packets"]["drop_syn_ack"] == victim["packets"] > 0
            assert victim["packets"] <= flood["packets"]
        finally:
            lab.detach()


def test_ipv6_clients_connect_through_cookies(tmp_path):
    """The IPv6 half: cookie SYN-ACK (checksum over the v6 pseudo header),
    bpf_tcp_raw_check_syncookie_ipv6 on the ACK, synproxy's ip6 rule, and
    the conntrack lookup for the rest of the connection."""
    policy = tmp_path / "cookies.toml"
    policy.write_text(COOKIE_POLICY)
    lab = FloodLab()
    with lab:
        lab.attach(str(policy))
        server = None
        try:
            client_if = lab.links["client"][0]
            server = subprocess.Popen(in_namespace(lab.ns["server"], [sys.executable, "-c", SERVER, lab.vip_v6]),
                                      stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            assert client_run(lab, 5, 20, host=lab.vip_v6) == {"ok": 5, "failed": 0, "errors": {}}
            doc = json.loads(lab.edgewarden("stats", "--iface", client_if, "--tenant", "1", "--json").stdout)
            victim = doc["interfaces"][client_if]["tenants"][0]["reason_packets"]
            assert victim["answer_syn_cookie"] == 5 and victim["drop_bad_cookie"] == 0
            assert victim["pass_allowed"] >= 5 * 3     # the cookie ACK, the data, the close, at least
            # An IPv6 SYN flood from spoofed /48 sources, and an ACK flood: answered, dropped.
            edge_if, attacker_if = lab.links["attacker"]
            mac = lab.mac_of("edge", edge_if)
            for kind in ("syn", "ack"):
                flood = json.loads(lab.cli("attacker", "flood", kind, "--iface", attacker_if, "--target", lab.vip_v6,
                                           "--dst-mac", mac, "--packets", "20000", "--seconds", "5",
                                           "--json").stdout)
                assert flood["packets"] == 20000
            doc = json.loads(lab.edgewarden("stats", "--iface", edge_if, "--tenant", "1", "--json").stdout)
            reasons = doc["interfaces"][edge_if]["tenants"][0]["reason_packets"]
            assert reasons["answer_syn_cookie"] > 0 and reasons["drop_bad_cookie"] > 0
            assert reasons["pass_allowed"] == 0
        finally:
            if server is not None:
                server.kill()
                server.wait()
            lab.detach()

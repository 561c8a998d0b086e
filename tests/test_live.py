"""Live path: two network namespaces joined by a veth pair, the program
attached in native mode on the receiving side by the real CLI, real ping and
TCP traffic, counters read back from the pinned maps."""

import json
import subprocess
from pathlib import Path

import pytest

from agent.lab import EdgeLab
from native.bpf_build import compile_bpf
from agent.policy import policy_from_document, policy_to_document, policy_to_toml

ALLOWED, TENANT_BLOCKED, GLOBAL_BLOCKED = "198.51.100.1", "198.51.100.70", "198.51.100.200"
SHOP, SUSPENDED, SHOP_V6 = "203.0.113.10", "203.0.113.30", "2001:db8:10::10"

POLICY = policy_from_document({
    "revision": 5,
    "global": {"blocked_sources": ["198.51.100.192/26"]},
    "tenants": [
        {"id": 1, "name": "shop", "vips": [SHOP, SHOP_V6], "blocked_ports": ["tcp/25"],
         "blocked_sources": ["198.51.100.64/26"]},
        {"id": 3, "name": "spammer", "state": "suspended", "vips": [SUSPENDED]},
    ],
}, "tests/test_live.py")

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    policy_file = tmp_path_factory.mktemp("live") / "policy.toml"
    policy_file.write_text(policy_to_toml(POLICY))
    lab = EdgeLab(peer_sources=(ALLOWED, TENANT_BLOCKED, GLOBAL_BLOCKED), vips=(SHOP, SUSPENDED), vips_v6=(SHOP_V6,))
    with lab:
        out = lab.edgewarden("attach", lab.edge_if, "--mode", "native", "--policy", str(policy_file)).stdout
        assert "native mode" in out
        lab.policy_file = policy_file
        pin_dir = Path(json.loads(lab.edgewarden("status", "--json").stdout)["interfaces"][0]["pin_dir"])
        assert pin_dir.is_dir() and "/netns/" in str(pin_dir), "a lab namespace's pins are scoped to it"
        try:
            yield lab
        finally:
            lab.edgewarden("detach", lab.edge_if, check=False)
        assert not pin_dir.exists()


def tenant_counters(lab) -> dict[int, dict]:
    doc = json.loads(lab.edgewarden("stats", "--iface", lab.edge_if, "--json").stdout)
    return {t["tenant_id"]: t for t in doc["interfaces"][lab.edge_if]["tenants"]}


def interface_status(lab) -> dict:
    doc = json.loads(lab.edgewarden("status", "--json").stdout)
    return next(i for i in doc["interfaces"] if i["interface"] == lab.edge_if)


def counter_delta(before, after, tenant, field, key):
    old = before.get(tenant, {}).get(field, {}).get(key, 0)
    return after[tenant][field][key] - old


def test_status_reports_native_attachment(lab):
    mine = interface_status(lab)
    assert mine["mode"] == "native" and mine["edgewarden"] and mine["program_id"] > 0
    assert mine["policy_revision"] == 5


def test_allowed_ping_passes_and_is_counted_exactly(lab):
    before = tenant_counters(lab)
    assert lab.ping(ALLOWED, SHOP, count=3)
    after = tenant_counters(lab)
    assert counter_delta(before, after, 1, "class_packets", "icmp") == 3
    assert counter_delta(before, after, 1, "reason_packets", "pass_allowed") == 3
    assert counter_delta(before, after, 1, "class_bytes", "icmp") == 3 * 98   # 14 + 20 + 8 + 56


def test_ipv6_ping_passes(lab):
    before = tenant_counters(lab)
    assert lab.ping("2001:db8:1::1", SHOP_V6, count=2)
    after = tenant_counters(lab)
    assert counter_delta(before, after, 1, "class_packets", "icmp") == 2


def test_tcp_request_response_passes(lab):
    before = tenant_counters(lab)
    assert lab.tcp_exchange(ALLOWED, SHOP, 8080)
    after = tenant_counters(lab)
    assert counter_delta(before, after, 1, "class_packets", "tcp_syn") == 1
    assert counter_delta(before, after, 1, "class_packets", "tcp_other") >= 3   # ACK, data, FIN...


def test_blocked_port_drops_the_syn(lab):
    before = tenant_counters(lab)
    assert not lab.tcp_exchange(ALLOWED, SHOP, 25)
    after = tenant_counters(lab)
    assert counter_delta(before, after, 1, "reason_packets", "drop_port_block") >= 1   # SYN and its retries
    assert counter_delta(before, after, 1, "reason_packets", "pass_allowed") == 0


@pytest.mark.parametrize("source, target, tenant, reason", [
    (GLOBAL_BLOCKED, SHOP, 1, "drop_global_block"),
    (TENANT_BLOCKED, SHOP, 1, "drop_tenant_block"),
    (ALLOWED, SUSPENDED, 3, "drop_tenant_suspended"),
])
def test_blocked_traffic_is_dropped_and_counted(lab, source, target, tenant, reason):
    before = tenant_counters(lab)
    assert not lab.ping(source, target, count=3)
    after = tenant_counters(lab)
    assert counter_delta(before, after, tenant, "reason_packets", reason) == 3
    assert counter_delta(before, after, tenant, "reason_packets", "pass_allowed") == 0


def test_cli_block_and_suspend_take_effect_live(lab):
    assert lab.ping(ALLOWED, SHOP, count=1)
    lab.edgewarden("block", "add", f"{ALLOWED}/32", "--tenant", "1")
    listed = json.loads(lab.edgewarden("block", "list", "--iface", lab.edge_if, "--json").stdout)
    assert {"tenant_id": 1, "prefix": f"{ALLOWED}/32"} in listed["interfaces"][lab.edge_if]
    assert not lab.ping(ALLOWED, SHOP, count=1)
    lab.edgewarden("block", "del", f"{ALLOWED}/32", "--tenant", "1")
    assert lab.ping(ALLOWED, SHOP, count=1)

    lab.edgewarden("suspend", "1")
    assert not lab.ping(ALLOWED, SHOP, count=1)
    lab.edgewarden("resume", "1")
    assert lab.ping(ALLOWED, SHOP, count=1)
    assert interface_status(lab)["policy_revision"] == 5 + 4


def test_cli_errors_are_clear_and_change_nothing(lab, tmp_path):
    before = interface_status(lab)["policy_revision"]
    bad = tmp_path / "bad.toml"
    bad.write_text('revision = 99\n[[tenants]]\nid = 1\nname = "shop"\nvips = ["203.0.113.300"]\n')
    result = lab.edgewarden("policy", "apply", str(bad), "--iface", lab.edge_if, check=False)
    assert result.returncode == 2 and "tenants[0].vips[0]" in result.stderr and "nothing was applied" in result.stderr
    result = lab.edgewarden("suspend", "99", check=False)
    assert result.returncode == 2 and "no tenant 99" in result.stderr
    result = lab.edgewarden("block", "add", "not-an-ip", check=False)
    assert result.returncode == 2 and "not-an-ip" in result.stderr
    assert interface_status(lab)["policy_revision"] == before
    assert lab.ping(ALLOWED, SHOP, count=1)


def test_reattach_adopts_pinned_maps(lab):
    """A reload swaps the program but keeps block lists and counters."""
    lab.edgewarden("block", "add", "198.51.100.1/32")
    before = tenant_counters(lab)
    old = interface_status(lab)
    lab.edgewarden("attach", lab.edge_if, "--mode", "native")     # no policy: adopt what is there
    new = interface_status(lab)
    assert new["program_id"] != old["program_id"] and new["mode"] == "native"
    assert new["policy_revision"] == old["policy_revision"]
    after_reload = tenant_counters(lab)
    assert after_reload[1]["packets"] >= before[1]["packets"] > 0
    assert not lab.ping(ALLOWED, SHOP, count=2)      # the global block added before the reload holds
    after = tenant_counters(lab)
    assert counter_delta(after_reload, after, 1, "reason_packets", "drop_global_block") == 2
    lab.edgewarden("block", "del", "198.51.100.1/32")
    assert lab.ping(ALLOWED, SHOP, count=1)


def test_enforcement_outlives_the_agent(lab):
    """No edgewarden process runs between commands: the kernel enforces alone.
    Only this lab's edge namespace is looked at (other runs on the machine may
    have their own edgewarden processes)."""
    pids = subprocess.run(["ip", "netns", "pids", lab.edge_ns], capture_output=True, text=True, check=True)
    assert pids.stdout.split() == [], f"processes left in {lab.edge_ns}"
    assert not lab.ping(GLOBAL_BLOCKED, SHOP, count=1)


def test_foreign_program_is_not_replaced(tmp_path):
    source = tmp_path / "foreign.bpf.c"
    source.write_text('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n'
                      'SEC("xdp") int foreign(struct xdp_md *ctx) { return XDP_PASS; }\n'
                      'char LICENSE[] SEC("license") = "GPL";\n')
    obj = tmp_path / "foreign.bpf.o"
    compile_bpf(source, obj)
    with EdgeLab() as lab:
        EdgeLab.ns(lab.edge_ns, ["ip", "link", "set", "dev", lab.edge_if, "xdpgeneric", "obj", str(obj), "sec", "xdp"])
        result = lab.edgewarden("attach", lab.edge_if, check=False)
        assert result.returncode == 1 and "foreign XDP program" in result.stderr
        result = lab.edgewarden("detach", lab.edge_if, check=False)
        assert result.returncode == 1 and "foreign" in result.stderr
        shown = EdgeLab.ns(lab.edge_ns, ["ip", "link", "show", lab.edge_if]).stdout
        assert "prog/xdp" in shown      # still attached, untouched


def test_generic_mode_when_asked():
    with EdgeLab() as lab:
        out = lab.edgewarden("attach", lab.edge_if, "--mode", "generic").stdout
        assert "generic mode" in out
        assert lab.ping("198.51.100.1", "203.0.113.10", count=1)
        lab.edgewarden("detach", lab.edge_if)
        assert "prog/xdp" not in EdgeLab.ns(lab.edge_ns, ["ip", "link", "show", lab.edge_if]).stdout


def test_syn_cookies_for_a_service_on_the_edge_itself(lab, tmp_path):
    """The edge as the server (a CDN edge serving its VIPs itself): the
    cookie ACK goes up to the local stack, where the agent's synproxy rule
    in the input hook opens the connection to the local socket."""
    doc = policy_to_document(POLICY)
    doc["revision"] = 100
    doc["tenants"][0]["flood"] = {"syn_cookies": True}
    cookies = tmp_path / "cookies.toml"
    cookies.write_text(policy_to_toml(policy_from_document(doc)))
    before = tenant_counters(lab)[1]["reason_packets"]
    lab.edgewarden("policy", "apply", str(cookies), "--iface", lab.edge_if)
    try:
        assert lab.tcp_exchange(ALLOWED, SHOP, 8443)
        assert lab.tcp_exchange("2001:db8:1::1", SHOP_V6, 8443)
        after = tenant_counters(lab)[1]["reason_packets"]
        assert after["answer_syn_cookie"] - before["answer_syn_cookie"] == 2
        assert after["drop_bad_cookie"] == before["drop_bad_cookie"]
    finally:
        lab.edgewarden("policy", "apply", str(lab.policy_file), "--iface", lab.edge_if)
    assert "edgewarden_" not in lab.ns(lab.edge_ns, ["nft", "list", "tables"]).stdout


def test_stats_table_fits_a_terminal_and_wide_shows_every_reason(lab):
    assert not lab.ping(GLOBAL_BLOCKED, SHOP, count=2)
    narrow = lab.edgewarden("stats", "--iface", lab.edge_if).stdout.splitlines()
    header = narrow[1].split()
    assert header[:6] == ["TENANT", "NAME", "STATE", "PACKETS", "PASSED", "DROPPED"]
    assert max(len(line) for line in narrow) <= 100
    shop_row = next(line for line in narrow[2:] if line.split()[1] == "shop")
    assert "global_block=" in shop_row
    wide = lab.edgewarden("stats", "--iface", lab.edge_if, "--wide").stdout.splitlines()
    assert {"DROP_GLOBAL_BLOCK", "PASS_ALLOWED", "BYTES"} <= set(wide[1].split())

"""`make demo`: the main job end to end on this machine. Builds a throwaway
pair of namespaces, attaches the XDP program with the example policy, sends
traffic from allowed and blocked sources and to a suspended tenant, prints
the per-tenant table, turns SYN cookies on for a tenant and connects
through them; then runs the agent daemon in a fresh lab against a replayed
real attack capture (incident, sealed evidence, metrics), and removes
everything it created."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from agent.daemon.demo import run_daemon_demo
from agent.lab import EdgeLab, cli_in
from agent.policy import load_policy, policy_to_toml

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "configs" / "policy.example.toml"
CAPTURE = REPO / "tests" / "data" / "captures" / "pkt.TCP.synflood.spoofed.pcap"

ALLOWED, TENANT_BLOCKED, GLOBAL_BLOCKED = "198.51.100.1", "198.51.100.70", "198.51.100.200"
SHOP_VIP, SHOP_VIP_V6, SUSPENDED_VIP = "203.0.113.10", "2001:db8:10::10", "203.0.113.30"

STEPS = [
    # (what, how, expected to get through)
    ("ping shop from an allowed source", lambda lab: lab.ping(ALLOWED, SHOP_VIP), True),
    ("ping shop over IPv6", lambda lab: lab.ping("2001:db8:1::1", SHOP_VIP_V6), True),
    ("TCP request/response to shop:80", lambda lab: lab.tcp_exchange(ALLOWED, SHOP_VIP, 80), True),
    ("TCP to shop:25 (port blocked for shop)", lambda lab: lab.tcp_exchange(ALLOWED, SHOP_VIP, 25), False),
    ("ping shop from 198.51.100.70 (on shop's block list)", lambda lab: lab.ping(TENANT_BLOCKED, SHOP_VIP), False),
    ("ping shop from 198.51.100.200 (on the global block list)", lambda lab: lab.ping(GLOBAL_BLOCKED, SHOP_VIP), False),
    ("ping the suspended tenant 'spammer'", lambda lab: lab.ping(ALLOWED, SUSPENDED_VIP), False),
]


def main() -> int:
    lab = EdgeLab(peer_sources=(ALLOWED, TENANT_BLOCKED, GLOBAL_BLOCKED), vips=(SHOP_VIP, SUSPENDED_VIP),
                  vips_v6=(SHOP_VIP_V6,))
    print(f"== edgewarden demo: namespaces {lab.peer_ns} -> {lab.edge_ns}, XDP on {lab.edge_if}")
    failures = 0
    with lab:
        print(lab.edgewarden("attach", lab.edge_if, "--mode", "native", "--policy", str(POLICY)).stdout.rstrip())
        print()
        for what, action, expected in STEPS:
            got_through = action(lab)
            ok = got_through == expected
            failures += not ok
            print(f"  {'ok ' if ok else 'BAD'}  {what}: {'passed' if got_through else 'dropped'}")
        print("\n== live counters (edgewarden stats)")
        print(lab.edgewarden("stats").stdout.rstrip())
        failures += not syn_cookie_step(lab)
        print("\n== resume the suspended tenant, then ping it again")
        print(lab.edgewarden("resume", "3").stdout.rstrip())
        resumed = lab.ping(ALLOWED, SUSPENDED_VIP)
        failures += not resumed
        print(f"  {'ok ' if resumed else 'BAD'}  ping 'spammer' after resume: {'passed' if resumed else 'dropped'}")
        print("\n== edgewarden status")
        print(lab.edgewarden("status").stdout.rstrip())
        lab.edgewarden("detach", lab.edge_if)
    print(f"\n== removed {lab.peer_ns}, {lab.edge_ns} and the pinned maps")
    failures += daemon_step()
    if failures:
        print(f"demo: {failures} step(s) did not behave as the policy says", file=sys.stderr)
        return 1
    return 0


def daemon_step() -> int:
    """The agent daemon in a fresh lab: a real SYN-flood capture replayed at
    the tenant raises an incident that ends, its evidence is sealed and
    verified, the metrics are scraped. Returns the failed steps."""
    lab = EdgeLab(peer_sources=(ALLOWED,), vips=(SHOP_VIP,))
    with lab, tempfile.TemporaryDirectory(prefix="edgewarden-daemon-demo-") as workdir:
        edge_mac = lab.ns(lab.edge_ns, ["cat", f"/sys/class/net/{lab.edge_if}/address"]).stdout.strip()

        def replay_capture() -> None:
            result = json.loads(cli_in(lab.peer_ns, "replay", str(CAPTURE), "--iface", lab.peer_if, "--target",
                                       SHOP_VIP, "--dst-mac", edge_mac, "--pps", "8000", "--json").stdout)
            print(f"  replayed {result['sent']:,} frames of {CAPTURE.name} at {result['pps']:,.0f} packets/s")

        failures = run_daemon_demo(lab, Path(workdir), source=ALLOWED, vip=SHOP_VIP, flood=replay_capture)
        lab.edgewarden("detach", lab.edge_if, check=False)
    print(f"\n== removed {lab.peer_ns}, {lab.edge_ns} and the pinned maps")
    return failures


def syn_cookie_step(lab: EdgeLab) -> bool:
    """SYN cookies on for shop: its SYNs are answered from XDP, and the
    returning ACK is turned into the connection by the kernel's synproxy."""
    print("\n== SYN cookies on for shop (policy apply), then a TCP request/response to shop:80")
    policy = load_policy(POLICY)
    shop = policy.tenant(1)
    policy = dataclasses.replace(policy.replace_tenant(dataclasses.replace(
        shop, flood=dataclasses.replace(shop.flood, syn_cookies=True))), revision=policy.revision + 10)
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as document:
        document.write(policy_to_toml(policy))
        document.flush()
        print(lab.edgewarden("policy", "apply", document.name, "--iface", lab.edge_if).stdout.rstrip())

    def answered() -> int:
        stats = json.loads(lab.edgewarden("stats", "--iface", lab.edge_if, "--tenant", "1", "--json").stdout)
        return stats["interfaces"][lab.edge_if]["tenants"][0]["reason_packets"]["answer_syn_cookie"]

    before = answered()
    connected = lab.tcp_exchange(ALLOWED, SHOP_VIP, 80)
    cookies = answered() - before
    ok = connected and cookies == 1
    print(f"  {'ok ' if ok else 'BAD'}  TCP to shop:80 with SYN cookies: {'completed' if connected else 'failed'}, "
          f"{cookies} SYN answered from XDP with a cookie")
    return ok


if __name__ == "__main__":
    sys.exit(main())

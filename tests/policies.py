"""Policies for datapath tests: a fixed one whose VIPs and block lists the
frame strategies in frames.py hit often, and a strategy for random ones."""

import ipaddress

from hypothesis import strategies as st

from agent.policy import policy_from_document

FIXED_DOCUMENT = {
    "revision": 42,
    "global": {"blocked_sources": ["192.0.2.0/26", "2001:db8:3::/64", "10.0.0.0/8"]},
    "tenants": [
        {"id": 1, "name": "shop",
         "vips": [f"203.0.113.{i}" for i in range(64)] + [f"2001:db8::{i:x}" for i in range(64)],
         "blocked_ports": ["tcp/25", "udp/53", "tcp/8080"],
         "blocked_sources": ["198.51.100.128/25", "2001:db8:2::/64"]},
        {"id": 2, "name": "video",
         "vips": [{"address": f"203.0.113.{i}", "protocol": p, "port": port}
                  for i in range(64, 128) for p, port in (("tcp", 443), ("tcp", 25565), ("udp", 53))]
                 + [{"address": f"2001:db8:1::{i:x}", "protocol": "tcp", "port": 443} for i in range(64)]
                 + ["203.0.113.200", "2001:db8:1::ff"],
         "blocked_ports": ["tcp/25565", "udp/53"],
         "blocked_sources": ["192.0.2.64/26"]},
        {"id": 3, "name": "spammer", "state": "suspended",
         "vips": [f"198.51.100.{i}" for i in range(32)] + ["2001:db8:2::1"]},
        {"id": 70000, "name": "big-id", "vips": ["192.0.2.250", "10.10.10.10"],
         "blocked_ports": ["udp/1-1024"]},
    ],
}

FIXED_POLICY = policy_from_document(FIXED_DOCUMENT, "tests/policies.py")

_v4 = st.builds(lambda net, host: str(ipaddress.ip_network(net)[host]),
                st.sampled_from(["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]), st.integers(0, 255))
_v6 = st.builds(lambda subnet, host: str(ipaddress.IPv6Address(f"2001:db8:{subnet:x}::{host:x}")),
                st.integers(0, 3), st.integers(0, 255))
_addr = st.one_of(_v4, _v6)
_prefix = st.one_of(
    st.builds(lambda a, l: str(ipaddress.ip_network(f"{a}/{l}", strict=False)), _v4, st.integers(16, 32)),
    st.builds(lambda a, l: str(ipaddress.ip_network(f"{a}/{l}", strict=False)), _v6, st.integers(32, 128)),
)
_port = st.sampled_from([22, 25, 53, 80, 443, 8080, 25565])
_vip = st.one_of(_addr, st.fixed_dictionaries({"address": _addr, "protocol": st.sampled_from(["tcp", "udp"]),
                                                "port": _port}))
_port_rule = st.builds(lambda p, port, span: f"{p}/{port}" if span == 0 else f"{p}/{port}-{port + span}",
                       st.sampled_from(["tcp", "udp"]), _port, st.integers(0, 3))


# Stateless flood settings only: rate limits keep state across examples and
# are tested on their own (tests/test_flood.py).
_flood = st.fixed_dictionaries({}, optional={
    "amplification": st.sampled_from(["drop", "pass"]),
    "allow_amplification_ports": st.lists(st.sampled_from([19, 53, 123, 161, 11211]), max_size=3),
    "fragments": st.sampled_from(["pass", "drop"]),
    "syn_cookies": st.booleans(),
    "syn_ack": st.sampled_from(["drop", "track", "pass"]),
})


@st.composite
def policies(draw):
    """Random valid policies over the address pools of frames.py."""
    n = draw(st.integers(0, 4))
    used_vips = set()
    tenants = []
    for i in range(n):
        vips = []
        for vip in draw(st.lists(_vip, max_size=8)):
            key = vip if isinstance(vip, str) else (vip["address"], vip["protocol"], vip["port"])
            if key not in used_vips:
                used_vips.add(key)
                vips.append(vip)
        tenants.append({
            "id": draw(st.sampled_from([1, 2, 3, 4, 255, 256, 65536, 2**32 - 1]) if i == 0 else st.just(100 + i)),
            "name": f"t{i}",
            "state": draw(st.sampled_from(["active", "active", "suspended"])),
            "vips": vips,
            "blocked_ports": draw(st.lists(_port_rule, max_size=3)),
            "blocked_sources": draw(st.lists(_prefix, max_size=4)),
            "flood": draw(_flood),
        })
    doc = {"revision": draw(st.integers(0, 2**40)), "global": {"blocked_sources": draw(st.lists(_prefix, max_size=5))},
           "tenants": tenants}
    return policy_from_document(doc, "generated")

"""The policy document: the example configuration, validation (every error
at once, each with its location) and loading files."""

import socket

import pytest

from agent.datapath import abi
from agent.policy import (
    Policy,
    PolicyError,
    PortRule,
    Tenant,
    TenantState,
    Vip,
    load_policy,
    policy_from_document,
)
from agent.datapath.compile import compile_policy
from agent.policy.model import FloodPolicy, FragmentPolicy, Rate

from policy_support import (
    EXAMPLE,
    MAX_ID,
    any_port_vips,
    errors_of,
    ip,
    net,
    one_tenant_errors,
    port_vips,
    tenant,
    vip_of,
)


# ==========================================================================
# The example configuration


def test_example_config_loads():
    policy = load_policy(EXAMPLE)
    assert policy.revision == 1
    assert policy.blocked_sources == (net("198.51.100.128/25"), net("2001:db8:bad::/48"))
    shop, video, spammer = policy.tenants
    assert shop == Tenant(
        1, "shop", TenantState.ACTIVE,
        vips=(Vip(ip("203.0.113.10")), Vip(ip("2001:db8:10::10"))),
        blocked_ports=(PortRule("tcp", 25, 25), PortRule("udp", 11211, 11211)),
        blocked_sources=(net("198.51.100.64/26"),),
        flood=FloodPolicy(drop_amplification=True, allow_amplification_ports=(53,), fragments=FragmentPolicy.DROP,
                          syns=Rate(20000, 40000)),
    )
    assert video == Tenant(2, "video", TenantState.ACTIVE, vips=(Vip(ip("203.0.113.20"), "tcp", 443),))
    assert spammer == Tenant(3, "spammer", TenantState.SUSPENDED, vips=(Vip(ip("203.0.113.30")),))
    assert spammer.suspended and not shop.suspended
    assert policy.tenant(2) is video and policy.tenant(4) is None
    # Without a [tenants.flood] table a tenant has the default flood policy (drop amplification).
    assert video.flood == spammer.flood == FloodPolicy()
    # It compiles.
    counts = compile_policy(policy).entry_counts()
    # v4 block lists count nodes: a /25 or /26 needs its /16 node and its /24 node.
    # Shop's flood policy and the default one are both something to check: an entry per tenant.
    assert counts == {"ew_gblock_v4": 2, "ew_gblock_v6": 1, "ew_tblock_v4": 2, "ew_tblock_v6": 0,
                      "ew_port_blocks": 2, "ew_flood_policies": 3, "ew_tenants": 3,
                      "ew_vips_v4": 3, "ew_vips_v6": 1,   # 203.0.113.20 has only a port VIP: a placeholder
                      "ew_vip_ports_v4": 1, "ew_vip_ports_v6": 0, "ew_config": 1}


def test_minimal_documents():
    assert policy_from_document({}) == Policy()
    assert policy_from_document({"revision": 7, "tenants": [{"id": MAX_ID, "name": " x "}]}) == Policy(
        7, (Tenant(MAX_ID, "x"),))


# ==========================================================================
# Validation: every error at once, each with its location


@pytest.mark.parametrize("tenant_id", [0, -1, MAX_ID + 1, 2**64, "1", 1.0, True, None, [1]])
def test_tenant_id_out_of_range_or_wrong_type(tenant_id):
    errs = one_tenant_errors(id=tenant_id)
    assert errs == [f"tenants[0]: id {tenant_id!r} must be an integer in 1..{MAX_ID} (0 is the unassigned tenant)"]


def test_missing_id_and_name():
    errs = errors_of({"tenants": [{}]})
    assert errs == [f"tenants[0]: id None must be an integer in 1..{MAX_ID} (0 is the unassigned tenant)",
                    "tenants[0]: name must be a non-empty string"]


@pytest.mark.parametrize("name", ["", "   ", "\t\n", 5, None, ["a"]])
def test_bad_tenant_name(name):
    assert one_tenant_errors(name=name) == ["tenants[0]: name must be a non-empty string"]


def test_duplicate_ids_and_names():
    errs = errors_of({"tenants": [
        {"id": 1, "name": "a"},
        {"id": 1, "name": "b"},
        {"id": 2, "name": " a "},   # names compare after stripping
        {"id": 2, "name": "a"},
    ]})
    assert errs == [
        "tenants[1] ('b'): id 1 is already used by tenants[0] ('a')",
        "tenants[2] ('a'): name 'a' is already used by tenants[0] ('a')",
        "tenants[3] ('a'): id 2 is already used by tenants[2] ('a')",
        "tenants[3] ('a'): name 'a' is already used by tenants[2] ('a')",
    ]


def test_duplicate_vips_across_tenants():
    errs = errors_of({"tenants": [
        {"id": 1, "name": "a", "vips": ["203.0.113.1", "2001:db8::1",
                                        {"address": "203.0.113.2", "protocol": "tcp", "port": 443}]},
        {"id": 2, "name": "b", "vips": ["203.0.113.1",
                                        "2001:DB8:0:0::1",  # same address, other spelling
                                        {"address": "203.0.113.2", "protocol": "TCP", "port": "443"}]},
    ]})
    assert errs == [
        "tenants[1] ('b'): VIP 203.0.113.1 is already assigned to tenants[0] ('a')",
        "tenants[1] ('b'): VIP 2001:db8::1 is already assigned to tenants[0] ('a')",
        "tenants[1] ('b'): VIP tcp/203.0.113.2:443 is already assigned to tenants[0] ('a')",
    ]


def test_same_address_with_other_protocol_or_port_is_not_a_duplicate():
    policy = policy_from_document({"tenants": [
        {"id": 1, "name": "a", "vips": ["203.0.113.1", {"address": "2001:db8::1", "protocol": "tcp", "port": 443}]},
        {"id": 2, "name": "b", "vips": [{"address": "203.0.113.1", "protocol": "tcp", "port": 443},
                                        {"address": "2001:db8::1", "protocol": "udp", "port": 443},
                                        {"address": "2001:db8::1", "protocol": "tcp", "port": 444}]},
    ]})
    compiled = compile_policy(policy)
    flood = abi.TENANT_HAS_FLOOD_POLICY   # both tenants have the default flood policy
    assert len(any_port_vips(compiled)) == 2   # one entry per address,
    assert port_vips(compiled) == {              # and every port VIP its own entry
        (ip("2001:db8::1"), socket.IPPROTO_TCP, 443): (1, 1, flood),
        (ip("203.0.113.1"), socket.IPPROTO_TCP, 443): (2, 2, flood),
        (ip("2001:db8::1"), socket.IPPROTO_UDP, 443): (2, 2, flood),
        (ip("2001:db8::1"), socket.IPPROTO_TCP, 444): (2, 2, flood),
    }


def test_zone_index_does_not_hide_a_duplicate_vip():
    """Regression: 'fe80::1' and 'fe80::1%eth0' are different Vip values (ipaddress
    keeps the zone index) but compile to the same ew_vips_v6 key; the second tenant
    must not silently take the first one's VIP."""
    doc = {"tenants": [{"id": 1, "name": "a", "vips": ["fe80::1"]},
                       {"id": 2, "name": "b", "vips": ["fe80::1%eth0"]}]}
    try:
        policy = policy_from_document(doc)
    except PolicyError:
        return  # rejected: fine
    vips = compile_policy(policy).maps["ew_vips_v6"]
    assert len(vips) == 2, f"two tenants' VIPs compiled into {len(vips)} ew_vips_v6 entry, owned by tenant " \
                           f"{[vip_of(v)[0] for v in vips.values()]}"


@pytest.mark.parametrize("vip,message", [
    ("not-an-ip", "address 'not-an-ip' is not an IP address"),
    ("300.1.1.1", "address '300.1.1.1' is not an IP address"),
    ("10.0.0.0/24", "address '10.0.0.0/24' is not an IP address"),
    ("", "address '' is not an IP address"),
    ({"address": "2001:db8::g"}, "address '2001:db8::g' is not an IP address"),
    ({"address": 3232235777}, "address 3232235777 is not an IP address"),
    ({"protocol": "tcp", "port": 1}, "address None is not an IP address"),
    ({"address": "203.0.113.1", "protocol": "tcp"}, "protocol and port go together"),
    ({"address": "203.0.113.1", "port": 443}, "protocol and port go together"),
    ({"address": "203.0.113.1", "protocol": "sctp", "port": 1}, "protocol 'sctp' is not one of: tcp, udp"),
    ({"address": "203.0.113.1", "protocol": 6, "port": 1}, "protocol 6 is not one of: tcp, udp"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": 0}, "port 0 is not in 1..65535"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": 65536}, "port 65536 is not in 1..65535"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": True}, "port True is not in 1..65535"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": "http"}, "port 'http' is not in 1..65535"),
    ({"address": "203.0.113.1", "protocol": "tcp", "port": 44.3}, "port 44.3 is not in 1..65535"),
    (5, "a VIP is an address string or a table {address, protocol, port}"),
    (["203.0.113.1"], "a VIP is an address string or a table {address, protocol, port}"),
])
def test_bad_vips(vip, message):
    errs = one_tenant_errors(vips=["192.0.2.1", vip])
    assert len(errs) == 1
    assert errs[0].startswith("tenants[0].vips[1]: "), errs
    assert message in errs[0]


def test_bad_vip_protocol_and_port_both_reported():
    errs = one_tenant_errors(vips=[{"address": "203.0.113.1", "protocol": "icmp", "port": 0}])
    assert errs == ["tenants[0].vips[0]: protocol 'icmp' is not one of: tcp, udp",
                    "tenants[0].vips[0]: port 0 is not in 1..65535"]


@pytest.mark.parametrize("rule,message", [
    ("tcp/0", "port 0 is not in 1..65535"),
    ("tcp/70000", "port 70000 is not in 1..65535"),
    ("udp/65536", "port 65536 is not in 1..65535"),
    ("udp/10-5", "port range '10-5' runs backwards"),
    ("sctp/1", "protocol 'sctp' is not one of: tcp, udp"),
    ("tcp/1-4097", "port range '1-4097' covers more than 4096 ports"),
    ("udp/1-65535", "port range '1-65535' covers more than 4096 ports"),
    ("tcp/0-10", "port 0 is not in 1..65535"),
    ("tcp/10-70000", "port 70000 is not in 1..65535"),
    ("tcp/", "port '' is not in 1..65535"),
    ("tcp/-5", "port '' is not in 1..65535"),
    ("tcp/abc", "port 'abc' is not in 1..65535"),
    ("tcp/1.5", "port '1.5' is not in 1..65535"),
    ("/25", "protocol '' is not one of: tcp, udp"),
    ("25", "'25' is not a port rule like 'tcp/25' or 'udp/6000-6010'"),
    ("tcp:25", "'tcp:25' is not a port rule"),
    (25, "25 is not a port rule"),
    ({"tcp": 25}, "is not a port rule"),
])
def test_bad_port_rules(rule, message):
    errs = one_tenant_errors(blocked_ports=["tcp/25", rule])
    assert errs and all(e.startswith("tenants[0].blocked_ports[1]: ") for e in errs), errs
    assert any(message in e for e in errs), errs


@pytest.mark.parametrize("rule", ["tcp/²", "udp/1-³", "tcp/¹²"])
def test_unicode_digit_port_is_a_validation_error(rule):
    """Regression: str.isdigit() is True for '²', '³', ...; such a port is a located
    PolicyError beside the document's other errors, not a bare ValueError."""
    doc = {"tenants": [tenant(blocked_ports=[rule], name=5)]}
    try:
        errs = errors_of(doc)
    except ValueError as err:
        if isinstance(err, PolicyError):
            raise
        pytest.fail(f"{rule!r} escaped validation as {type(err).__name__}: {err}")
    assert "tenants[0]: name must be a non-empty string" in errs
    assert any(e.startswith("tenants[0].blocked_ports[0]: ") for e in errs), errs


def test_unicode_digit_vip_port_is_a_validation_error():
    """Regression (same cause): a VIP port given as the string '²'."""
    doc = {"tenants": [tenant(vips=[{"address": "203.0.113.1", "protocol": "tcp", "port": "²"}])]}
    try:
        errs = errors_of(doc)
    except ValueError as err:
        if isinstance(err, PolicyError):
            raise
        pytest.fail(f"port '²' escaped validation as {type(err).__name__}: {err}")
    assert all(e.startswith("tenants[0].vips[0]: ") for e in errs), errs


@pytest.mark.parametrize("rule,expected", [
    ("tcp/1", PortRule("tcp", 1, 1)),
    ("udp/65535", PortRule("udp", 65535, 65535)),
    ("tcp/1-4096", PortRule("tcp", 1, 4096)),
    ("udp/61440-65535", PortRule("udp", 61440, 65535)),
    ("udp/7-7", PortRule("udp", 7, 7)),
    ("TCP/25", PortRule("tcp", 25, 25)),
    (" udp / 6000-6010 ", PortRule("udp", 6000, 6010)),
])
def test_good_port_rules(rule, expected):
    policy = policy_from_document({"tenants": [tenant(blocked_ports=[rule])]})
    assert policy.tenants[0].blocked_ports == (expected,)


@pytest.mark.parametrize("where,value,message", [
    ("global", "banana", "'banana' is not an IP address or CIDR prefix"),
    ("global", "10.0.0.0/33", "'10.0.0.0/33' is not an IP address or CIDR prefix"),
    ("global", "2001:db8::/129", "is not an IP address or CIDR prefix"),
    ("global", "10.0.0.0/255.0.255.0", "is not an IP address or CIDR prefix"),
    ("global", 10, "expected a CIDR string, got int"),
    ("global", None, "expected a CIDR string, got NoneType"),
    ("tenant", "1.2.3", "'1.2.3' is not an IP address or CIDR prefix"),
    ("tenant", ["10.0.0.0/8"], "expected a CIDR string, got list"),
])
def test_bad_blocked_sources(where, value, message):
    sources = ["10.0.0.0/8", value]
    if where == "global":
        errs = errors_of({"global": {"blocked_sources": sources}})
        location = "global.blocked_sources[1]: "
    else:
        errs = one_tenant_errors(blocked_sources=sources)
        location = "tenants[0].blocked_sources[1]: "
    assert len(errs) == 1 and errs[0].startswith(location), errs
    assert message in errs[0]


def test_blocked_sources_host_bits_are_cleared():
    policy = policy_from_document({"global": {"blocked_sources": ["10.1.2.3/8", " 2001:db8::1/32 ", "192.0.2.1"]},
                                   "tenants": [tenant(blocked_sources=["198.51.100.77/26"])]})
    assert policy.blocked_sources == (net("10.0.0.0/8"), net("2001:db8::/32"), net("192.0.2.1/32"))
    assert policy.tenants[0].blocked_sources == (net("198.51.100.64/26"),)


@pytest.mark.parametrize("doc,expected", [
    ({"revision": 1, "colour": "red"},
     ["top level: unknown key 'colour' (expected one of: global, revision, tenants)"]),
    ({"global": {"blocked_sources": [], "allowed_sources": []}},
     ["global: unknown key 'allowed_sources' (expected one of: blocked_sources)"]),
    ({"tenants": [tenant(ports=["tcp/25"])]},
     ["tenants[0]: unknown key 'ports' (expected one of: blocked_ports, blocked_sources, flood, id, name, state, "
      "vips, watch)"]),
    ({"tenants": [tenant(vips=[{"address": "192.0.2.1", "proto": "tcp"}])]},
     ["tenants[0].vips[0]: unknown key 'proto' (expected one of: address, port, protocol)"]),
])
def test_unknown_keys_at_every_level(doc, expected):
    assert errors_of(doc) == expected


@pytest.mark.parametrize("doc,expected", [
    ({"revision": -1}, "revision: -1 must be an integer in 0..18446744073709551615"),
    ({"revision": "1"}, "revision: '1' must be an integer in 0..18446744073709551615"),
    ({"revision": 1.0}, "revision: 1.0 must be an integer in 0..18446744073709551615"),
    ({"revision": True}, "revision: True must be an integer in 0..18446744073709551615"),
    ({"global": ["10.0.0.0/8"]}, "global: expected a table"),
    ({"global": {"blocked_sources": "10.0.0.0/8"}}, "global.blocked_sources: expected a list of CIDR strings"),
    ({"tenants": {"id": 1, "name": "t"}}, "tenants: expected an array of tables ([[tenants]])"),
    ({"tenants": ["shop"]}, "tenants[0]: expected a table"),
    ({"tenants": [tenant(state="paused")]}, "tenants[0]: state 'paused' is not one of: active, suspended"),
    ({"tenants": [tenant(state="ACTIVE")]}, "tenants[0]: state 'ACTIVE' is not one of: active, suspended"),
    ({"tenants": [tenant(state=1)]}, "tenants[0]: state 1 is not one of: active, suspended"),
    ({"tenants": [tenant(state=[])]}, "tenants[0]: state [] is not one of: active, suspended"),
    ({"tenants": [tenant(vips="192.0.2.1")]}, "tenants[0].vips: expected a list"),
    ({"tenants": [tenant(blocked_ports="tcp/25")]}, "tenants[0].blocked_ports: expected a list"),
    ({"tenants": [tenant(blocked_sources="10.0.0.0/8")]},
     "tenants[0].blocked_sources: expected a list of CIDR strings"),
])
def test_wrong_types(doc, expected):
    assert errors_of(doc) == [expected]


@pytest.mark.parametrize("doc", [[], "revision = 1", None, 5])
def test_document_must_be_a_table(doc):
    assert errors_of(doc) == ["top level: the document must be a table"]


def test_every_error_is_reported_at_once():
    doc = {
        "revision": -3,
        "colour": "red",
        "global": {"blocked_sources": ["10.0.0.0/8", "nope", 7], "extra": 1},
        "tenants": [
            {"id": 0, "name": "", "state": "gone", "flavour": 1,
             "vips": ["x", {"address": "192.0.2.1", "protocol": "tcp"}],
             "blocked_ports": ["tcp/0", "tcp/70000", "udp/10-5", "sctp/1", "tcp/1-5000"],
             "blocked_sources": ["1.2.3.4/40"]},
            {"id": 5, "name": "ok", "vips": ["192.0.2.10"]},
            {"id": 5, "name": "ok", "vips": ["192.0.2.10"]},
            "not a table",
            {"id": 6, "name": "fine", "vips": "192.0.2.99"},
        ],
    }
    errs = errors_of(doc)
    expected_locations = [
        "",  # the unknown top-level key
        "revision: ",
        "global: unknown key 'extra'",
        "global.blocked_sources[1]: ",
        "global.blocked_sources[2]: ",
        "tenants[0]: unknown key 'flavour'",
        "tenants[0]: id 0",
        "tenants[0]: name",
        "tenants[0]: state 'gone'",
        "tenants[0].vips[0]: ",
        "tenants[0].vips[1]: ",
        "tenants[0].blocked_ports[0]: ",
        "tenants[0].blocked_ports[1]: ",
        "tenants[0].blocked_ports[2]: ",
        "tenants[0].blocked_ports[3]: ",
        "tenants[0].blocked_ports[4]: ",
        "tenants[0].blocked_sources[0]: ",
        "tenants[2] ('ok'): id 5 is already used by tenants[1] ('ok')",
        "tenants[2] ('ok'): name 'ok' is already used by tenants[1] ('ok')",
        "tenants[2] ('ok'): VIP 192.0.2.10 is already assigned to tenants[1] ('ok')",
        "tenants[3]: expected a table",
        "tenants[4].vips: expected a list",
    ]
    assert len(errs) == len(expected_locations), errs
    for prefix in expected_locations:
        assert any(e.startswith(prefix) for e in errs), (prefix, errs)
    assert any("unknown key 'colour'" in e for e in errs)
    # The exception's message lists them all, prefixed with the source.
    with pytest.raises(PolicyError) as info:
        policy_from_document(doc, "doc.toml")
    text = str(info.value)
    assert f"({len(errs)} error(s)); nothing was applied" in text
    for e in errs:
        assert f"  doc.toml: {e}" in text


# ==========================================================================
# Loading files: bad TOML, unreadable files


def test_bad_toml(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("revision = 1\n[[tenants]\nid = 1\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith("not valid TOML: ")


def test_toml_duplicate_key_is_bad_toml(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("revision = 1\nrevision = 2\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert info.value.errors == ["cannot read: No such file or directory"]


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert info.value.errors == ["cannot read: Is a directory"]


def test_non_utf8_file_is_a_policy_error(tmp_path):
    """Regression: a file that is not UTF-8 is a PolicyError naming the file, not a
    bare UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'revision = 1\n[[tenants]]\nid = 1\nname = "caf\xe9"\n')
    try:
        load_policy(path)
    except PolicyError as err:
        assert err.source == str(path) and len(err.errors) == 1
    except UnicodeDecodeError as err:
        pytest.fail(f"load_policy raised {type(err).__name__} instead of PolicyError: {err}")
    else:
        pytest.fail("a non-UTF-8 file was accepted")


def test_invalid_file_contents_are_reported_with_the_path(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('revision = 1\n[[tenants]]\nid = 0\nname = "a"\n[[tenants]]\nid = 2\nname = "b"\nvips = ["1"]\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert info.value.errors == [
        f"tenants[0]: id 0 must be an integer in 1..{MAX_ID} (0 is the unassigned tenant)",
        "tenants[1].vips[0]: address '1' is not an IP address",
    ]


def test_revision_beyond_u64_is_rejected():
    """Regression: ew_config.policy_revision is a __u64, so revision 2**64 must be
    refused by validation, not fail in compile_policy with OverflowError (a validated
    policy must compile)."""
    doc = {"revision": 2**64}
    try:
        policy = policy_from_document(doc)
    except PolicyError as err:
        assert err.errors[0].startswith("revision: ")
        return
    compile_policy(policy)
